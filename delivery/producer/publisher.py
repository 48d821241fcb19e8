"""The thin producer: validate, derive the delivery id, publish a task by name.

Imports neither SQLAlchemy nor any provider SDK; Celery itself is imported on first use.
"""

import contextlib
import errno
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

from delivery.errors import PublishError
from delivery.producer.celery_config import (
    DELIVER_BATCH_TASK,
    DELIVER_TASK,
    FANOUT_TASK,
    PUBLISHED_AT_HEADER,
    ROUTE_INBOUND_TASK,
    celery_config,
)
from delivery.producer.recipients import expand, is_several
from delivery.redaction import mask_address
from delivery.tracing import current_traceparent
from schemas import Envelope, Message, Payload, Receipt, Settings, get_settings
from schemas.events import Event
from schemas.inbound import RouteRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Namespace for delivery ids derived from ``(channel, idempotency_key)``.
DELIVERY_NAMESPACE = uuid.UUID("6f0c8d52-3f0e-4a59-9d1c-6c2b4e1a7d30")
#: An envelope to publish and the seconds it waits in the broker first (None: none).
Outgoing = tuple[Envelope, float | None]
#: Task messages per broker round trip.
PIPELINE_SIZE = 500
#: Characters of a failure's message a PublishError quotes.
MAX_CAUSE = 300
#: OSError numbers that mean the broker's host cannot be reached (now).
_UNREACHABLE = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


@dataclass(frozen=True, slots=True)
class _Task:
    name: str
    args: list[Any]
    task_id: str
    countdown: float | None = None


def _single(envelope: Envelope, countdown: float | None) -> _Task:
    # The task id is the delivery id, so Flower finds a single delivery by its id.
    return _Task(DELIVER_TASK, [envelope.model_dump(mode="json")], envelope.id, countdown)


