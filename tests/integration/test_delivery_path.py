"""The whole path with real parts: producer → redis-server → worker process → receiver → log."""

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

import delivery
from delivery.producer.publisher import get_publisher
from schemas import Envelope, Message, Payload
from tests.conftest import webhook_secret
from tests.integration.conftest import Stack
from tests.support.receiver import Answer, Receiver

pytestmark = pytest.mark.integration


def _webhook_channel(
    stack: Stack, name: str = "hooks", schedule: tuple[float, ...] | None = None
) -> str:
    secret = webhook_secret()
    stack.channels.add(name, "webhook", {"secret": secret, "timeout": 5}, retry_schedule=schedule)
    return secret


def _send_to(receiver: Receiver, path: str, count: int, *, channel: str = "hooks") -> list[str]:
    receipts = delivery.send_many(
        Message(
            channel=channel,
            address=receiver.url(path),
            payload=Payload(message=f"m{i}", data={"i": i}),
        )
        for i in range(count)
    )
    return [r.id for r in receipts]


def test_webhooks_are_signed_delivered_and_logged(redis_stack: Stack) -> None:
    # Given a webhook channel and a receiver that checks Standard Webhooks signatures
    secret = _webhook_channel(redis_stack)
    redis_stack.worker()
    with Receiver(secret) as receiver:
        # When a service sends a batch
        ids = _send_to(receiver, "/ok", 40)
        counts = redis_stack.wait_until(ids, {"delivered"})
        got = receiver.wait_for(40, "/ok")
    # Then every one arrived once, verified, identified by its delivery id
    assert counts == {"delivered": 40}
    assert all(r.verified for r in got)
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(ids)
    # and the body is the payload only: no channel config, no secret
    body = got[0].json()
    assert set(body) == {"message", "subject", "html_message", "data"}
    assert secret.removeprefix("whsec_") not in got[0].body.decode()
    record = redis_stack.log.get(ids[0])
    assert record is not None
    assert [(a.number, a.outcome, a.status_code) for a in record.attempts] == [
        (1, "delivered", 204)
    ]
    assert record.dispatcher == "webhook"


def test_error_classes_are_retried_or_failed(redis_stack: Stack) -> None:
    secret = _webhook_channel(redis_stack, schedule=(0, 0.3, 0.3))
    redis_stack.worker()
    with Receiver(secret) as receiver:
        receiver.script("/flaky", Answer(503))
        receiver.script("/limited", Answer(429, {"Retry-After": "2"}))
        receiver.script("/bad", Answer(400))
        receiver.script("/down", *[Answer(503)] * 10)
        flaky, limited, bad, down = (
            _send_to(receiver, p, 1)[0] for p in ("/flaky", "/limited", "/bad", "/down")
        )
        redis_stack.wait_until([flaky, limited, bad, down], {"delivered", "failed"}, timeout=60)

    def attempts(delivery_id: str) -> list[tuple[str, int | None]]:
        record = redis_stack.log.get(delivery_id)
        assert record is not None
        return [(a.outcome, a.status_code) for a in record.attempts]

    # 503: retried, then delivered
    assert attempts(flaky) == [("retry", 503), ("delivered", 204)]
    # 429: Retry-After honoured (the second attempt waited at least the 2 s asked for)
    limited_record = redis_stack.log.get(limited)
    assert limited_record is not None
    assert [(a.outcome, a.status_code) for a in limited_record.attempts] == [
        ("retry", 429),
        ("delivered", 204),
    ]
    first, second = limited_record.attempts
    assert second.started_at - first.started_at >= timedelta(seconds=1.9)
    # 400: permanent at once
    assert attempts(bad) == [("failed", 400)]
    # always 503: the schedule's three attempts, then failed with the last error
    down_record = redis_stack.log.get(down)
    assert down_record is not None
    assert down_record.status == "failed"
    assert [a.outcome for a in down_record.attempts] == ["retry", "retry", "failed"]
    assert down_record.last_error is not None and "503" in down_record.last_error


def test_malformed_messages_are_recorded_and_the_worker_goes_on(redis_stack: Stack) -> None:
    secret = _webhook_channel(redis_stack)
    redis_stack.worker()
    app = get_publisher().app
    # A task message with a bad shape, one for an unknown channel, and garbage arguments
    app.send_task("delivery.deliver", args=[{"id": "bad-shape", "channel": "hooks"}])
    unknown = delivery.send("no-such-channel", "http://127.0.0.1:9/x", Payload(message="hi")).id
    app.send_task("delivery.deliver", args=["not a dict"], kwargs={"surprise": 1})
    with Receiver(secret) as receiver:
        good = _send_to(receiver, "/ok", 1)
        redis_stack.wait_until(good, {"delivered"})
    redis_stack.wait_until(["bad-shape", unknown], {"failed"})
    bad_shape = redis_stack.log.get("bad-shape")
    assert bad_shape is not None and bad_shape.last_error is not None
    assert "malformed task message" in bad_shape.last_error and "address" in bad_shape.last_error
    unknown_record = redis_stack.log.get(unknown)
    assert unknown_record is not None and unknown_record.last_error is not None
    assert "no channel named 'no-such-channel'" in unknown_record.last_error
    assert len(unknown_record.attempts) == 1  # never retried
    assert "rejected task message" in redis_stack.workers[0].output()


