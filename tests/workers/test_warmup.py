"""The worker's warm-up: it leaves nothing behind and never stops a worker from starting."""

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from delivery.engine.assembly import assemble
from delivery.log.tables import AttemptRow, DeliveryRow, PeriodicJobRow
from schemas import Settings
from tests.conftest import webhook_secret
from workers.warmup import WarmUp, warm_up


def _counts(engine: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        deliveries = conn.execute(select(func.count()).select_from(DeliveryRow)).scalar_one()
        attempts = conn.execute(select(func.count()).select_from(AttemptRow)).scalar_one()
    return deliveries, attempts


def test_warm_up_builds_the_channels_and_leaves_the_log_as_it_was(settings: Settings) -> None:
    # Given a log with a channel and no deliveries
    assembly = assemble(settings)
    assembly.channels.add("hook", "webhook", {"secret": webhook_secret()})
    compiled_before = len(assembly.log.engine._compiled_cache or {})

    # When the worker warms up
    assert warm_up(assembly) is True

    # Then the channel's dispatcher is built, the log's statements are compiled, and the
    # rehearsal's deliveries were rolled back
    assert "hook" in assembly.dispatchers._entries
    assert len(assembly.log.engine._compiled_cache or {}) > compiled_before
    assert _counts(assembly.log.engine) == (0, 0)
    assembly.close()


def test_warm_up_logs_nothing_above_debug_when_all_goes_well(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assembly = assemble(settings)
    with caplog.at_level(logging.INFO):
        warm_up(assembly)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    assembly.close()


def test_a_log_that_is_not_there_yet_does_not_stop_the_worker(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a database the migrations never ran on
    missing = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'new.db'}"})
    assembly = assemble(missing)
    # When the worker warms up, then it goes on, saying why at INFO
    with caplog.at_level(logging.INFO, logger="workers.warmup"):
        warm_up(assembly)
    assert any("skipped" in r.getMessage() for r in caplog.records)
    assembly.close()


def test_the_step_warms_up_once_across_reconnections(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr("workers.warmup.warm_up", lambda assembly, **_: calls.append(assembly))
    monkeypatch.setattr("workers.tasks.get_assembly", lambda: "assembly")
    consumer = type("Consumer", (), {"pool": None})()
    step = WarmUp(consumer)
    step.start(consumer)
    step.start(consumer)  # after a reconnection to the broker
    assert calls == ["assembly"]


def test_the_worker_s_warm_up_takes_the_sweeper_s_first_turns(settings: Settings) -> None:
    from workers import sweeper, tasks

    tasks.close_service()
    consumer = type("Consumer", (), {"pool": None, "hostname": "w@test"})()
    try:
        # When a worker's main process warms up (a threads pool: the sweeper runs there)
        WarmUp(consumer).start(consumer)
        # Then its sweeper has taken the turns that were due, before the first message
        with tasks.get_assembly().log.engine.connect() as conn:
            rows = conn.execute(select(PeriodicJobRow.name, PeriodicJobRow.last_run_by))
            runs = {row.name: row.last_run_by for row in rows}
        assert runs["sweep"] == f"w@test/{os.getpid()}"
        assert {"sweep", "digests", "purge"} <= set(runs)
        # and the thread started when the worker is ready is that same sweeper
        made = sweeper._sweeper
        sweeper._start_sweeping(sender=consumer)
        assert sweeper._sweeper is made
    finally:
        sweeper._stop_sweeping()
        tasks.close_service()
    assert sweeper._sweeper is None
