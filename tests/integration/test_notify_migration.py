"""Migration 0004 (notifications, channel fallbacks) up, down and up again, on SQLite and a
throwaway PostgreSQL."""

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from delivery.log.migrate import alembic_config, upgrade
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.integration

TABLES = {"templates", "subscriptions", "events", "event_deliveries"}


def _check(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
        assert names >= TABLES
        assert "fallback" in {c["name"] for c in inspect(engine).get_columns("channels")}
        command.downgrade(alembic_config(url), "0005")
        engine.dispose()
        assert not set(inspect(engine).get_table_names()) & TABLES
        assert "fallback" not in {c["name"] for c in inspect(engine).get_columns("channels")}
        upgrade(url)
        engine.dispose()
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_on_sqlite(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'log.sqlite3'}")


def test_on_postgresql(postgres_server: PostgresServer) -> None:
    _check(postgres_server.create_database("notify_migration"))
