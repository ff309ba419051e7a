"""`{{name}}`: a tocsin filter written in Python. Messages whose body contains `word` pass;
the others are dropped. Change `process` to do what your filter should."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Message


class Filter(exports.Filter):
    word = ""

    def init(self, config: str) -> None:
        """Called once per instance with the stage's `config` table as JSON."""
        word = json.loads(config).get("word")
        if not isinstance(word, str) or not word:
            raise Err("`word` (a non-empty string) is required")
        Filter.word = word

    def process(self, msg: Message) -> list[Message]:
        """[] drops the message, [msg] passes it on, more messages split it."""
        return [msg] if Filter.word in msg.body else []
