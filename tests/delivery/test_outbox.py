"""The transactional outbox on SQLite: rows in the caller's transaction, and the relay."""

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from delivery.cli import app
from delivery.cli import outbox as _outbox_command  # noqa: F401 - registers it
from delivery.errors import PublishError
from delivery.outbox import Relay, outbox_table, send, send_many
from delivery.producer.publisher import Outgoing, delivery_id
from delivery.producer.recipients import recipient_id
from schemas import Envelope, Message, Payload, Settings
from tests.support.installs import run_as_installed

metadata = MetaData()
orders = Table("orders", metadata, Column("id", Integer, primary_key=True), Column("email", String))
outbox = outbox_table(metadata)


class FakePublisher:
    """Takes what the relay publishes; fails while ``down`` is set."""

    def __init__(self) -> None:
        self.published: list[Outgoing] = []
        self.down = False
        self.tries = 0

    def publish_envelopes(self, outgoing: Sequence[Outgoing], *, batch: bool = False) -> None:
        self.tries += 1
        if self.down:
            raise PublishError("could not publish to the broker at redis://h: unreachable")
        assert batch
        self.published.extend(outgoing)

    @property
    def ids(self) -> list[str]:
        return [envelope.id for envelope, _ in self.published]


@pytest.fixture
def engine(tmp_path: Path, settings: Settings) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(select(outbox.c.id, outbox.c.delivery_id))]


def _order(session: Session, number: int) -> str:
    session.execute(insert(orders).values(id=number, email=f"c{number}@example.com"))
    receipt = send(
        session, "orders-email", f"c{number}@example.com", {"message": f"Order {number}"}
    )
    return receipt.id


def test_outbox_table_is_added_once_to_the_applications_metadata() -> None:
    assert outbox_table(metadata) is outbox
    assert metadata.tables["delivery_outbox"] is outbox
    assert [c.name for c in outbox.columns] == [
        "id", "delivery_id", "envelope", "countdown", "created_at",
    ]  # fmt: skip


