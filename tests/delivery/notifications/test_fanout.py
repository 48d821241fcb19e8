"""Templates, subscriptions, notify's validation and the fan-out engine, on a real SQLite
log and the in-memory broker."""

import json
from typing import Any

import pytest
from kombu.connection import Connection
from pydantic import ValidationError

import delivery
from delivery.engine.assembly import Assembly, assemble
from delivery.errors import ConfigurationError
from delivery.notifications import Notifier, TemplateRefused, fanout_delivery_id
from delivery.producer.events import event_id
from delivery.producer.publisher import get_publisher
from schemas import Settings
from schemas.events import MAX_CONTEXT_BYTES, Event
from tests.conftest import webhook_secret


def _drain() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    with Connection("memory://") as conn, conn.SimpleQueue("delivery") as queue:
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return messages
            args, _, _ = message.decode()
            headers = message.headers
            messages.append(
                {
                    "task": headers["task"],
                    "id": headers["id"],
                    "args": args,
                    "argsrepr": headers.get("argsrepr", ""),
                }
            )
            message.ack()


@pytest.fixture
def engine(settings: Settings) -> Assembly:
    _drain()
    assembly = assemble(settings)
    assembly.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    assembly.channels.add("dev", "console", {})
    return assembly


@pytest.fixture
def notifier(engine: Assembly) -> Notifier:
    return Notifier(engine.log)


def _envelopes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        assert m["task"] in ("delivery.deliver", "delivery.deliver_batch")
        out.extend(m["args"][0] if m["task"] == "delivery.deliver_batch" else m["args"])
    return sorted(out, key=lambda e: e["channel"] + e["address"])


def _event(event: str = "order.shipped", **context: Any) -> Event:
    return Event(id=event_id(event, "k1"), name=event, context=context, idempotency_key="k1")


# -- templates -----------------------------------------------------------------------------


def test_a_template_that_does_not_compile_is_refused_naming_part_and_line(
    notifier: Notifier,
) -> None:
    with pytest.raises(TemplateRefused, match=r"html: line 2: .*") as caught:
        notifier.templates.add("t", text="ok {{ a }}", html="<p>\n{% for %}</p>")
    assert caught.value.lineno == 2
    assert notifier.templates.get("t") is None
    with pytest.raises(ConfigurationError, match="--text, --html"):
        notifier.templates.add("t", subject="only a subject")


def test_templates_are_stored_replaced_and_removed(notifier: Notifier) -> None:
    notifier.templates.add("shipped", subject="Order {{ order }}", text="On its way")
    with pytest.raises(ConfigurationError, match="exists"):
        notifier.templates.add("shipped", text="again")
    notifier.templates.add("shipped", text="replaced", replace=True)
    template = notifier.templates.get("shipped")
    assert template is not None and template.text == "replaced" and template.subject is None
    assert [t.name for t in notifier.templates.all()] == ["shipped"]
    assert notifier.templates.remove("shipped") and not notifier.templates.remove("shipped")


def test_a_template_in_use_cannot_be_removed(notifier: Notifier) -> None:
    notifier.templates.add("t", text="x")
    notifier.subscriptions.add("a.b", "dev", "x", template="t")
    with pytest.raises(ConfigurationError, match="used by 1 subscription"):
        notifier.templates.remove("t")


# -- subscriptions -------------------------------------------------------------------------


def test_subscriptions_are_checked_when_added(notifier: Notifier) -> None:
    with pytest.raises(ConfigurationError, match="dotted lower-case"):
        notifier.subscriptions.add("Order Shipped", "dev", "x")
    with pytest.raises(ConfigurationError, match="no channel named 'nope'"):
        notifier.subscriptions.add("order.shipped", "nope", "x")
    with pytest.raises(ConfigurationError, match="no template named 'nope'"):
        notifier.subscriptions.add("order.shipped", "dev", "x", template="nope")
    with pytest.raises(TemplateRefused, match="address: line 1"):
        notifier.subscriptions.add("order.shipped", "dev", "{{ email ")
    with pytest.raises(TemplateRefused, match="filter: "):
        notifier.subscriptions.add("order.shipped", "dev", "x", filter="total >")
    with pytest.raises(TemplateRefused, match="not allowed"):
        notifier.subscriptions.add("order.shipped", "dev", "{{ x.__class__ }}")
    assert notifier.subscriptions.all() == []


