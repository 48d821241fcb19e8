import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from pydantic import ValidationError

import delivery
from delivery.errors import PublishError
from delivery.producer.publisher import batches, delivery_id
from schemas import Message, Payload, Settings, get_settings
from tests.support.installs import import_names, run_as_installed


def _drain() -> list[dict[str, Any]]:
    """Every message on the in-memory broker's delivery queue: headers and task args."""
    messages: list[dict[str, Any]] = []
    with Connection("memory://") as conn, conn.SimpleQueue("delivery") as queue:
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return messages
            args, kwargs, _ = message.decode()
            messages.append({"headers": message.headers, "args": args, "kwargs": kwargs})
            message.ack()


@pytest.fixture(autouse=True)
def _empty_queue(settings: Settings) -> None:
    _drain()


def test_send_publishes_the_envelope_by_task_name() -> None:
    receipt = delivery.send(
        "hooks", "https://example.com/h", Payload(message="hi"), idempotency_key="order-42"
    )
    [message] = _drain()
    assert message["headers"]["task"] == "delivery.deliver"
    assert message["headers"]["id"] == receipt.id
    [envelope] = message["args"]
    assert envelope == {
        "schema_version": 1,
        "id": receipt.id,
        "channel": "hooks",
        "address": "https://example.com/h",
        "payload": {"message": "hi", "subject": None, "html_message": None, "data": {}},
        "idempotency_key": "order-42",
        "not_before": None,
        "category": None,
        "traceparent": None,
        "subscription": None,
        "per_recipient": None,
        "owner": None,
        "test": False,
        "expires_at": None,
    }


def test_same_channel_and_key_give_the_same_id() -> None:
    first = delivery.send("hooks", "https://a", {"message": "x"}, idempotency_key="k")
    second = delivery.send("hooks", "https://b", {"message": "y"}, idempotency_key="k")
    other_channel = delivery.send("ops", "https://a", {"message": "x"}, idempotency_key="k")
    assert first.id == second.id == delivery_id("hooks", "k")
    assert other_channel.id != first.id
    no_key = [delivery.send("hooks", "https://a", {"message": "x"}).id for _ in range(2)]
    assert no_key[0] != no_key[1]


def test_send_many_takes_models_and_mappings_and_validates_all_first() -> None:
    good = {"channel": "hooks", "address": "https://a", "payload": {"message": "x"}}
    receipts = delivery.send_many([Message.model_validate(good), good, {**good, "countdown": 5}])
    assert len(receipts) == 3 and len(_drain()) == 3
    with pytest.raises(ValidationError):
        delivery.send_many([good, {**good, "payload": {"subject": "no message"}}])
    assert _drain() == []  # nothing enqueued when one is invalid


def test_send_many_of_nothing_is_nothing() -> None:
    assert delivery.send_many([]) == []


def test_unreachable_broker_raises_a_clear_error_without_the_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DELIVERY_BROKER_URL", "redis://:hunter2@127.0.0.1:1/0")
    monkeypatch.setenv("DELIVERY_PUBLISH_TIMEOUT", "1")
    get_settings.cache_clear()
    with (
        caplog.at_level(logging.DEBUG, logger="delivery.producer.publisher"),
        pytest.raises(PublishError, match="could not publish to the broker") as caught,
    ):
        delivery.send("hooks", "https://a", Payload(message="x"))
    assert "hunter2" not in str(caught.value)
    # One warning for the publish, however many retries (those are at debug level).
    retries = [r for r in caplog.records if "broker unreachable" in r.getMessage()]
    assert len(retries) > 1
    assert [r.levelno for r in retries].count(logging.WARNING) == 1


def test_import_delivery_loads_no_database_or_provider_sdk() -> None:
    probe = (
        "import sys, json, delivery; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", probe])))
    assert not loaded & {
        "sqlalchemy",
        "slack_sdk",
        "twilio",
        "apprise",
        "psycopg",
        "alembic",
        "celery",
    }


