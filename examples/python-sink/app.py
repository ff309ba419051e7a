"""`python-jsonl`: a tocsin sink written in Python, built with componentize-py.

It appends each message as one JSON line to a file in a directory its pipeline grants
read-write, with the idempotency key in the line. Before appending it looks for the key in the
file's last lines, so a delivery retried after a crash does not write the line twice — the same
contract as the Rust `file` sink.

    [[sink]]
    name   = "archive"
    plugin = "python-jsonl"
    config = { path = "/var/lib/alerts/archive.jsonl" }
    grants = { write_dirs = ["/var/lib/alerts"] }
"""

import json
import os

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.tocsin_plugin_types import (
    DeliveryError_Permanent,
    DeliveryError_Retryable,
    Notification,
)

# How much of the file's end is searched for a repeated key.
DEDUP_TAIL_BYTES = 64 * 1024

SEVERITY_NAMES = ["none", "info", "warning", "error", "alert"]


def read_tail(path: str) -> str:
    """The last DEDUP_TAIL_BYTES of the file as text; empty when it does not exist yet."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - DEDUP_TAIL_BYTES))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class Sink(exports.Sink):
    path = ""

    def init(self, config: str) -> None:
        try:
            settings = json.loads(config)
        except ValueError as e:
            raise Err(f"config is not JSON: {e}")
        unknown = set(settings) - {"path"}
        if unknown:
            raise Err(f"unknown config field(s): {', '.join(sorted(unknown))}")
        path = settings.get("path")
        if not isinstance(path, str) or not path:
            raise Err("`path` (a file in a granted write_dirs directory) is required")
        Sink.path = path

    def batch_limit(self) -> int:
        # One message per call; a sink that writes several at once returns more.
        return 1

    def deliver(self, notification: Notification, idempotency_key: str) -> None:
        marker = '"idempotency_key": ' + json.dumps(idempotency_key)
        if marker in read_tail(Sink.path):
            host.log(host.Level.DEBUG, f"{idempotency_key} already written")
            return
        lines = []
        for msg in notification.messages:
            lines.append(json.dumps({
                "id": msg.id,
                "timestamp_ms": msg.timestamp_ms,
                "severity": SEVERITY_NAMES[msg.severity.value],
                "summary": msg.summary,
                "body": msg.body,
                "labels": dict(msg.labels),
                "metrics": dict(msg.metrics),
                "link": msg.link,
                "key": msg.key,
                "idempotency_key": idempotency_key,
            }) + "\n")
        try:
            with open(Sink.path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
        except PermissionError as e:
            raise Err(DeliveryError_Permanent(
                f"cannot write {Sink.path} (is its directory in grants.write_dirs?): {e}"))
        except OSError as e:
            raise Err(DeliveryError_Retryable(f"{Sink.path}: {e}"))