def test_a_batch_survives_bad_entries_and_a_failing_provider(redis_stack: Stack) -> None:
    # Given a batch task message (what send_many publishes) holding a malformed entry and
    # a delivery whose provider fails once
    secret = _webhook_channel(redis_stack, schedule=(0, 1, 1))
    redis_stack.worker()
    with Receiver(secret) as receiver:
        receiver.script("/flaky", Answer(503))

        def entry(delivery_id: str, path: str) -> dict[str, object]:
            return Envelope(
                id=delivery_id, channel="hooks", address=receiver.url(path),
                payload=Payload(message=delivery_id),
            ).model_dump(mode="json")  # fmt: skip

        batch = [
            entry("first", "/ok"),
            {"id": "bad-in-batch", "channel": "hooks"},
            entry("flaky", "/flaky"),
            entry("after-flaky", "/flaky"),
            entry("last", "/ok"),
        ]
        get_publisher().app.send_task("delivery.deliver_batch", args=[batch])
        ids = ["first", "flaky", "after-flaky", "last"]
        # Then the malformed entry is failed on its own, and everything else is delivered:
        # the failure and the one behind it on the same channel as tasks of their own
        counts = redis_stack.wait_until([*ids, "bad-in-batch"], {"delivered", "failed"})
        assert counts == {"delivered": 4, "failed": 1}
        assert receiver.count_by_id() == {"first": 1, "flaky": 2, "after-flaky": 1, "last": 1}
    flaky = redis_stack.log.get("flaky")
    assert flaky is not None and [a.outcome for a in flaky.attempts] == ["retry", "delivered"]
    after = redis_stack.log.get("after-flaky")
    assert after is not None and [(a.number, a.outcome) for a in after.attempts] == [
        (1, "delivered")  # handed back unspent, not counted as a failed attempt
    ]
    bad = redis_stack.log.get("bad-in-batch")
    assert bad is not None and "malformed task message" in (bad.last_error or "")


def test_same_idempotency_key_delivers_once_on_postgres(postgres_stack: Stack) -> None:
    # Two worker processes and the log on PostgreSQL, where concurrent claims really race
    secret = _webhook_channel(postgres_stack)
    postgres_stack.worker("--concurrency", "8")
    postgres_stack.worker("--concurrency", "8")
    with Receiver(secret) as receiver:
        message = Message(
            channel="hooks",
            address=receiver.url("/once"),
            payload=Payload(message="order shipped"),
            idempotency_key="order-42",
        )
        receipts = delivery.send_many([message] * 30)
        others = _send_to(receiver, "/many", 60)
        assert len({r.id for r in receipts}) == 1
        postgres_stack.wait_until([receipts[0].id, *others], {"delivered"})
        receiver.wait_for(60, "/many")
        once = receiver.requests_to("/once")
    assert len(once) == 1
    record = postgres_stack.log.get(receipts[0].id)
    assert record is not None and len(record.attempts) == 1


def test_cli_reads_the_log(redis_stack: Stack) -> None:
    secret = _webhook_channel(redis_stack)
    redis_stack.worker()
    with Receiver(secret) as receiver:
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "delivery",
                "send",
                "hooks",
                receiver.url("/cli"),
                "hello",
                "--subject",
                "Hi",
                "--idempotency-key",
                "cli-1",
            ],
            env=redis_stack.env,
            capture_output=True,
            text=True,
            check=True,
        )
        delivery_id = sent.stdout.strip()
        redis_stack.wait_until([delivery_id], {"delivered"})
    status = subprocess.run(
        [sys.executable, "-m", "delivery", "status", delivery_id, "--json"],
        env=redis_stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(status.stdout)
    assert doc["status"] == "delivered"
    assert doc["attempts"][0]["status_code"] == 204
    assert doc["payload"]["subject"] == "Hi"
    log = subprocess.run(
        [sys.executable, "-m", "delivery", "log", "--json", "--channel", "hooks"],
        env=redis_stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [d["id"] for d in json.loads(log.stdout)["deliveries"]] == [delivery_id]


def test_db_upgrade_command_on_postgresql(postgres_server, tmp_path) -> None:
    url = postgres_server.create_database("cli_upgrade")
    env = {**os.environ, "DELIVERY_DATABASE_URL": url, "DELIVERY_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "delivery", "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        assert {"deliveries", "attempts", "channels", "alembic_version"} <= set(
            inspect(engine).get_table_names()
        )
        from delivery.log.migrate import is_current

        assert is_current(engine)
    finally:
        engine.dispose()
