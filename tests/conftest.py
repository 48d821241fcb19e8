import base64
import os
import secrets
import sqlite3
import sys
from collections.abc import Generator, Iterator
from contextlib import closing
from itertools import zip_longest
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from kombu.transport import memory

from delivery import collector
from delivery.engine.crypto import generate_key
from delivery.log.database import dispose_engines
from delivery.log.migrate import upgrade
from delivery.producer import reset_publisher
from schemas import Settings, get_settings

# Machines that set PYTHONDONTWRITEBYTECODE (this one, CI) would have every worker and CLI
# subprocess the tests start compile the project from source, and every pytest-xdist process
# rewrite every test module's assertions again: the caches are git-ignored, so keep them.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# No per-example deadline: on a shared 2-core machine under the whole suite an example may
# take seconds, and a deadline is a timed assertion. Tests that set their own settings
# inherit this.
hypothesis_settings.register_profile("delivery", deadline=None)
hypothesis_settings.load_profile("delivery")

#: A third party's package and its own tests, built and run by tests/integration/test_plugins.py.
collect_ignore = ["fixtures"]

#: The modules with the longest tests (up to a minute or so each on 2 shared cores), longest
#: first, in two kinds: those that mostly wait (for leases to run out, a broker to come
#: back, a worker to be replaced) and those that keep a core busy. Only the order changes:
#: they start first, one of each kind in turn, then the rest of the integration tier, then
#: the unit tier. Under pytest-xdist (``--maxschedchunk 1``: each process takes the next
#: test when it is free) the waiting tests then leave their cores to busy ones instead of
#: all waiting at once, and the run ends on short tests, not on one long one with the
#: other processes idle.
LONGEST_WAITING = (
    "tests/integration/test_amqp_broker.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_machines.py",
    "tests/integration/test_embedded_broker.py",
    "tests/integration/test_reliability.py",
)
LONGEST_BUSY = (
    "tests/bench/test_bench_smoke.py",
    "tests/api/test_openapi.py",
    "tests/integration/test_cli_subprocess.py",
    "tests/integration/test_outbox.py",
    "tests/integration/test_delivery_path.py",
    "tests/delivery/test_extras.py",
    "tests/api/test_fuzz.py",
    "tests/delivery/test_categories.py",
    "tests/api/test_import.py",
)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    # Collecting imports the whole project and its dependencies: as in a worker's start,
    # the garbage collector waits, then never walks those objects again (delivery/collector.py).
    # Around the hook, so that pytest-xdist's controller, which collects nothing, resumes too.
    collector.pause()
    try:
        return (yield)
    finally:
        collector.resume()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    def in_order(modules: tuple[str, ...]) -> list[pytest.Item]:
        # A stable sort: each module's tests stay together and in their own order.
        return sorted(
            (item for item in items if module(item) in modules),
            key=lambda item: modules.index(module(item)),
        )

    waiting, busy = in_order(LONGEST_WAITING), in_order(LONGEST_BUSY)
    longest = [item for pair in zip_longest(waiting, busy) for item in pair if item is not None]
    chosen = set(LONGEST_WAITING + LONGEST_BUSY)
    rest = [item for item in items if module(item) not in chosen]
    rest.sort(key=lambda item: 1 if item.get_closest_marker("integration") else 2)
    items[:] = longest + rest


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
