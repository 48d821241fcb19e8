"""Several identities in one send: one delivery, id and receipt each."""

from typing import Any

import pytest
from pydantic import ValidationError

import delivery
from delivery.producer.publisher import delivery_id
from delivery.producer.recipients import recipient_id
from schemas import Message, Payload, Receipt, Settings
from schemas.events import MAX_RECIPIENTS
from tests.support.memory_broker import take_waiting


def _envelopes() -> list[dict[str, Any]]:
    return [envelope for message in take_waiting() for envelope in message.envelopes]


@pytest.fixture(autouse=True)
def _empty(settings: Settings) -> None:
    _envelopes()


PHONES = ["+447900000001", "+447900000002", "+447900000003"]


def test_a_list_of_addresses_makes_one_delivery_each() -> None:
    receipts = delivery.send("sms", PHONES, Payload(message="hi"), idempotency_key="k")
    assert isinstance(receipts, list) and all(isinstance(r, Receipt) for r in receipts)
    assert [r.id for r in receipts] == [recipient_id("sms", "k", p) for p in PHONES]
    assert len({r.id for r in receipts}) == 3
    envelopes = sorted(_envelopes(), key=lambda e: e["address"])
    assert [e["address"] for e in envelopes] == PHONES
    assert [e["id"] for e in envelopes] == [r.id for r in receipts]
    # the same send again derives the same ids; one address alone keeps the usual id
    again = delivery.send("sms", PHONES, Payload(message="hi"), idempotency_key="k")
    assert [r.id for r in again] == [r.id for r in receipts]
    single = delivery.send("sms", PHONES[0], Payload(message="hi"), idempotency_key="k")
    assert single.id == delivery_id("sms", "k")


def test_duplicates_are_sent_once_and_no_key_means_fresh_ids() -> None:
    receipts = delivery.send("sms", [PHONES[0], PHONES[1], PHONES[0]], {"message": "hi"})
    assert len(receipts) == 2 and receipts[0].id != receipts[1].id
    assert len(_envelopes()) == 2


def test_send_many_expands_a_list_address_in_order() -> None:
    receipts = delivery.send_many(
        [
            {"channel": "sms", "address": PHONES[:2], "payload": {"message": "a"}},
            Message(channel="ops", address="x", payload=Payload(message="b")),
        ]
    )
    assert [r.channel for r in receipts] == ["sms", "sms", "ops"]
    assert len(_envelopes()) == 3


@pytest.mark.parametrize(
    "addresses",
    [[], ["+447900000001", ""], ["ok", "\x00"], ["x"] * (MAX_RECIPIENTS + 1)],
)
def test_bad_address_lists_enqueue_nothing(addresses: list[str]) -> None:
    if len(addresses) > MAX_RECIPIENTS:
        addresses = [f"+4479{i:08d}" for i in range(MAX_RECIPIENTS + 1)]
    with pytest.raises(ValidationError):
        delivery.send("sms", addresses, {"message": "hi"})
    with pytest.raises(ValidationError):
        delivery.send_many(
            [
                {"channel": "sms", "address": "fine", "payload": {"message": "hi"}},
                {"channel": "sms", "address": addresses, "payload": {"message": "hi"}},
            ]
        )
    assert _envelopes() == []
