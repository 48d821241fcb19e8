"""Retention: `delivery db purge` removes only old, final deliveries with every row keyed
to them, in batches; the counts (`/metrics`, `delivery stats`) never go down."""

import json
import logging
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from typer.testing import CliRunner

from delivery.cli import admin, app  # noqa: F401 - registers the commands
from delivery.clock import utcnow
from delivery.log import DeliveryLog
from delivery.log.counts import BEFORE, DAILY_FOR, Counter, CountRow, Tally, compact, totals
from delivery.log.inbound import ReceiptRow
from delivery.log.tables import AttemptRow, ChannelRow, Outcome, RecipientSendRow, Status
from delivery.retention import DailyPurge, Retention
from schemas import Settings
from tests.support.recording import finish
from tests.support.seeding import seed
from workers.sweeper import Sweeper

runner = CliRunner()


@pytest.fixture
def log(settings: Settings) -> DeliveryLog:
    log = DeliveryLog.from_settings(settings)
    now = utcnow()
    with log.engine.begin() as connection:
        connection.execute(
            insert(ChannelRow).values(
                name="hooks", dispatcher="webhook", config={}, created_at=now, updated_at=now
            )
        )
    return log


def rows(log: DeliveryLog, table: Any) -> int:
    with log.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)


def statuses(log: DeliveryLog) -> dict[str, int]:
    return log.count_by_status()


def counted(log: DeliveryLog) -> Any:
    with log.engine.connect() as connection:
        return totals(connection)


def an_old_log(log: DeliveryLog) -> dict[str, list[str]]:
    """40 days ago: 5 delivered, 5 failed, 5 still retrying, 5 still sending; and 5 delivered
    today. Every old delivered one has a receipt and a throttle row."""
    old = utcnow() - timedelta(days=40)
    made = {
        "old_final": seed(log, 10, at=old, outcomes=(Outcome.DELIVERED, Outcome.FAILED)),
        "old_waiting": seed(log, 5, at=old, outcomes=(Outcome.RETRY,), prefix="retrying")
        + seed(log, 5, at=old, outcomes=(None,), prefix="sending"),
        "young": seed(log, 5, prefix="young"),
    }
    with log.engine.begin() as connection:
        for n, delivery_id in enumerate(made["old_final"] + made["young"]):
            connection.execute(
                insert(ReceiptRow).values(
                    channel="hooks", delivery_id=delivery_id, provider_ref=f"ref-{n}",
                    status="confirmed", provider_status="delivered", received_at=old,
                )
            )  # fmt: skip
            connection.execute(
                insert(RecipientSendRow).values(
                    throttle="channel:hooks", address="a" * 64, delivery_id=delivery_id,
                    sent_at=old,
                )
            )  # fmt: skip
    return made


def test_a_purge_removes_only_old_final_deliveries_with_their_rows(log: DeliveryLog) -> None:
    # Given a log with old and young deliveries, ended and not
    made = an_old_log(log)
    before = counted(log)

    # When the deliveries older than 30 days are purged, three to a transaction
    report = Retention(log.engine).purge(older_than=30, batch=3, pause=0)

    # Then the old final ones went, with their attempts, receipts and throttle rows
    assert report.deliveries == 10 and report.batches == 4
    assert report.rows["attempts"] == 10
    assert report.rows["receipts"] == 10
    assert report.rows["recipient_sends"] == 10
    for delivery_id in made["old_final"]:
        assert log.get(delivery_id) is None
    # and nothing young or not yet ended did
    for delivery_id in made["old_waiting"] + made["young"]:
        assert log.get(delivery_id) is not None
    assert statuses(log) == {"retrying": 5, "sending": 5, "delivered": 5}
    assert rows(log, AttemptRow) == 5 + 5  # the retrying ones' and the young ones'
    assert rows(log, ReceiptRow) == 5 and rows(log, RecipientSendRow) == 5
    # and the counts are as they were: no counter goes down
    after = counted(log)
    assert after == before
    assert after.ended[("hooks", "delivered")] == 10
    assert after.ended[("hooks", "failed")] == 5
    assert after.attempt_count("retry") == 5

    # And a second purge finds nothing more
    assert Retention(log.engine).purge(older_than=30, pause=0).deliveries == 0


