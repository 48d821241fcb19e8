import base64
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from kombu.transport import memory

from delivery.engine.crypto import generate_key
from delivery.log.database import dispose_engines
from delivery.log.migrate import upgrade
from delivery.producer import reset_publisher
from schemas import Settings, get_settings

# No per-example deadline: on a shared 2-core machine under the whole suite an example may
# take seconds, and a deadline is a timed assertion. Tests that set their own settings
# inherit this.
hypothesis_settings.register_profile("delivery", deadline=None)
hypothesis_settings.load_profile("delivery")

#: A third party's package and its own tests, built and run by tests/integration/test_plugins.py.
collect_ignore = ["fixtures"]


def webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def migrated_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite log migrated to head, once per test process: each test gets a copy, since
    running the migrations costs about 0.6 s a test (minutes over the suite)."""
    path = tmp_path_factory.mktemp("migrated") / "log.sqlite3"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    return path


def copy_log(source: Path, target: Path) -> None:
    """A copy of the SQLite file ``source`` at ``target``, through SQLite's backup API (so a
    write-ahead log is included)."""
    with closing(sqlite3.connect(source)) as original, closing(sqlite3.connect(target)) as copy:
        original.backup(copy)


@pytest.fixture
def settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_log: Path
) -> Iterator[Settings]:
    """Settings for one test: its own home, SQLite log (migrated), key and in-memory broker."""
    home = tmp_path / ".delivery"
    monkeypatch.setenv("DELIVERY_HOME", str(home))
    monkeypatch.setenv("DELIVERY_DATABASE_URL", f"sqlite:///{tmp_path / 'log.sqlite3'}")
    monkeypatch.setenv("DELIVERY_SECRET_KEY", generate_key())
    monkeypatch.setenv("DELIVERY_ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.setenv("DELIVERY_BROKER_URL", "memory://")
    monkeypatch.setenv("DELIVERY_PUBLISH_TIMEOUT", "2")
    get_settings.cache_clear()
    current = get_settings()
    copy_log(migrated_log, tmp_path / "log.sqlite3")
    # The in-memory broker's queues are one per process, shared by the tests it runs (in
    # whatever order pytest-xdist hands them out): each test starts with them empty.
    memory.Channel.queues.clear()
    yield current
    dispose_engines()
    get_settings.cache_clear()
    reset_publisher()
