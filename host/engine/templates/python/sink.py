"""`{{name}}`: a tocsin sink written in Python. It writes each message to the host's log.
Change `deliver` to deliver it where it should go; raise
`Err(DeliveryError_Retryable(reason))` to be retried with backoff,
`Err(DeliveryError_Permanent(reason))` to dead-letter it."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.tocsin_plugin_types import Notification


class Sink(exports.Sink):
    prefix = ""

    def init(self, config: str) -> None:
        """Called once per instance with the stage's `config` table as JSON."""
        prefix = json.loads(config).get("prefix", "")
        if not isinstance(prefix, str):
            raise Err("`prefix` must be a string")
        Sink.prefix = prefix

    def batch_limit(self) -> int:
        """How many messages one `deliver` takes when the host batches them; 1: one at a time."""
        return 1

    def deliver(self, notification: Notification, idempotency_key: str) -> None:
        """Delivers one message (or a group of them, when the pipeline groups alerts).
        Pass `idempotency_key` on to the service, so a retry does not post twice."""
        for msg in notification.messages:
            link = f" <{msg.link}>" if msg.link else ""
            host.log(host.Level.INFO, f"{Sink.prefix}{msg.body}{link} (key {idempotency_key})")