def test_subscriptions_pause_resume_and_remove(notifier: Notifier) -> None:
    first = notifier.subscriptions.add("order.shipped", "dev", "a")
    second = notifier.subscriptions.add("order.paid", "dev", "b")
    assert [s.id for s in notifier.subscriptions.all(event="order.paid")] == [second.id]
    assert notifier.subscriptions.set_paused(first.id, True)
    assert notifier.subscriptions.active("order.shipped") == []
    assert notifier.subscriptions.set_paused(first.id, False)
    assert [s.id for s in notifier.subscriptions.active("order.shipped")] == [first.id]
    assert notifier.subscriptions.remove(first.id) and not notifier.subscriptions.remove(first.id)
    assert not notifier.subscriptions.set_paused("nope", True)


# -- notify: validation at the producer ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "context", "problem"),
    [
        ("Order.Shipped", {}, "dotted lower-case"),
        ("order shipped", {}, "dotted lower-case"),
        ("order..shipped", {}, "dotted lower-case"),
        ("o" * 200, {}, "dotted lower-case"),
        ("order.shipped", {"total": float("nan")}, "JSON cannot carry"),
        ("order.shipped", {"total": float("inf")}, "JSON cannot carry"),
        ("order.shipped", {"note": "a\x00b"}, "NUL"),
        ("order.shipped", {"a\x00": 1}, "NUL"),
        ("order.shipped", {"note": "\ud800"}, "surrogate"),
        ("order.shipped", {"blob": "x" * (MAX_CONTEXT_BYTES + 1)}, "limit is"),
        ("order.shipped", [1, 2], "JSON object"),
        ("order.shipped", {"when": object()}, "context"),
    ],
)
def test_notify_refuses_bad_input_before_publishing(
    engine: Assembly, name: str, context: Any, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        delivery.notify(name, context)
    assert _drain() == []


def test_notify_refuses_deep_nesting(engine: Assembly) -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ValidationError, match="nested more than"):
        delivery.notify("order.shipped", deep)


def test_notify_publishes_one_fanout_task_with_a_derived_id(engine: Assembly) -> None:
    receipt = delivery.notify("order.shipped", {"order": 42}, idempotency_key="order-42")
    again = delivery.notify("order.shipped", {"order": 42}, idempotency_key="order-42")
    other = delivery.notify("order.paid", {"order": 42}, idempotency_key="order-42")
    assert receipt.id == again.id == event_id("order.shipped", "order-42") != other.id
    assert receipt.event == "order.shipped"
    assert isinstance(receipt, delivery.Receipt)
    messages = _drain()
    assert [m["task"] for m in messages] == ["delivery.fanout"] * 3
    assert messages[0]["id"] == receipt.id
    # Flower and task events see the event's name and context keys, not its values
    shown = [{"id": receipt.id, "name": "order.shipped", "context": ["order"]}]
    assert messages[0]["argsrepr"] == repr(shown)
    body = messages[0]["args"][0]
    assert body["name"] == "order.shipped" and body["context"] == {"order": 42}
    assert Event.model_validate(body).id == receipt.id
    assert delivery.notify("order.shipped", {}).id != delivery.notify("order.shipped", {}).id


def test_delivery_notify_stays_the_function_once_the_engine_is_loaded() -> None:
    import delivery.notifications

    assert callable(delivery.notify) and delivery.notify.__module__ == "delivery.producer.events"


