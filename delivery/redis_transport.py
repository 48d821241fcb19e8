"""kombu's Redis transport, hardened against what is not a kombu message.

Anything can be pushed onto a Redis list. kombu decodes each item inside the worker's
consumer loop, so one item of garbage is an unrecoverable error that stops the worker.
Here an item that does not decode into a kombu message is set aside, whole, on a list of
its own for a person to look at, and the worker goes on.
"""

import base64
import binascii
import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

logger = logging.getLogger(__name__)

#: Where undecodable items go (newest first, the last 10,000 kept).
SET_ASIDE = "delivery.undecodable"
SET_ASIDE_KEEP = 10_000


def decode(item: bytes | str) -> dict[str, Any] | None:
    """The kombu message in ``item``, or None if it is not one."""
    try:
        message = loads(bytes_to_str(item))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict):
        return None
    properties = message.get("properties")
    body = message.get("body")
    if not (
        isinstance(properties, dict)
        and "delivery_tag" in properties
        and isinstance(properties.get("delivery_info"), dict)
        and isinstance(body, str)
    ):
        return None
    if properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return None
    return message


class Channel(kombu_redis.Channel):
    def _set_aside(self, item: bytes, queue: str) -> None:
        with self.conn_or_acquire() as client:
            client.lpush(SET_ASIDE, item)
            client.ltrim(SET_ASIDE, 0, SET_ASIDE_KEEP - 1)
        logger.error(
            "set aside an item on queue %r that is not a kombu message (%d bytes); see list %r",
            queue,
            len(item),
            SET_ASIDE,
        )

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, with the decoding guarded.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message = decode(item)
            if message is None:
                self._set_aside(item, dest)
                raise Empty()
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    message = decode(item)
                    if message is None:
                        self._set_aside(item, queue)
                        continue
                    return message
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class Transport(kombu_redis.Transport):
    Channel = Channel
