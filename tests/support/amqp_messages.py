"""Real task messages as they lie on a RabbitMQ queue, and ways to spoil them.

A message is captured from the queue after a real publish and laid out as on a Redis
queue (``tests.support.messages``: the same ``fresh`` and ``spoil``), then published back
over AMQP. What AMQP cannot say (a list as content type, a delivery tag: the broker sets
it) is not published. Properties can also be written as raw bytes, for what py-amqp will
not encode: a content type that is not UTF-8, a timestamp past year 9999, tables nested
thousands deep.
"""

import base64
import binascii
import contextlib
import json
import struct
from typing import Any
from urllib.parse import urlsplit

import amqp  # type: ignore[import-untyped]

import delivery
from delivery.transport.amqp import REASON_HEADER, SET_ASIDE
from schemas import Payload

#: Fields of the Redis layout that AMQP has no way to carry: the broker sets the delivery
#: tag, exchange and routing key; there is no body encoding; headers are always a table.
#: Properties are one frame (RabbitMQ's frame_max: 128 KiB); a larger one closes the
#: publisher's connection.
MAX_PROPERTIES = 120_000
NOT_ON_AMQP = ("delivery_tag", "delivery_info", "body_encoding", "exchange", "routing_key")


def connect(url: str, *, confirm_publish: bool = False) -> Any:
    parts = urlsplit(url)
    connection = amqp.Connection(
        f"{parts.hostname}:{parts.port}",
        userid=parts.username or "guest",
        password=parts.password or "guest",
        connect_timeout=10,
        confirm_publish=confirm_publish,
    )
    connection.connect()
    return connection


def as_bytes(body: bytes | str) -> bytes:
    """A body as it came (py-amqp leaves "" where there was none)."""
    return body.encode() if isinstance(body, str) else bytes(body)


def channel_of(connection: Any) -> Any:
    """A channel that hands bodies over as they came (py-amqp decodes them by default)."""
    channel = connection.channel()
    channel.auto_decode = False
    return channel


def capture(channel: Any, address: str, *, queue: str = "delivery") -> dict[str, Any]:
    """Publish one delivery and take its message off the queue before any worker does,
    laid out as on a Redis queue."""
    delivery.send("hooks", address, Payload(message="template"))
    message = channel.basic_get(queue, no_ack=True)
    assert message is not None, "nothing was published"
    props = message.properties
    return {
        "body": base64.b64encode(as_bytes(message.body)).decode(),
        "content-type": props.get("content_type"),
        "content-encoding": props.get("content_encoding"),
        "headers": dict(props.get("application_headers") or {}),
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": "t",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "correlation_id": props.get("correlation_id"),
            "reply_to": props.get("reply_to"),
            "priority": props.get("priority"),
            "delivery_mode": props.get("delivery_mode"),
        },
    }


def as_amqp(message: dict[str, Any]) -> Any:
    """The message (Redis layout) as an AMQP message; None if AMQP cannot say it."""
    body = message.get("body")
    if isinstance(body, str):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raw = body.encode("utf-8", "surrogatepass")
    else:
        raw = json.dumps(body).encode()
    headers, properties = message.get("headers"), message.get("properties")
    if not isinstance(properties, dict) or not isinstance(headers, dict | None):
        return None
    strings = {
        "content_type": message.get("content-type"),
        "content_encoding": message.get("content-encoding"),
        "correlation_id": properties.get("correlation_id"),
        "reply_to": properties.get("reply_to"),
    }
    shorts: dict[str, bytes | None] = {}
    for name, value in strings.items():
        if value is not None and not isinstance(value, str):
            return None
        shorts[name] = None if value is None else value.encode("utf-8", "surrogatepass")
    octets = {
        "priority": properties.get("priority"),
        "delivery_mode": properties.get("delivery_mode"),
    }
    for name, top in (("priority", 255), ("delivery_mode", 2)):
        value = octets[name]
        if value is not None and (type(value) is not int or not 0 <= value <= top):
            return None
    try:
        raw_properties = properties_bytes(
            headers=headers,
            delivery_mode=octets["delivery_mode"] or 2,
            priority=octets["priority"],
            **shorts,
        )
    except struct.error:  # a string longer than AMQP's short strings
        return None
    if raw_properties is None or len(raw_properties) > MAX_PROPERTIES:
        return None
    return RawMessage(raw, raw_properties)


