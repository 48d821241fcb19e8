"""``category`` at the producer's entry points (``send``, ``send_many``, ``notify``), the
critical categories setting, and the workers' turn at closing digest windows."""

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

import delivery
from delivery.log import DeliveryLog
from schemas import CATEGORY_PATTERN, Envelope, Settings
from schemas.events import Event
from schemas.settings import parse_categories
from tests.support.memory_broker import take_waiting
from workers.sweeper import DIGEST_JOB, Sweeper


def _drain() -> list[tuple[str, list[Any]]]:
    return [(message.task, message.args) for message in take_waiting()]


@pytest.fixture(autouse=True)
def _empty_queue(settings: Settings) -> None:
    _drain()


def test_send_and_send_many_carry_the_category_in_the_envelope() -> None:
    delivery.send("hooks", "https://example.com/a", {"message": "hi"}, category="security")
    delivery.send(
        "hooks", ["https://example.com/b", "https://example.com/c"], {"message": "hi"},
        category="billing",
    )  # fmt: skip
    delivery.send_many(
        [
            delivery.Message(
                channel="hooks", address="https://example.com/d", payload={"message": "hi"},
                category="marketing",
            ),
            {"channel": "hooks", "address": "https://example.com/e",
             "payload": {"message": "hi"}},
        ]
    )  # fmt: skip
    envelopes: list[dict[str, Any]] = []
    for task, args in _drain():
        envelopes.extend(args[0] if task == "delivery.deliver_batch" else args)
    categories = {e["address"][-1]: Envelope.model_validate(e).category for e in envelopes}
    assert categories == {
        "a": "security", "b": "billing", "c": "billing", "d": "marketing", "e": None,
    }  # fmt: skip


def test_notify_carries_the_category_in_the_event() -> None:
    delivery.notify("order.shipped", {"order": 1}, category="orders")
    [(task, [event])] = _drain()
    assert task == "delivery.fanout" and Event.model_validate(event).category == "orders"


@pytest.mark.parametrize("bad", ["Security", "a" * 33, "bad\x00", "sé", " x", 3, b"x"])
def test_a_bad_category_is_refused_before_anything_is_published(bad: Any) -> None:
    with pytest.raises(ValidationError, match="category"):
        delivery.send("hooks", "https://example.com/a", {"message": "hi"}, category=bad)
    with pytest.raises(ValidationError, match="category"):
        delivery.send_many(
            [{"channel": "hooks", "address": "a", "payload": {"message": "x"}, "category": bad}]
        )
    with pytest.raises(ValidationError, match="category"):
        delivery.notify("order.shipped", {}, category=bad)
    assert _drain() == []


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=40))
def test_any_text_is_a_category_or_a_validation_error(text: str) -> None:
    good = re.fullmatch(CATEGORY_PATTERN, text) is not None
    try:
        delivery.send("hooks", "https://example.com/a", {"message": "hi"}, category=text)
    except ValidationError as exc:
        assert not good and exc.errors()[0]["loc"] == ("category",)
    else:
        assert good
    _drain()


def test_critical_categories_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().critical_categories == frozenset({"security"})
    monkeypatch.setenv("DELIVERY_CRITICAL_CATEGORIES", " security, billing ,")
    assert Settings().critical_categories == frozenset({"security", "billing"})
    monkeypatch.setenv("DELIVERY_CRITICAL_CATEGORIES", "")
    assert Settings().critical_categories == frozenset()
    monkeypatch.setenv("DELIVERY_CRITICAL_CATEGORIES", "security,Billing")
    with pytest.raises(ValidationError, match="'Billing': categories are short lower-case"):
        Settings()
    assert parse_categories(["a", "b"]) == frozenset({"a", "b"})


def test_the_workers_take_turns_at_closing_digest_windows(settings: Settings) -> None:
    log = DeliveryLog.from_settings(settings)
    first = Sweeper(log, settings, worker="a")
    second = Sweeper(log, settings, worker="b")
    # One of them takes the turn (nothing waits: no delivery made); the other does not
    assert first.look_at_digests() == 0
    assert second.look_at_digests() is None
    assert log.next_run(DIGEST_JOB) is not None