def test_a_dry_run_counts_and_changes_nothing(log: DeliveryLog) -> None:
    an_old_log(log)
    before = statuses(log), rows(log, AttemptRow), rows(log, ReceiptRow)

    report = Retention(log.engine).purge(older_than=30, dry_run=True, batch=4)

    assert report.dry_run and report.deliveries == 10
    assert report.rows["attempts"] == 10 and report.rows["receipts"] == 10
    assert (statuses(log), rows(log, AttemptRow), rows(log, ReceiptRow)) == before


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_command_purges_and_answers_in_json(settings: Settings, log: DeliveryLog) -> None:
    an_old_log(log)

    code, out, _ = run("db", "purge", "--older-than", "30", "--dry-run", "--json")
    assert code == 0
    dry = json.loads(out)
    assert dry["dry_run"] is True and dry["deliveries"] == 10 and statuses(log)["failed"] == 5
    assert set(dry) == {"older_than_days", "cutoff", "dry_run", "deliveries", "rows", "batches"}

    code, out, _ = run("db", "purge", "--json")  # DELIVERY_RETENTION_DAYS: 30 by default
    assert code == 0
    done = json.loads(out)
    assert done["dry_run"] is False and done["older_than_days"] == 30
    assert done["rows"] == {**dry["rows"], "deliveries": 10}
    assert "failed" not in statuses(log)

    code, out, _ = run("db", "purge")
    assert code == 0 and "purged 0 deliveries" in out


@pytest.mark.parametrize("days", ["-1", "nan", "inf", "soon"])
def test_a_bad_older_than_is_refused(settings: Settings, days: str) -> None:
    code, _, err = run("db", "purge", "--older-than", days)
    assert code == 2 and "--older-than" in err