def test_a_send_is_a_row_in_the_callers_transaction(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        receipt = send(
            session, "orders-email", "a@example.com", Payload(message="hi"), category="billing"
        )
        # Not visible to anyone else before the commit
        assert _rows(engine) == []
    [(_, stored_id)] = _rows(engine)
    assert stored_id == receipt.id
    with engine.connect() as connection:
        raw = connection.execute(select(outbox.c.envelope)).scalar_one()
    envelope = Envelope.model_validate_json(raw)
    assert (envelope.id, envelope.channel, envelope.address) == (
        receipt.id, "orders-email", "a@example.com",
    )  # fmt: skip
    assert envelope.category == "billing"


def test_a_rollback_leaves_no_row(engine: Engine) -> None:
    with Session(engine) as session:
        _order(session, 1)
        session.rollback()
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        _order(session, 2)
        raise RuntimeError("the application changed its mind")
    assert _rows(engine) == []


def test_invalid_input_raises_at_the_call_and_adds_nothing(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        with pytest.raises(ValidationError, match="channel"):
            send(session, "not a channel!", "a@example.com", {"message": "x"})
        with pytest.raises(ValidationError, match="ttl"):
            send(session, "hooks", "a@example.com", {"message": "x"}, ttl=-1)
        with pytest.raises(ValidationError):
            send_many(session, [{"channel": "hooks", "address": "a", "payload": {}}])
        # One bad message in a batch: none of the batch is added
        with pytest.raises(ValidationError):
            send_many(
                session,
                [
                    {"channel": "hooks", "address": "a", "payload": {"message": "ok"}},
                    {"channel": "hooks", "address": "", "payload": {"message": "x"}},
                ],
            )
    assert _rows(engine) == []


def test_ids_are_fixed_at_the_call_as_delivery_send_derives_them(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        keyed = send(session, "hooks", "a@example.com", {"message": "x"}, idempotency_key="k1")
        several = send(session, "hooks", ["a@x.com", "b@x.com", "a@x.com"], {"message": "x"},
                       idempotency_key="k2")  # fmt: skip
        unkeyed = send(session, "hooks", "a@example.com", {"message": "x"})
    assert keyed.id == delivery_id("hooks", "k1")
    assert [r.id for r in several] == [
        recipient_id("hooks", "k2", "a@x.com"), recipient_id("hooks", "k2", "b@x.com"),
    ]  # fmt: skip
    # Without a key the id is random, but fixed now: the row carries it to every publish
    assert [d for _, d in _rows(engine)] == [keyed.id, *(r.id for r in several), unkeyed.id]


def test_send_many_adds_one_row_per_delivery_and_takes_a_connection(engine: Engine) -> None:
    messages: list[Message | dict[str, Any]] = [
        Message(channel="hooks", address="a@example.com", payload=Payload(message="1")),
        {"channel": "hooks", "address": ["b@x.com", "c@x.com"], "payload": {"message": "2"}},
    ]
    with engine.begin() as connection:
        receipts = send_many(connection, messages)
        assert send_many(connection, []) == []
    assert [d for _, d in _rows(engine)] == [r.id for r in receipts]
    assert len(receipts) == 3


def test_the_relay_publishes_committed_rows_in_order_and_deletes_them(engine: Engine) -> None:
    ids = []
    for number in range(7):
        with Session(engine) as session, session.begin():
            ids.append(_order(session, number))
    publisher = FakePublisher()
    relay = Relay(engine, publisher, batch=3)
    assert relay.relay_once() == 3
    assert publisher.ids == ids[:3]
    assert [d for _, d in _rows(engine)] == ids[3:]
    assert relay.drain() == 4
    assert publisher.ids == ids
    assert _rows(engine) == []
    assert relay.drain() == 0


def test_a_broker_error_leaves_the_rows_for_the_next_try(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        ids = [_order(session, n) for n in range(3)]
    publisher = FakePublisher()
    publisher.down = True
    relay = Relay(engine, publisher)
    with pytest.raises(PublishError):
        relay.drain()
    assert [d for _, d in _rows(engine)] == ids
    publisher.down = False
    assert relay.drain() == 3
    assert publisher.ids == ids


def test_the_relay_keeps_going_while_the_broker_is_away(engine: Engine) -> None:
    import threading

    with Session(engine) as session, session.begin():
        [wanted] = [_order(session, 1)]
    publisher = FakePublisher()
    publisher.down = True
    stop = threading.Event()
    thread = threading.Thread(target=Relay(engine, publisher).run, args=(stop,),
                              kwargs={"interval": 0.01})  # fmt: skip
    thread.start()
    try:
        # It tries, fails, and tries again later
        for _ in range(200):
            if publisher.tries >= 3:
                break
            stop.wait(0.05)
        assert publisher.tries >= 3 and _rows(engine)
        # Until the broker is back
        publisher.down = False
        for _ in range(200):
            if not _rows(engine):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert publisher.ids == [wanted]


def test_countdowns_count_from_the_send(engine: Engine, settings: Settings) -> None:
    with Session(engine) as session, session.begin():
        short = send(session, "hooks", "a@x.com", {"message": "x"}, countdown=60)
        long = send(session, "hooks", "b@x.com", {"message": "x"}, countdown=86_400)
    # The application's commit and the relay come 20 s after the send
    with engine.begin() as connection:
        connection.execute(
            outbox.update().values(created_at=datetime.now(UTC) - timedelta(seconds=20))
        )
    publisher = FakePublisher()
    Relay(engine, publisher).drain()
    (first, first_wait), (second, second_wait) = publisher.published
    assert first.id == short.id and first_wait is not None and 35 < first_wait <= 40
    # Too long for the broker: it waits in the log, from the time of the send
    assert second.id == long.id and second_wait is None and second.not_before is not None


def test_a_row_that_is_no_task_message_stays_is_said_once_and_blocks_nothing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with Session(engine) as session, session.begin():
        first = _order(session, 1)
    with engine.begin() as connection:
        connection.execute(
            insert(outbox).values(delivery_id="x", envelope="{}", created_at=datetime.now(UTC))
        )
    with Session(engine) as session, session.begin():
        last = _order(session, 2)
    publisher = FakePublisher()
    relay = Relay(engine, publisher, batch=2)
    with caplog.at_level(logging.ERROR):
        assert relay.drain() == 2
        assert relay.drain() == 0
    assert publisher.ids == [first, last]
    # Left for a relay that can read it (a newer version), said once
    assert [delivery_id for _, delivery_id in _rows(engine)] == ["x"]
    assert caplog.text.count("delivery x") == 1 and "left in place" in caplog.text


def test_the_command_relays_once_and_never_echoes_the_password(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session, session.begin():
        _order(session, 1)
    runner = CliRunner()
    result = runner.invoke(app, ["outbox", "relay", "--once", "--database-url", str(engine.url)])
    assert result.exit_code == 0, result.output
    assert "relayed 1 deliveries" in result.output
    assert _rows(engine) == []
    bad = runner.invoke(app, ["outbox", "relay", "--database-url", "nosuch://u:hunter22@h/db"])
    assert bad.exit_code == 2
    assert "--database-url" in bad.output and "hunter22" not in bad.output
    away = runner.invoke(
        app, ["outbox", "relay", "--once", "--database-url",
              "postgresql+psycopg://u:hunter22@127.0.0.1:1/db"],
    )  # fmt: skip
    assert away.exit_code == 1
    assert "u:***@127.0.0.1:1" in away.output and "hunter22" not in away.output


def test_a_table_that_is_missing_is_named(tmp_path: Path, settings: Settings) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    result = CliRunner().invoke(app, ["outbox", "relay", "--once", "--database-url", url])
    assert result.exit_code == 1
    assert "delivery_outbox" in result.output


def test_the_outbox_on_a_base_install_names_its_extra(tmp_path: Path) -> None:
    result = run_as_installed("import delivery.outbox", home=tmp_path)
    assert result.returncode == 1
    assert "pip install 'delivery[outbox]'" in result.stderr


def test_the_outbox_extra_is_enough_to_send_into_the_outbox(tmp_path: Path) -> None:
    script = f"""
import delivery, sys
from sqlalchemy import MetaData, create_engine, text
from delivery.outbox import outbox_table, send
metadata = MetaData()
outbox_table(metadata)
engine = create_engine("sqlite:///{tmp_path / "app.sqlite3"}")
metadata.create_all(engine)
with engine.begin() as connection:
    send(connection, "hooks", "a@example.com", {{"message": "x"}})
with engine.connect() as connection:
    assert connection.execute(text("select count(*) from delivery_outbox")).scalar() == 1
assert not {{"workers", "typer", "celery"}} & set(sys.modules)
"""
    result = run_as_installed(script, "outbox", home=tmp_path)
    assert result.returncode == 0, result.stderr


def test_sqlite_ids_rise(engine: Engine) -> None:
    with engine.begin() as connection:
        sql = connection.execute(
            text("select sql from sqlite_master where name = 'delivery_outbox'")
        ).scalar_one()
    assert "INTEGER NOT NULL" in sql and "PRIMARY KEY (id)" in sql


def test_a_worker_relays_each_listed_database_and_names_none_by_its_password(
    engine: Engine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from workers.outbox import OutboxRelays

    listed = settings.model_copy(
        update={"outbox_urls": (str(engine.url), "nosuch://app:hunter22@h/db")}
    )
    relays = OutboxRelays(listed)
    with caplog.at_level(logging.INFO):
        relays.start()
    try:
        with Session(engine) as session, session.begin():
            _order(session, 1)
        for _ in range(200):
            if not _rows(engine):
                break
            time.sleep(0.05)
    finally:
        relays.stop()
    assert _rows(engine) == []
    assert "DELIVERY_OUTBOX_URLS entry 2 cannot be used" in caplog.text
    assert "hunter22" not in caplog.text


def test_the_command_lines_errors_mask_outbox_url_passwords(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from delivery.cli import _scrubbed

    monkeypatch.setenv(
        "DELIVERY_OUTBOX_URLS", "sqlite:///a.db, postgresql+psycopg://app:hunter22@db/shop"
    )
    assert "hunter22" not in _scrubbed("failed: postgresql+psycopg://app:hunter22@db/shop")
