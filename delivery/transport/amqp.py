"""kombu's py-amqp transport (RabbitMQ), hardened: a crafted message never stops a worker.

kombu and Celery trust what RabbitMQ delivers. Anyone who may publish to the task queue can
send a message that stops every worker in turn: a ``{}`` body with a ``task`` header is an
"Unrecoverable error" (``not enough values to unpack``), RabbitMQ puts the unacknowledged
message back, and the next worker to start takes it and dies too. Worse, py-amqp decodes a
message's properties inside the connection's frame reader, so a header it cannot decode (a
timestamp past year 9999, tables nested thousands deep, a content type that is not UTF-8)
raises out of the event loop before any consumer sees the message.

Here every message is checked before kombu and Celery touch it, by the rules Redis queue
items are checked by (``delivery.transport.shape``); what fails is **set aside**: published
whole (body, properties and headers, with the reason in the ``x-delivery-set-aside-reason``
header) to the durable queue ``delivery.undecodable``, confirmed by the broker, and only
then acknowledged. It is logged at ERROR and the worker goes on.

Messages on the queues that are not task queues are checked too: Celery's remote control
(``celery.pidbox``, a fanout exchange every worker reads and anyone may publish to) and task
events must be JSON kombu can decode, and a worker's control queue takes only commands
kombu's pidbox can read (``shape.control_problem``). Celery acknowledges a message it
cannot decode, which on the remote-control consumer (no acknowledgements) is a channel
error that stops the worker.
"""

import logging
import struct
import threading
from struct import unpack_from
from typing import Any

from amqp import spec  # type: ignore[import-untyped]
from amqp.basic_message import Message as AmqpMessage  # type: ignore[import-untyped]
from amqp.exceptions import PreconditionFailed, UnexpectedFrame  # type: ignore[import-untyped]
from kombu.connection import Connection as KombuConnection
from kombu.transport import pyamqp

from delivery.transport.shape import amqp_problem

logger = logging.getLogger(__name__)

#: The durable queue where refused messages are kept, whole, for a person to look at.
SET_ASIDE = "delivery.undecodable"
#: Headers a set-aside message carries besides its own.
REASON_HEADER = "x-delivery-set-aside-reason"
ORIGIN_HEADER = "x-delivery-original-routing-key"
#: When the properties themselves could not be decoded: their bytes, as they came.
RAW_PROPERTIES_HEADER = "x-delivery-raw-properties"
#: When they could be decoded but not encoded again: their repr.
PROPERTIES_HEADER = "x-delivery-properties"
#: Seconds to wait for RabbitMQ to confirm a set-aside message before giving up (the
#: original stays unacknowledged, and comes back).
CONFIRM_TIMEOUT = 10.0

#: AMQP's reply code for a mandatory message that no queue took.
_NO_ROUTE = 312
#: The methods that carry a message (a content header and body frames follow).
_CONTENT_METHODS = frozenset([spec.Basic.Return, spec.Basic.Deliver, spec.Basic.GetOk])


def is_task_queue(queue: str) -> bool:
    """Task queues hold Celery tasks only. Celery's remote control (``*.celery.pidbox``,
    ``*.reply.celery.pidbox``) and task events (``celeryev.*``, read by Flower) travel
    through this transport too, and are not tasks."""
    return not (queue.endswith("pidbox") or queue.startswith("celeryev."))


def is_control_queue(queue: str) -> bool:
    """A worker's remote-control queue (``<node>.celery.pidbox``; replies go to clients)."""
    return queue.endswith(".celery.pidbox") and not queue.endswith(".reply.celery.pidbox")


def frame_handler(connection: Any, callback: Any) -> Any:
    """py-amqp's ``frame_handler``, except that a content header whose properties cannot be
    decoded does not raise out of the connection's reader (which stops the worker, and
    leaves the message to stop the next one): the message is read on, with empty
    properties, and marked ``undecodable`` with the reason for the channel to set aside.
    """
    expected_types: dict[int, int] = {}
    partial_messages: dict[int, AmqpMessage] = {}

    def on_frame(frame: tuple[int, int, bytes]) -> bool:
        frame_type, channel, buf = frame
        connection.bytes_recv += 1
        expected = expected_types.get(channel, 1)
        if frame_type not in (expected, 8):
            raise UnexpectedFrame(f"Received frame {frame_type} while expecting type: {expected}")
        if frame_type == 1:
            method_sig = unpack_from(">HH", buf, 0)
            if method_sig in _CONTENT_METHODS:
                # Save what we've got so far and wait for the content header.
                partial_messages[channel] = AmqpMessage(frame_method=method_sig, frame_args=buf)
                expected_types[channel] = 2
                return False
            callback(channel, method_sig, buf, None)
        elif frame_type == 2:
            msg = partial_messages[channel]
            _read_header(msg, buf)
            if not msg.ready:
                expected_types[channel] = 3
                return False
            expected_types[channel] = 1
            partial_messages.pop(channel, None)
            callback(channel, msg.frame_method, msg.frame_args, msg)
        elif frame_type == 3:
            msg = partial_messages[channel]
            msg.inbound_body(buf)
            if not msg.ready:
                return False
            expected_types[channel] = 1
            partial_messages.pop(channel, None)
            callback(channel, msg.frame_method, msg.frame_args, msg)
        elif frame_type == 8:
            return False  # a heartbeat
        return True

    return on_frame