#: Sends on the embedded default broker, sends many, notifies, and loads every broker's
#: transport: all a producer-only service does.
_PRODUCER = """
import delivery

message = {"channel": "hooks", "address": "https://a.example", "payload": {"message": "y"}}
delivery.send("hooks", "https://a.example", {"message": "x"})
delivery.send_many([message, message])
delivery.notify("order.shipped", {"order": 1})
import delivery.transport.amqp, delivery.transport.embedded, delivery.transport.redis
import sys
assert not {"workers", "migrations"} & set(sys.modules)  # the producer never loads a worker
"""


def test_the_producer_needs_only_the_base_dependencies(tmp_path: Path) -> None:
    # `pip install delivery` (no extra) must be enough to send, send many and notify on
    # every broker: nothing the producer loads may come from an extra.
    base = import_names()
    assert {"celery", "kombu", "redis", "pydantic", "pydantic_settings"} <= base
    assert not base & {"sqlalchemy", "fastapi", "typer", "requests", "twilio", "jinja2"}
    result = run_as_installed(_PRODUCER, home=tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "broker.sqlite3") as broker:
        [(count,)] = broker.execute("SELECT count(*) FROM message").fetchall()
    assert count >= 3  # the send, the batch (or two) and the event


def test_a_countdown_longer_than_the_broker_may_hold_is_scheduled_from_the_log() -> None:
    short = delivery.send("hooks", "https://a", {"message": "x"}, countdown=5)
    long = delivery.send("hooks", "https://a", {"message": "y"}, countdown=7200)
    by_id = {m["headers"]["id"]: m for m in _drain()}
    # a short wait rides in the broker as an ETA task
    assert by_id[short.id]["headers"]["eta"] is not None
    assert by_id[short.id]["args"][0]["not_before"] is None
    # a long one goes now, carrying the time it may be sent
    assert by_id[long.id]["headers"]["eta"] is None
    assert by_id[long.id]["args"][0]["not_before"] is not None


def test_send_many_batches_deliveries_into_fewer_task_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DELIVERY_BATCH_SIZE", "10")
    monkeypatch.setenv("DELIVERY_WORKER_CONCURRENCY", "2")
    get_settings.cache_clear()
    good = {"channel": "hooks", "address": "https://a", "payload": {"message": "x"}}
    receipts = delivery.send_many([good] * 25 + [{**good, "countdown": 5}])
    messages = _drain()
    batches = [m for m in messages if m["headers"]["task"] == "delivery.deliver_batch"]
    singles = [m for m in messages if m["headers"]["task"] == "delivery.deliver"]
    # 25 due now in 3 batches of 9, 8, 8; the one with a countdown waits in the broker alone
    assert [len(m["args"][0]) for m in batches] == [9, 8, 8]
    assert len(singles) == 1 and singles[0]["headers"]["eta"] is not None
    batched_ids = [e["id"] for m in batches for e in m["args"][0]]
    assert [*batched_ids, singles[0]["args"][0]["id"]] == [r.id for r in receipts]


def test_a_small_send_many_still_spreads_over_the_worker_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DELIVERY_WORKER_CONCURRENCY", "16")
    get_settings.cache_clear()
    good = {"channel": "hooks", "address": "https://a", "payload": {"message": "x"}}
    delivery.send_many([good] * 10)
    assert [m["headers"]["task"] for m in _drain()] == ["delivery.deliver"] * 10


@pytest.mark.parametrize(
    ("count", "size", "spread"),
    [(1, 25, 16), (7, 25, 16), (100, 25, 16), (1000, 25, 4), (51, 5, 1)],
)
def test_batches_cover_every_item_in_order_within_the_size(
    count: int, size: int, spread: int
) -> None:
    items = list(range(count))
    groups = batches(items, size=size, spread=spread)
    assert [i for g in groups for i in g] == items
    assert all(1 <= len(g) <= size for g in groups)
    assert len(groups) >= min(count, spread)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1  # evenly filled