class Sender:
    """Publishes crafted messages with confirms, so that one RabbitMQ refuses (it closes
    the connection on a NaN in a header: INTERNAL_ERROR) is known, and the next one goes
    on a new connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Any = None
        self.channel: Any = None
        self._open()

    def _open(self) -> None:
        self.connection = connect(self.url, confirm_publish=True)
        self.channel = channel_of(self.connection)

    def publish(self, message: Any, *, queue: str = "delivery") -> bool:
        """Whether RabbitMQ took the message."""
        try:
            self.channel.basic_publish(message, exchange="", routing_key=queue)
            return True
        except (amqp.exceptions.AMQPError, OSError):
            self.close()
            self._open()
            return False

    def close(self) -> None:
        with contextlib.suppress(amqp.exceptions.AMQPError, OSError, AttributeError):
            self.connection.close()


def set_aside(url: str) -> list[tuple[str, str]]:
    """What the set-aside queue holds, left there: each message's reason and its text (body
    and headers) to search for markers."""
    connection = connect(url)
    held = []
    try:
        channel = channel_of(connection)
        while (message := channel.basic_get(SET_ASIDE, no_ack=False)) is not None:
            headers = message.properties.get("application_headers") or {}
            text = as_bytes(message.body).decode(errors="replace") + repr(headers)
            held.append((str(headers.get(REASON_HEADER)), text))
    except amqp.exceptions.NotFound:
        pass  # nothing was set aside yet: the workers declare the queue the first time
    finally:
        connection.close()  # unacknowledged: all of them go back on the queue
    return held


def depth(url: str, queue: str = SET_ASIDE) -> int:
    connection = connect(url)
    try:
        return int(channel_of(connection).queue_declare(queue, passive=True).message_count)
    except amqp.exceptions.NotFound:
        return 0
    finally:
        connection.close()


class Raw(bytes):
    """A table value already encoded: its type letter and its bytes."""


def _short(text: bytes) -> bytes:
    return struct.pack(">B", len(text)) + text  # struct.error past 255 bytes


def table(value: dict[Any, Any]) -> bytes:
    """An AMQP field table (``F`` without its letter): keys are str or bytes."""
    out = b""
    for key, item in value.items():
        out += _short(key.encode() if isinstance(key, str) else key) + item_bytes(item)
    return struct.pack(">I", len(out)) + out


def item_bytes(value: Any) -> bytes:
    if isinstance(value, Raw):
        return bytes(value)
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + struct.pack(">B", value)
    if isinstance(value, int):
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"S" + struct.pack(">I", len(value)) + value
    if isinstance(value, dict):
        return b"F" + table(value)
    if isinstance(value, list | tuple):
        items = b"".join(item_bytes(v) for v in value)
        return b"A" + struct.pack(">I", len(items)) + items
    raise TypeError(type(value))


def timestamp(seconds: int) -> Raw:
    return Raw(b"T" + struct.pack(">Q", seconds))


def nested(depth: int) -> Raw:
    """An array in an array … ``depth`` deep."""
    inner = b"A" + struct.pack(">I", 0)
    for _ in range(depth - 1):
        inner = b"A" + struct.pack(">I", len(inner)) + inner
    return Raw(inner)


def properties_bytes(
    *,
    content_type: bytes | None = b"application/json",
    content_encoding: bytes | None = b"utf-8",
    headers: dict[Any, Any] | None = None,
    delivery_mode: int = 2,
    priority: int | None = None,
    correlation_id: bytes | None = None,
    reply_to: bytes | None = None,
) -> bytes | None:
    """Basic properties as on the wire (flags, then each present property); None if a
    value has no AMQP form (an integer beyond 64 bits)."""
    flags, out = 0, b""
    if content_type is not None:
        flags |= 0x8000
        out += _short(content_type)
    if content_encoding is not None:
        flags |= 0x4000
        out += _short(content_encoding)
    if headers is not None:
        flags |= 0x2000
        try:
            out += table(headers)
        except (struct.error, OverflowError):
            return None
    flags |= 0x1000
    out += struct.pack(">B", delivery_mode)
    if priority is not None:
        flags |= 0x0800
        out += struct.pack(">B", priority)
    if correlation_id is not None:
        flags |= 0x0400
        out += _short(correlation_id)
    if reply_to is not None:
        flags |= 0x0200
        out += _short(reply_to)
    return struct.pack(">H", flags) + out


class RawMessage(amqp.Message):  # type: ignore[misc]
    """A message whose properties are written exactly as given."""

    def __init__(self, body: bytes, raw_properties: bytes) -> None:
        super().__init__(body)
        self.raw_properties = raw_properties

    def _serialize_properties(self) -> bytes:
        return self.raw_properties