def _read_header(msg: AmqpMessage, buf: bytes) -> None:
    try:
        msg.inbound_header(buf)
    except Exception as exc:  # noqa: BLE001 - struct, Unicode, Overflow, Recursion errors…
        # The frame's fixed part (class, weight, body size) is read on its own: if even that
        # fails, the stream is not AMQP and the connection cannot go on.
        _, msg.body_size = unpack_from(">HxxQ", buf, 0)
        msg.properties = {}
        msg.ready = not msg.body_size
        msg.undecodable = f"properties: cannot be decoded ({type(exc).__name__})"
        msg.raw_properties = bytes(buf[12:])


class Channel(pyamqp.Channel):
    """A py-amqp channel that checks each message before its consumer's callback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: The queue each consumer (by tag) takes from, and whether it acknowledges.
        self._queue_of: dict[str, tuple[str, bool]] = {}
        super().__init__(*args, **kwargs)
        # py-amqp decodes each body with whatever codec the message names, before anything
        # else sees it; kombu decodes it again, by the same property, when Celery asks. The
        # body stays as it came: checked as bytes, and set aside exactly as it came.
        self.auto_decode = False

    def basic_consume(
        self, queue: str = "", consumer_tag: str = "", *args: Any, **kwargs: Any
    ) -> Any:
        # Celery's remote control consumes without acknowledgements (no_ack): acknowledging
        # one of its messages is a channel error that stops the worker.
        no_ack = bool(kwargs.get("no_ack", args[1] if len(args) > 1 else False))
        if consumer_tag:  # kombu always names its consumers; messages may come at once
            self._queue_of[consumer_tag] = (queue, no_ack)
        tag = super().basic_consume(queue, consumer_tag, *args, **kwargs)
        if isinstance(tag, str):
            self._queue_of[tag] = (queue, no_ack)
        return tag

    def basic_cancel(self, consumer_tag: str, *args: Any, **kwargs: Any) -> Any:
        self._queue_of.pop(consumer_tag, None)
        return super().basic_cancel(consumer_tag, *args, **kwargs)

    def _on_basic_deliver(
        self,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        msg: AmqpMessage,
    ) -> None:
        consumer = self._queue_of.get(consumer_tag)
        if consumer is not None and consumer_tag in self.callbacks:
            queue, no_ack = consumer
            problem = getattr(msg, "undecodable", None) or amqp_problem(
                _body(msg),
                msg.properties,
                task=is_task_queue(queue),
                control=is_control_queue(queue),
            )
            if problem is not None:
                self._refuse(msg, None if no_ack else delivery_tag, queue, routing_key, problem)
                return
        super()._on_basic_deliver(
            consumer_tag, delivery_tag, redelivered, exchange, routing_key, msg
        )

    def _refuse(
        self,
        msg: AmqpMessage,
        delivery_tag: int | None,
        queue: str,
        routing_key: str,
        problem: str,
    ) -> None:
        """Set ``msg`` aside, then acknowledge it (``delivery_tag``; None: its consumer does
        not acknowledge): at worst it is kept twice, never lost."""
        body = _body(msg)
        connection = self.connection
        try:
            connection.set_aside(msg, body, problem, routing_key)
        except connection.connection_errors + connection.recoverable_connection_errors:
            # The broker is away, or would not keep the copy (a nack): the message stays
            # unacknowledged, Celery connects again, and it comes back.
            raise
        except Exception:  # any other failure must not stop the worker
            logger.exception(
                "could not set aside a message on queue %r (%s; %d bytes); rejected",
                queue,
                problem,
                len(body),
            )
            if delivery_tag is not None:
                self.basic_reject(delivery_tag, requeue=False)
            return
        if delivery_tag is not None:
            self.basic_ack(delivery_tag)
        logger.error(
            "set aside a message on queue %r that is not a task message we can run (%s; "
            "%d bytes); see queue %r",
            queue,
            problem,
            len(body),
            SET_ASIDE,
        )

    def set_aside(self, item: bytes | str, reason: str) -> None:
        """Keep ``item`` on the set-aside queue with ``reason`` (the caller logs it).

        Raises:
            amqp.exceptions.AMQPError, OSError: the broker did not confirm it.
        """
        body = item.encode() if isinstance(item, str) else bytes(item)
        self.connection.set_aside(AmqpMessage(body), body, reason, "")


def _body(msg: AmqpMessage) -> bytes:
    body = msg.body
    if isinstance(body, str):  # py-amqp leaves "" on a message without a body
        return body.encode("utf-8", "surrogatepass")
    return bytes(body)


class Connection(pyamqp.Connection):
    """A py-amqp connection with the tolerant frame reader, and a second connection of its
    own, opened the first time something is set aside, to publish it with confirms.

    Not on this connection: waiting there for RabbitMQ's confirm would read, and hand to
    Celery, deliveries in the middle of handling another.
    """

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["frame_handler"] = frame_handler
        super().__init__(*args, **kwargs)
        self._aside_lock = threading.RLock()
        self._aside: Any = None  # the kombu connection, once opened
        self._aside_channel: Any = None

    def set_aside(self, msg: AmqpMessage, body: bytes, reason: str, routing_key: str) -> None:
        """Publish ``msg`` whole to the set-aside queue and wait for RabbitMQ to confirm it.

        Raises:
            amqp.exceptions.AMQPError, OSError: the broker did not confirm it.
        """
        properties = dict(msg.properties)
        headers = properties.pop("application_headers", None)
        extra = {REASON_HEADER: reason, ORIGIN_HEADER: routing_key}
        raw = getattr(msg, "raw_properties", None)
        if raw is not None:
            extra[RAW_PROPERTIES_HEADER] = raw
        message = AmqpMessage(
            body, **{**properties, "application_headers": {**(headers or {}), **extra}}
        )
        try:
            message._serialize_properties()
        except (ValueError, TypeError, OverflowError, ArithmeticError, struct.error) as exc:
            # Decoded, but not encoded again (py-amqp writes fewer types than it reads):
            # the body as it came, the properties in words.
            logger.warning("set-aside properties kept as text (%r)", exc)
            extra[PROPERTIES_HEADER] = repr(msg.properties)[:60_000]
            message = AmqpMessage(body, application_headers=extra)
        message.properties["delivery_mode"] = 2  # persistent: kept across a broker restart
        with self._aside_lock:
            for attempt in (1, 2):
                try:
                    # Mandatory: confirmed only once the queue has it, not merely RabbitMQ.
                    self._aside_channel_open().basic_publish(
                        message,
                        exchange="",
                        routing_key=SET_ASIDE,
                        mandatory=True,
                        timeout=CONFIRM_TIMEOUT,
                        confirm_timeout=CONFIRM_TIMEOUT,
                    )
                    return
                except BaseException as exc:
                    self._close_aside()
                    # Returned for want of the queue (deleted since it was declared here),
                    # or the connection was lost since (RabbitMQ restarted): once more, on
                    # a new connection that declares it again. Not after a timeout: the
                    # event loop has waited long enough.
                    unroutable = getattr(exc, "reply_code", None) == _NO_ROUTE
                    lost = isinstance(exc, self.connection_errors) and not isinstance(
                        exc, TimeoutError
                    )
                    if attempt == 2 or not (unroutable or lost):
                        raise

    def _aside_channel_open(self) -> Any:
        channel = self._aside_channel
        if channel is None:
            # The kombu connection that made this one, again, with confirms.
            info = self.client.info()
            options = {**(info.get("transport_options") or {}), "confirm_publish": True}
            self._aside = KombuConnection(**{**info, "transport_options": options})
            self._aside.connect()  # once: a broker that is away fails this set-aside now
            channel = self._aside.channel()
            try:
                channel.queue_declare(SET_ASIDE, durable=True, auto_delete=False)
            except PreconditionFailed:
                # Declared otherwise by its owner (a quorum queue, a policy's arguments):
                # it is there, and is used as it is, on a new channel (that one is closed).
                channel = self._aside.channel()
            self._aside_channel = channel
        return channel

    def _close_aside(self) -> None:
        aside, self._aside, self._aside_channel = self._aside, None, None
        if aside is not None:
            try:
                aside.close()
            except Exception:  # closing a broken connection; nothing to save
                logger.debug("closing the set-aside connection failed", exc_info=True)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        with self._aside_lock:
            self._close_aside()
        return super().close(*args, **kwargs)

    def collect(self) -> None:
        with self._aside_lock:
            self._close_aside()
        super().collect()


class Transport(pyamqp.Transport):
    Connection = Connection


class SSLTransport(Transport):
    """For ``amqps://`` URLs (kombu's own ``SSLTransport``, which a transport named by path
    in the settings would otherwise lose)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        client = self.client
        if client is not None and not client.ssl:  # a dict of ``ssl`` options is kept
            client.ssl = True


__all__ = ["SET_ASIDE", "Channel", "Connection", "SSLTransport", "Transport"]
