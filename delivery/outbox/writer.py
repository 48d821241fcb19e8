"""``send`` and ``send_many`` into the outbox: rows in the caller's transaction."""

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from delivery.outbox.table import TABLE
from delivery.producer.publisher import prepare, receipt, validate_many, validate_send
from delivery.producer.recipients import is_several
from schemas import Message, Payload, Receipt, get_settings

#: Where the rows go: an ORM session or a Core connection, inside its transaction.
Transaction = Session | Connection


@overload
def send(  # type: ignore[overload-overlap]  # a str is a Sequence[str]; str is tried first
    session: Transaction,
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
    session: Transaction,
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
    session: Transaction,
    channel: str,
    address: str | Sequence[str],
    payload: Payload | Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    countdown: float | None = None,
    category: str | None = None,
    ttl: float | None = None,
) -> Receipt | list[Receipt]:
    """``delivery.send`` inside the caller's transaction: the delivery is published once
    ``session`` commits, and never if it rolls back.

    Validates exactly as ``delivery.send`` does and returns the receipt at once; its id is
    fixed now and travels in the row, so the relay publishing a row twice (it died between
    publishing and deleting) is recognised by the workers and sent once. ``countdown`` and
    ``ttl`` count from now, not from the commit.

    Raises:
        pydantic.ValidationError: the message is invalid; nothing was added.
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
    receipts = _add(session, messages, ids)
    return receipts if is_several(address) else receipts[0]


def send_many(
    session: Transaction, messages: Iterable[Message | Mapping[str, Any]]
) -> list[Receipt]:
    """``delivery.send_many`` inside the caller's transaction: one row per delivery, one
    INSERT for them all. Every message is validated before any row is added.

    Raises:
        pydantic.ValidationError: a message is invalid; nothing was added.
    """
    validated, ids = validate_many(messages)
    if not validated:
        return []
    return _add(session, validated, ids)


def _add(session: Transaction, messages: list[Message], ids: list[str | None]) -> list[Receipt]:
    # The envelopes are built as the producer builds them, so a countdown too long for
    # the broker already carries its time to wait in the log.
    outgoing = prepare(messages, ids, delay_limit=get_settings().delay_limit)
    now = datetime.now(UTC)
    rows = [
        {
            "delivery_id": envelope.id,
            "envelope": envelope.model_dump_json(),
            "countdown": countdown or None,
            "created_at": now,
        }
        for envelope, countdown in outgoing
    ]
    session.execute(insert(TABLE), rows)
    return [receipt(envelope) for envelope, _ in outgoing]
