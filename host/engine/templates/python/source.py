"""`{{name}}`: a tocsin source written in Python, polled on its pipeline's `schedule`. It
reports one message per tick saying `text`. Change `poll` to look at what your source watches
and report what it sees."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Message, Severity


class Source(exports.Source):
    text = ""

    def init(self, config: str) -> None:
        """Called once per instance with the stage's `config` table as JSON."""
        text = json.loads(config).get("text")
        if not isinstance(text, str):
            raise Err("`text` (a string) is required")
        Source.text = text

    def poll(self, tick_ms: int) -> list[Message]:
        """Give each message an id that is the same if this tick is polled again."""
        return [
            Message(
                id=f"{{name}}-{tick_ms}",
                timestamp_ms=tick_ms,
                severity=Severity.INFO,
                summary="{{name}}",
                body=Source.text,
                labels=[],
                metrics=[],
                payload=None,
                link=None,
                key=None,
            )
        ]