def test_a_retention_of_zero_keeps_everything_unless_asked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from schemas import get_settings

    monkeypatch.setenv("DELIVERY_RETENTION_DAYS", "0")
    get_settings.cache_clear()
    code, _, err = run("db", "purge")
    assert code == 2 and "--older-than" in err


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "a month"])
def test_a_bad_retention_setting_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from pydantic import ValidationError

    from schemas.settings import describe

    monkeypatch.setenv("DELIVERY_RETENTION_DAYS", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert describe(refused.value).startswith("DELIVERY_RETENTION_DAYS: ")


def test_stats_reads_the_counts_which_survive_purging(settings: Settings, log: DeliveryLog) -> None:
    an_old_log(log)
    code, out, _ = run("stats", "--json")
    assert code == 0
    before = json.loads(out)
    assert before["ended"] == {"hooks": {"delivered": 10, "failed": 5}}
    assert before["waiting"] == {"hooks": {"retrying": 5, "sending": 5}}
    assert before["attempts"] == {"delivered": 10, "failed": 5, "retry": 5}

    Retention(log.engine).purge(older_than=30, pause=0)

    code, out, _ = run("stats", "--json")
    assert json.loads(out) == before


def test_compaction_folds_shards_and_old_days_and_keeps_the_sums(log: DeliveryLog) -> None:
    # Given counts added over 20 days, in many shards
    counter = Counter(log._insert)
    today = date(2026, 12, 7)
    with log.engine.begin() as connection:
        for days_ago in range(20):
            for shard in range(4):
                tally = Tally()
                tally.ended("hooks", Status.DELIVERED)
                tally.attempt(Outcome.DELIVERED, 30.0)
                tally.attempt(Outcome.RETRY, 4000.0)
                counter.add_rows(
                    connection, today - timedelta(days=days_ago), tally.counts, tally.total_ms,
                    shard=shard,
                )  # fmt: skip
        before = totals(connection)
    assert rows(log, CountRow) == 20 * 4 * 3

    # When the counts are compacted
    with log.engine.begin() as connection:
        done = compact(counter, connection, today=today)

    # Then the sums are the same
    with log.engine.begin() as connection:
        assert totals(connection) == before
        days = sorted(connection.execute(select(CountRow.day, CountRow.shard).distinct()).all())
    assert before.ended[("hooks", "delivered")] == 80
    assert before.attempt_ms["retry"] == 80 * 4000.0
    # and today's and yesterday's shards are as they were (batches may still add to them),
    # the days before one row per key each for a week, and older days folded into one
    daily = {today - timedelta(days=n) for n in range(2, DAILY_FOR + 1)}
    assert {d for d, _ in days} == {today, today - timedelta(days=1), BEFORE} | daily
    assert {s for d, s in days if d in daily | {BEFORE}} == {0}
    assert rows(log, CountRow) == 2 * 4 * 3 + (len(daily) + 1) * 3
    # (each daily day's shard 0 stays where it is)
    assert done.removed == 18 * 4 * 3 - len(daily) * 3

    # And compacting again changes nothing
    with log.engine.begin() as connection:
        assert compact(counter, connection, today=today).removed == 0
        assert totals(connection) == before


def test_made_up_channels_are_one_label_and_fold_into_one_row(log: DeliveryLog) -> None:
    # Given malformed messages naming channels nobody configured, three days ago
    three_days_ago = utcnow() - timedelta(days=3)
    for n in range(5):
        log.reject(f"bad-{n}", channel=f"made-up-{n}", address="a", reason="no such channel")
    log.cancel("never-seen")
    with log.engine.begin() as connection:
        connection.execute(update(CountRow).values(day=three_days_ago.date()))
    # Then they count as one channel, "-", beside the configured ones
    with log.engine.connect() as connection:
        assert totals(connection, channels={"hooks"}).ended == {
            ("-", "failed"): 5,
            ("-", "cancelled"): 1,
        }
    # And compaction folds their rows into it too
    Retention(log.engine).compact_counts()
    with log.engine.connect() as connection:
        assert set(connection.scalars(select(CountRow.channel))) == {"-"}
        assert totals(connection).ended == {("-", "failed"): 5, ("-", "cancelled"): 1}


def test_a_lost_lease_is_not_counted_twice(log: DeliveryLog) -> None:
    from tests.delivery.test_log import envelope, result

    # Given a delivery whose first worker lost its lease to a second one
    stale = log.claim(envelope("lost"), lease=60, now=utcnow() - timedelta(minutes=5))
    fresh = log.claim(envelope("lost"), lease=60)
    # When both record a final outcome
    assert not finish(log, stale, result(Outcome.FAILED), dispatcher=None, worker="a")
    assert finish(log, fresh, result(Outcome.DELIVERED), dispatcher=None, worker="b")
    # Then the delivery ended once; every attempt recorded is counted
    now = counted(log)
    assert now.ended == {("hooks", "delivered"): 1}
    assert now.attempt_count("failed") == 1 and now.attempt_count("delivered") == 1
    # the takeover marked the first attempt interrupted, and counted that as it happened
    # (the late worker's own outcome then replaced the mark in the log, and is counted too)
    assert now.attempt_count("interrupted") == 1


def test_cancelled_and_rejected_deliveries_are_counted(log: DeliveryLog) -> None:
    log.cancel("never-seen")
    log.reject("bad", channel="hooks", address="a", reason="malformed")
    log.reject("bad", channel="hooks", address="a", reason="malformed again")
    assert counted(log).ended == {("-", "cancelled"): 1, ("hooks", "failed"): 1}


class Broken(DeliveryLog):
    def take_turn(self, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("a bug")


def test_the_daily_purge_takes_its_turn_once_and_never_stops_the_sweeper(
    settings: Settings, log: DeliveryLog, caplog: pytest.LogCaptureFixture
) -> None:
    made = an_old_log(log)
    # Two workers look: one takes the day's turn and purges in the background
    first = DailyPurge(log, settings, worker="w1")
    second = DailyPurge(log, settings, worker="w2")
    assert first.look() and not second.look()
    first.join(timeout=60)
    assert not first.running and log.get(made["old_final"][0]) is None
    assert not first.look()  # not again today

    # A purge that fails is logged, and the sweeper's thread goes on
    sweeper = Sweeper(Broken(log.engine), settings, worker="w3")
    with caplog.at_level(logging.ERROR):
        assert sweeper.look_at_purge() is False
    assert "purge" in caplog.text

    failing = DailyPurge(log, settings, worker="w4")
    failing.settings = settings.model_copy(update={"retention_days": float("nan")})
    failing.run()  # raises nothing


def test_the_purge_deletes_from_every_table_indexed_by_delivery() -> None:
    from delivery.retention.purge import keyed_to_deliveries

    tables = {column.table.name for column in keyed_to_deliveries()}
    assert {"attempts", "receipts", "recipient_sends", "event_deliveries", "digest_items"} <= tables
    # the receipt look-ups' cursor names a delivery, but belongs to its channel: it stays
    assert "receipt_lookups" not in tables
