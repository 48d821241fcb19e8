"""Delivery ids for HTTP callers: per key, and recognisable as the key's own.

A key's ids are UUIDs whose first ten bytes are its own (random, or derived from the key's
name, the channel and the idempotency key, so two teams' ``order-42`` are two deliveries)
and whose last six bytes are a tag: a hash of the key's name and those ten bytes. So the
service can tell, without reading the log, whether an id it has never seen could be the
key's own: a delivery still waiting in the broker can be cancelled by the key that sent
it, while any other id (another key's, one nobody sent, ``not-a-uuid``) is 404 and nothing
is written. The tag is no secret and needs none: a key that makes ids passing its own
check only ever reaches ids of its own (another key's pass its check one time in 2⁴⁸).

Events published over HTTP get ids of the same kind (``owned_event_id``): a key's event
ids are its own, so two teams' ``order-42`` are two events.

Python and command-line callers keep ``delivery.producer.publisher.delivery_id`` and
``delivery.producer.events.event_id``.
"""

import hashlib
import uuid

#: Bytes of an id that are the key's own; the rest is the tag.
_BODY = 10


def _tag(owner: str, body: bytes) -> bytes:
    return hashlib.sha256(b"delivery-owner\x00" + owner.encode() + b"\x00" + body).digest()


def owned_id(owner: str, channel: str, idempotency_key: str | None) -> str:
    """A new delivery id for the key ``owner``: random, or fixed by the channel and the
    idempotency key (the same triple always yields the same id)."""
    if idempotency_key is None:
        seed = uuid.uuid4().bytes
    else:
        seed = hashlib.sha256(
            b"\x00".join((owner.encode(), channel.encode(), idempotency_key.encode()))
        ).digest()
    # Version 8 ("custom") in bytes 6 and 8, set before the tag is made, so it covers them.
    body = bytearray(seed[:_BODY])
    body[6] = (body[6] & 0x0F) | 0x80
    body[8] = (body[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(body) + _tag(owner, bytes(body))[: 16 - _BODY]))


def owned_event_id(owner: str, event: str, idempotency_key: str | None) -> str:
    """A new event id for the key ``owner``: random, or fixed by the event's name and the
    idempotency key. The name is marked as an event's (``event:`` cannot start a channel
    name), so an event and a delivery never share an id."""
    return owned_id(owner, f"event:{event}", idempotency_key)


def is_owned(delivery_id: str, owner: str) -> bool:
    """Whether ``delivery_id`` is one ``owned_id`` could have made for ``owner``."""
    try:
        raw = uuid.UUID(delivery_id).bytes
    except ValueError:
        return False
    if str(uuid.UUID(bytes=raw)) != delivery_id:
        return False  # the same id spelt another way (upper case, braces): not the one issued
    body = raw[:_BODY]
    return raw[_BODY:] == _tag(owner, body)[: 16 - _BODY]