def batches(items: Sequence[T], *, size: int, spread: int) -> list[Sequence[T]]:
    """``items`` in consecutive groups of at most ``size``, evenly filled, and at least
    ``spread`` groups (when there are that many items), so a small bulk send still keeps
    a worker's threads busy instead of queueing behind one of them."""
    if not items:
        return []
    count = max(-(-len(items) // size), min(len(items), spread))
    step, extra = divmod(len(items), count)
    groups: list[Sequence[T]] = []
    start = 0
    for index in range(count):
        end = start + step + (1 if index < extra else 0)
        groups.append(items[start:end])
        start = end
    return groups


def delivery_id(channel: str, idempotency_key: str | None) -> str:
    """The same ``(channel, idempotency_key)`` always yields the same id."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{channel}\x00{idempotency_key}"))


class Publisher:
    """Publishes delivery tasks. One per settings; safe to share between threads."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        self.settings = settings
        self.app: Celery = Celery("delivery-producer", set_as_current=False)
        config = celery_config(settings)
        # Fail each connection attempt fast: publish_envelopes does the retrying, bounded
        # by publish_timeout, so a dead broker never hangs the calling service.
        config["broker_transport_options"] = {
            **config.get("broker_transport_options", {}),
            "max_retries": 0,
            "connect_retries_timeout": settings.publish_timeout,
        }
        config["broker_connection_timeout"] = settings.publish_timeout
        self.app.conf.update(config)

    def publish(
        self,
        messages: Sequence[Message],
        *,
        ids: Sequence[str | None] | None = None,
        owner: str | None = None,
        test: bool = False,
    ) -> list[Receipt]:
        """Publish new deliveries and return their receipts. ``ids`` fixes a message's
        delivery id (None: derived from its channel and idempotency key). ``owner``: the
        API key that sends them; ``test``: no provider is to be called (a test key's).

        Raises:
            PublishError: the broker stayed unreachable, or refused the message.
        """
        outgoing = prepare(messages, ids, delay_limit=self.settings.delay_limit)
        if owner is not None or test:
            outgoing = [
                (e.model_copy(update={"owner": owner, "test": test}), c) for e, c in outgoing
            ]
        self.publish_envelopes(outgoing, batch=True)
        return [receipt(e) for e, _ in outgoing]

    def publish_envelopes(self, outgoing: Sequence[Outgoing], *, batch: bool = False) -> None:
        """Publish task messages, retrying the whole lot until ``publish_timeout``.

        With ``batch``, deliveries due now travel ``batch_size`` to a task message (see
        ``batches``); each one with a countdown gets a task of its own, as it waits in the
        broker. Retrying is safe: ids are fixed before the first try, so a copy that did
        reach the broker is recognised by the workers and sent once.

        Raises:
            PublishError: the broker stayed unreachable, or refused the message.
        """
        self._publish_retrying(self._tasks(outgoing, batch=batch))

    def publish_inbound(self, message_id: str) -> None:
        """Hand a recorded inbound message to the router (``delivery.route_inbound``).

        Raises:
            PublishError: the broker stayed unreachable, or refused the message.
        """
        body = RouteRequest(id=message_id).model_dump(mode="json")
        self._publish_retrying([_Task(ROUTE_INBOUND_TASK, [body], f"inbound-{message_id}")])

    def publish_event(self, event: Event) -> None:
        """Hand an event to the workers to fan out (``delivery.fanout``); the task id is
        the event id, so Flower finds it by the id ``notify`` returned.

        Raises:
            PublishError: the broker stayed unreachable, or refused the message.
        """
        self._publish_retrying([_Task(FANOUT_TASK, [event.model_dump(mode="json")], event.id)])

    def _publish_retrying(self, tasks: Sequence[_Task]) -> None:
        """Publish, retrying the whole lot until ``publish_timeout``.

        Raises:
            PublishError: the broker stayed unreachable, or refused the message.
        """
        deadline = time.monotonic() + self.settings.publish_timeout
        pause = 0.1
        retries = 0
        while True:
            try:
                for start in range(0, len(tasks), PIPELINE_SIZE):
                    self._publish_tasks(tasks[start : start + PIPELINE_SIZE])
                return
            except Exception as exc:  # noqa: BLE001 - each transport raises its own errors
                where = f"could not publish to the broker at {self._safe_url()}"
                if not _is_connection_error(exc):
                    # Retrying cannot help a bug or a message the broker refuses: say what
                    # it was, at once, rather than blame the network.
                    raise PublishError(f"{where}: {self._cause(exc)}") from None
                if time.monotonic() + pause > deadline:
                    raise PublishError(
                        f"{where} within {self.settings.publish_timeout:g}s: it is "
                        f"unreachable ({self._cause(exc)})"
                    ) from None
                # One warning per publish, not one per retry: the rest is detail.
                logger.log(
                    logging.DEBUG if retries else logging.WARNING,
                    "broker unreachable (%s); retrying for up to %gs",
                    type(exc).__name__,
                    self.settings.publish_timeout,
                )
                retries += 1
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _tasks(self, pairs: Sequence[Outgoing], *, batch: bool) -> list[_Task]:
        """The task messages for ``pairs``: one each, or batches of those due now."""
        tasks = [_single(e, c) for e, c in pairs if not batch or c]
        if batch:
            due = [e for e, c in pairs if not c]
            size, spread = self.settings.batch_size, self.settings.worker_concurrency
            for group in batches(due, size=size, spread=spread):
                if len(group) == 1:
                    tasks.append(_single(group[0], None))
                else:
                    body = [e.model_dump(mode="json") for e in group]
                    tasks.append(_Task(DELIVER_BATCH_TASK, [body], str(uuid.uuid4())))
        return tasks

    def _publish_tasks(self, tasks: Sequence[_Task]) -> None:
        with self.app.producer_or_acquire() as producer:
            connection = producer.connection
            try:
                if len(tasks) == 1:
                    self._send(producer, tasks[0])
                    return
                # One pipelined round trip where the transport supports it (Redis); kombu
                # before 5.7 has no batches, and publishes one by one.
                batch = getattr(producer, "batch", None)
                with batch(max_size=len(tasks)) if batch else contextlib.nullcontext():
                    for task in tasks:
                        self._send(producer, task)
            except Exception as exc:
                if self.settings.is_amqp_broker:
                    _forget_amqp_connection(connection, exc)
                raise

    def _send(self, producer: Any, task: _Task) -> None:
        headers = None
        if task.name in (DELIVER_TASK, DELIVER_BATCH_TASK):
            # Set now, on each try: a worker erases it unsent if its address was erased
            # since (an erasure cannot find a delivery still waiting in the broker).
            headers = {PUBLISHED_AT_HEADER: time.time()}
        self.app.send_task(
            task.name,
            args=task.args,
            task_id=task.task_id,
            countdown=task.countdown,
            producer=producer,
            retry=False,
            headers=headers,
            **self._amqp_options,
            **({} if self.settings.task_args_in_events else _shown_arguments(task)),
        )

    @property
    def _amqp_options(self) -> dict[str, Any]:
        if not self.settings.is_amqp_broker:
            return {}
        timeout = self.settings.publish_timeout
        # Publisher confirms (celery_config) tell that RabbitMQ took the message, even when
        # no queue did: with ``mandatory``, a message no queue takes comes back as an error
        # instead. And neither the write nor the wait for the confirm outlasts the publish
        # timeout (a broker short of memory blocks publishers without a word).
        return {"mandatory": True, "timeout": timeout, "confirm_timeout": timeout}

    def _safe_url(self) -> str:
        from kombu.utils.url import maybe_sanitize_url

        return str(maybe_sanitize_url(self.settings.broker_url))

    def _cause(self, exc: BaseException) -> str:
        """The exception's type and message, with the broker URL and password masked."""
        text = " ".join(str(exc).split())[:MAX_CAUSE]
        url = self.settings.broker_url
        if url in text:
            text = text.replace(url, self._safe_url())
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
            if password:
                text = text.replace(password, "**")
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shown_arguments(task: _Task) -> dict[str, str]:
    """What Flower and task events show of a delivery task's arguments: each delivery's
    channel, id and masked address, never the message (DELIVERY_TASK_ARGS_IN_EVENTS=true
    shows them in full). Of an event, its id, name and the context's keys."""
    if task.name == FANOUT_TASK:
        event = task.args[0]
        shown_event = {
            "id": event["id"],
            "name": event["name"],
            "context": sorted(event["context"]),
        }
        return {"argsrepr": repr([shown_event]), "kwargsrepr": "{}"}
    if task.name == DELIVER_TASK:
        envelopes = task.args
    elif task.name == DELIVER_BATCH_TASK:
        envelopes = task.args[0]
    else:
        return {}
    shown = [
        {"id": e["id"], "channel": e["channel"], "address": mask_address(e["address"])}
        for e in envelopes
    ]
    return {"argsrepr": repr(shown if task.name == DELIVER_TASK else [shown]), "kwargsrepr": "{}"}


def prepare(
    messages: Sequence[Message], ids: Sequence[str | None] | None = None, *, delay_limit: float
) -> list[Outgoing]:
    """The envelopes of validated messages, each with the seconds it waits in the broker.

    Every id is fixed here: ``ids`` fixes a message's (None: derived from its channel and
    idempotency key, or random without one). A countdown longer than ``delay_limit`` waits
    in the log instead (``not_before``), never in the broker. Shared by ``Publisher`` and
    the transactional outbox, which stores the envelopes to publish after its commit.
    """
    fixed = ids if ids is not None else [None] * len(messages)
    outgoing: list[Outgoing] = []
    for message, fixed_id in zip(messages, fixed, strict=True):
        defer = bool(message.countdown and message.countdown > delay_limit)
        envelope = _envelope(message, defer=defer, fixed_id=fixed_id)
        outgoing.append((envelope, message.countdown if not envelope.not_before else None))
    return outgoing


def receipt(envelope: Envelope) -> Receipt:
    """What a producer returns for an envelope it published (or stored to publish)."""
    return Receipt(
        id=envelope.id, channel=envelope.channel, idempotency_key=envelope.idempotency_key
    )


def _envelope(message: Message, *, defer: bool = False, fixed_id: str | None = None) -> Envelope:
    """The task message. A deferred one goes now and waits in the log, not the broker."""
    now = datetime.now(UTC)
    not_before = None
    if defer and message.countdown:
        not_before = now + timedelta(seconds=message.countdown)
    return Envelope(
        id=fixed_id or delivery_id(message.channel, message.idempotency_key),
        channel=message.channel,
        address=message.address,
        payload=message.payload,
        idempotency_key=message.idempotency_key,
        not_before=not_before,
        category=message.category,
        # The caller's span, if any: the worker's attempt continues its trace.
        traceparent=current_traceparent(),
        expires_at=now + timedelta(seconds=message.ttl) if message.ttl else None,
    )


#: AMQP's reply code for a mandatory message that no queue took.
_NO_ROUTE = 312


class _Unroutable(ConnectionError):
    """RabbitMQ had no queue for the message (it was deleted after this process declared it;
    kombu declares a queue once per connection): worth a retry, which declares it again."""


def _forget_amqp_connection(connection: Any, exc: Exception) -> None:
    """After a failed publish to RabbitMQ, make the next try start afresh: declare the
    queue again, and never wait on a channel where a late confirm from this try could be
    taken for the next one's.

    Raises:
        _Unroutable: ``exc`` was a message returned for want of a queue.
    """
    with contextlib.suppress(Exception):  # already broken: nothing more to undo
        connection.declared_entities.clear()
        connection.collect()  # the pool connects again when the producer is next used
    if getattr(exc, "reply_code", None) == _NO_ROUTE:
        raise _Unroutable(f"no queue took the message ({exc})") from exc


def _is_connection_error(exc: BaseException) -> bool:
    """Whether the broker could not be reached (worth retrying), rather than refused the
    message or met a bug (a full disk, a permission, an AttributeError: not worth it)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, OperationalError | RedisConnectionError | RedisTimeoutError):
        return True  # kombu's and redis-py's words for "could not connect"
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
        return True
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE


_current: tuple[Settings, Publisher] | None = None
_current_lock = threading.Lock()


def get_publisher(settings: Settings | None = None) -> Publisher:
    """The process's publisher for the current settings (made on first use)."""
    global _current
    settings = settings or get_settings()
    with _current_lock:
        if _current is None or _current[0] is not settings:
            _current = (settings, Publisher(settings))
        return _current[1]


def reset_publisher() -> None:
    """Forget the process's publisher, so the next send reads the settings afresh (tests)."""
    global _current
    with _current_lock:
        _current = None


@overload
def send(  # type: ignore[overload-overlap]  # a str is a Sequence[str]; str is tried first
    channel: str,
    address: str,
    payload: Payload | Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    countdown: float | None = None,
    category: str | None = None,
    ttl: float | None = None,
) -> Receipt: ...


@overload
def send(
    channel: str,
    address: Sequence[str],
    payload: Payload | Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    countdown: float | None = None,
    category: str | None = None,
    ttl: float | None = None,
) -> list[Receipt]: ...


def send(
    channel: str,
    address: str | Sequence[str],
    payload: Payload | Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    countdown: float | None = None,
    category: str | None = None,
    ttl: float | None = None,
) -> Receipt | list[Receipt]:
    """Enqueue one delivery and return its receipt at once.

    Given a list of addresses, enqueue one delivery per distinct address (each with its
    own id, retries and outcome) and return their receipts in order. With an idempotency
    key, each one's id is derived from the channel, the key and its address.

    ``category`` (``security``, ``marketing``) is what preferences and unsubscribe links
    act on; a category in ``DELIVERY_CRITICAL_CATEGORIES`` is never skipped.

    ``ttl``: seconds from now within which it must be sent; a delivery that could not be
    sent in time ends ``expired``, never sent late (Twilio is told too: ``ValidityPeriod``).

    Raises:
        pydantic.ValidationError: the message is invalid; nothing was enqueued.
        PublishError: the broker could not be reached within ``DELIVERY_PUBLISH_TIMEOUT``,
            or publishing failed (the message says why).
    """
    fields = {
        "channel": channel,
        "address": address,
        "payload": payload,
        "idempotency_key": idempotency_key,
        "countdown": countdown,
        "category": category,
        "ttl": ttl,
    }
    messages, ids = validate_send(fields)
    receipts = get_publisher().publish(messages, ids=ids)
    return receipts if is_several(address) else receipts[0]


def validate_send(fields: Mapping[str, Any]) -> tuple[list[Message], list[str | None]]:
    """The messages one ``send`` makes of its arguments, validated, and the id each must
    have (None: derived from its channel and idempotency key). Several addresses make one
    message each.

    Raises:
        pydantic.ValidationError: a message is invalid.
    """
    if is_several(fields.get("address")):
        return expand(fields)
    return [Message.model_validate(fields)], [None]


def validate_many(
    messages: Iterable[Message | Mapping[str, Any]],
) -> tuple[list[Message], list[str | None]]:
    """``send_many``'s messages, every one validated, and the id each must have (None:
    derived). A mapping whose ``address`` is a list makes one message per distinct address.

    Raises:
        pydantic.ValidationError: a message is invalid.
    """
    validated: list[Message] = []
    ids: list[str | None] = []
    for m in messages:
        if isinstance(m, Message):
            validated.append(m)
            ids.append(None)
        else:
            several, their_ids = validate_send(m)
            validated.extend(several)
            ids.extend(their_ids)
    return validated, ids


def send_many(messages: Iterable[Message | Mapping[str, Any]]) -> list[Receipt]:
    """Enqueue many deliveries, one broker round trip per batch.

    Every message is validated before anything is enqueued. A mapping whose ``address``
    is a list makes one delivery per distinct address, as ``send`` does, and one receipt
    each, in order.

    Raises:
        pydantic.ValidationError: a message is invalid; nothing was enqueued.
        PublishError: the broker could not be reached within ``DELIVERY_PUBLISH_TIMEOUT``,
            or publishing failed (the message says why).
    """
    validated, ids = validate_many(messages)
    if not validated:
        return []
    return get_publisher().publish(validated, ids=ids)
