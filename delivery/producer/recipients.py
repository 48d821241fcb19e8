"""Several identities in one send (RapidSMS's ``send(id_, text, identities)``): one
delivery per identity, each with its own id, receipt, retries and outcome."""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from schemas import Message
from schemas.events import Recipients

#: Namespace for the ids of several-recipient deliveries: ``(channel, key, address)``.
RECIPIENT_NAMESPACE = uuid.UUID("5d2e8f47-1c3b-4a96-b7e0-93a6c4d1f285")

_RECIPIENTS: TypeAdapter[list[str]] = TypeAdapter(Recipients)


def recipient_id(channel: str, idempotency_key: str | None, address: str) -> str | None:
    """The delivery id of one identity of a several-recipient send with a key: the same
    ``(channel, key, address)`` always yields the same id. None without a key (random)."""
    if idempotency_key is None:
        return None
    return str(uuid.uuid5(RECIPIENT_NAMESPACE, f"{channel}\x00{idempotency_key}\x00{address}"))


def is_several(address: Any) -> bool:
    return isinstance(address, Sequence) and not isinstance(address, str | bytes)


def expand(fields: Mapping[str, Any]) -> tuple[list[Message], list[str | None]]:
    """One message per distinct address of ``fields["address"]`` (a list), in order, and
    the delivery id of each.

    Raises:
        pydantic.ValidationError: no address, too many, or one of them is invalid.
    """
    addresses = list(dict.fromkeys(_RECIPIENTS.validate_python(list(fields["address"]))))
    messages = [Message.model_validate({**fields, "address": a}) for a in addresses]
    ids = [recipient_id(m.channel, m.idempotency_key, m.address) for m in messages]
    return messages, ids