def test_the_producer_loads_no_database_or_templates() -> None:
    import subprocess
    import sys

    code = (
        "import sys, delivery; delivery.notify; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'jinja2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- fan-out -------------------------------------------------------------------------------


def test_an_event_makes_one_rendered_delivery_per_subscription(notifier: Notifier) -> None:
    notifier.templates.add(
        "shipped",
        subject="Order {{ order.id }} shipped",
        text="Hello {{ name }}, order {{ order.id }} is on its way.",
        html="<p>Hello {{ name }}</p>",
    )
    mail = notifier.subscriptions.add("order.shipped", "dev", "{{ email }}", template="shipped")
    hook = notifier.subscriptions.add("order.shipped", "hooks", "https://example.com/h")
    notifier.subscriptions.add("order.paid", "dev", "elsewhere")
    event = _event(order={"id": 42}, name="<Ann>", email="ann@example.com")
    result = notifier.fan_out(event, get_publisher())
    assert (result.queued, result.failed, result.skipped) == (2, 0, 0)
    envelopes = _envelopes(_drain())
    assert [(e["channel"], e["address"]) for e in envelopes] == [
        ("dev", "ann@example.com"),
        ("hooks", "https://example.com/h"),
    ]
    rendered = envelopes[0]["payload"]
    assert rendered["subject"] == "Order 42 shipped"
    assert rendered["message"] == "Hello <Ann>, order 42 is on its way."
    assert rendered["html_message"] == "<p>Hello &lt;Ann&gt;</p>"
    assert envelopes[0]["id"] == fanout_delivery_id(event.id, mail.id)
    # without a template: the event and its context, the seed's uniform payload
    assert envelopes[1]["payload"]["message"] == "order.shipped"
    assert envelopes[1]["payload"]["data"] == {
        "event": "order.shipped",
        "event_id": event.id,
        "order": {"id": 42},
        "name": "<Ann>",
        "email": "ann@example.com",
    }
    assert envelopes[1]["id"] == fanout_delivery_id(event.id, hook.id)
    record = notifier.events.get(event.id)
    assert record is not None and record.fanned_out_at is not None
    assert sorted(o.outcome for o, _ in record.deliveries) == ["queued", "queued"]


def test_a_replayed_event_makes_nothing_more(notifier: Notifier) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "a")
    event = _event(order=1)
    assert notifier.fan_out(event, get_publisher()).queued == 1
    assert len(_envelopes(_drain())) == 1
    replay = notifier.fan_out(event, get_publisher())
    assert replay.replayed and _drain() == []


def test_a_fan_out_cut_short_is_redone_with_the_same_ids(notifier: Notifier) -> None:
    notifier.subscriptions.add("order.shipped", "dev", "a")
    event = _event(order=1)
    notifier.fan_out(event, get_publisher())
    first = [e["id"] for e in _envelopes(_drain())]
    with notifier.log.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE events SET fanned_out_at = NULL")
    notifier.fan_out(event, get_publisher())
    assert [e["id"] for e in _envelopes(_drain())] == first


def test_filters_skip_and_say_so(notifier: Notifier) -> None:
    big = notifier.subscriptions.add("order.paid", "dev", "big", filter="total > 100")
    notifier.subscriptions.add("order.paid", "dev", "all")
    event = _event("order.paid", total=50)
    result = notifier.fan_out(event, get_publisher())
    assert (result.queued, result.skipped) == (1, 1)
    assert [e["address"] for e in _envelopes(_drain())] == ["all"]
    record = notifier.events.get(event.id)
    assert record is not None
    skipped = [o for o, _ in record.deliveries if o.subscription_id == big.id]
    assert skipped[0].outcome == "skipped" and "total > 100" in (skipped[0].reason or "")
    assert record.to_json()["deliveries"][0]["delivery_id"] is None or any(
        d["delivery_id"] is None for d in record.to_json()["deliveries"]
    )


def test_a_template_failing_on_the_context_fails_that_delivery_alone(
    notifier: Notifier,
) -> None:
    notifier.templates.add("needs-name", text="Hello {{ name }}")
    bad = notifier.subscriptions.add("order.paid", "dev", "a", template="needs-name")
    bomb = notifier.subscriptions.add("order.paid", "dev", "{{ 'x' * 10**9 }}")
    notifier.subscriptions.add("order.paid", "dev", "fine")
    event = _event("order.paid", total=1)
    result = notifier.fan_out(event, get_publisher())
    assert (result.queued, result.failed) == (1, 2)
    assert [e["address"] for e in _envelopes(_drain())] == ["fine"]
    failed = notifier.log.get(fanout_delivery_id(event.id, bad.id))
    assert failed is not None and failed.status == "failed"
    assert "'name' is undefined" in (failed.last_error or "")
    assert "needs-name" in (failed.last_error or "")
    assert failed.address == "a"  # rendered before the template failed
    exploded = notifier.log.get(fanout_delivery_id(event.id, bomb.id))
    assert exploded is not None and exploded.status == "failed"
    assert "repeating" in (exploded.last_error or "")
    assert exploded.address == "{{ 'x' * 10**9 }}"  # the address itself failed


def test_an_event_without_subscriptions_is_recorded(notifier: Notifier) -> None:
    event = _event("nobody.listens", a=1)
    result = notifier.fan_out(event, get_publisher())
    assert (result.queued, result.failed, result.skipped) == (0, 0, 0)
    record = notifier.events.get(event.id)
    assert record is not None and record.deliveries == [] and record.context == {"a": 1}
    assert json.loads(json.dumps(record.to_json()))["event"] == "nobody.listens"
