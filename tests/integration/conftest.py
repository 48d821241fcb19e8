"""Fixtures that start real servers on loopback: redis-server, RabbitMQ, PostgreSQL, worker
processes."""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from delivery.engine.assembly import assemble
from delivery.engine.crypto import generate_key
from delivery.log.database import dispose_engines
from delivery.log.migrate import upgrade
from schemas import Settings, get_settings
from schemas.settings import EMBEDDED_BROKER_URL
from tests.support.servers import PostgresServer, RabbitServer, RedisServer, WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    # Not under pytest's tmp dir: when we are root the node runs as the rabbitmq user, who
    # cannot enter pytest's private directory. Started once: a node takes seconds to boot.
    directory = Path(tempfile.mkdtemp(prefix="delivery-rabbit-"))
    directory.chmod(0o777)
    server = RabbitServer(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp dir: when we are root the server runs as another user, who
    # cannot enter pytest's private directory.
    directory = Path(tempfile.mkdtemp(prefix="delivery-pg-"))
    directory.chmod(0o777)
    server = PostgresServer(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


#: What recovery depends on, at the defaults a user runs with (the Stack shortens them):
#: pass as ``stack.worker(..., **RECOVERY_DEFAULTS)`` to test recovery as users get it.
RECOVERY_DEFAULTS = {
    f"DELIVERY_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("lease_seconds", "sweep_interval", "visibility_timeout")
}


class Stack:
    """One test's delivery stack: env for worker processes, the log, the channel store."""

    def __init__(self, tmp_path: Path, broker_url: str, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DELIVERY_HOME": str(tmp_path / ".delivery"),
            "DELIVERY_BROKER_URL": broker_url,
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_SECRET_KEY": generate_key(),
            "DELIVERY_ALLOW_PRIVATE_NETWORKS": "true",
            "DELIVERY_VISIBILITY_TIMEOUT": "10",
            "DELIVERY_LEASE_SECONDS": "10",
            "DELIVERY_BACKOFF_BASE": "0.2",
            "DELIVERY_BACKOFF_CAP": "1",
            "DELIVERY_RETRY_SCHEDULE": "0,0.3,0.5,1,1,1,1,1",
            "DELIVERY_SWEEP_INTERVAL": "1",
            "DELIVERY_PUBLISH_TIMEOUT": "5",
        }
        self.workers: list[WorkerProcess] = []
        self._apply_env()
        upgrade(database_url)
        self.engine = assemble(get_settings())
        self.log, self.registry, self.channels = (
            self.engine.log,
            self.engine.registry,
            self.engine.channels,
        )

    def _apply_env(self) -> None:
        # The producer in this process reads the same settings as the workers.
        for key, value in self.env.items():
            if key.startswith("DELIVERY_"):
                os.environ[key] = value
        get_settings.cache_clear()

    def worker(self, *args: str, **env: str) -> WorkerProcess:
        """Start a real ``delivery worker`` process; stopped when the test ends."""
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess({**self.env, **env}, log_path, *args)
        self.workers.append(worker)
        return worker.start()

    def wait_until(
        self, ids: list[str], statuses: set[str], timeout: float = 60.0
    ) -> dict[str, int]:
        """Poll the log until every id has one of ``statuses``; return the status counts."""
        import time

        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = self.log.count_by_status(ids)
            if sum(counts.get(s, 0) for s in statuses) == len(ids):
                return counts
            time.sleep(0.1)
        missing = [i for i in ids if self.log.get(i) is None][:5]
        stuck = [
            r.id
            for r in self.log.find(limit=10_000)
            if r.id in set(ids) and r.status not in statuses
        ][:5]
        logs = "\n".join(w.output()[-3000:] for w in self.workers)
        raise TimeoutError(
            f"not all {len(ids)} deliveries reached {statuses}: {counts}; never seen by a worker: "
            f"{missing}; stuck: {stuck}\n{logs}"
        )

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        dispose_engines()
        for key in self.env:
            if key.startswith("DELIVERY_"):
                os.environ.pop(key, None)
        get_settings.cache_clear()
        from delivery.producer import reset_publisher

        reset_publisher()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[[str, str], Stack]]:
    stacks: list[Stack] = []

    def make(broker_url: str, database_url: str) -> Stack:
        stack = Stack(tmp_path, broker_url, database_url)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def redis_stack(
    redis_server: RedisServer, tmp_path: Path, stack_factory: Callable[[str, str], Stack]
) -> Stack:
    """Real redis-server broker (flushed), SQLite log in tmp_path."""
    redis_server.flush()
    return stack_factory(redis_server.url, f"sqlite:///{tmp_path / 'log.sqlite3'}")


@pytest.fixture
def embedded_stack(tmp_path: Path, stack_factory: Callable[[str, str], Stack]) -> Stack:
    """The embedded default broker (its SQLite file under the stack's DELIVERY_HOME), SQLite
    log in tmp_path."""
    return stack_factory(EMBEDDED_BROKER_URL, f"sqlite:///{tmp_path / 'log.sqlite3'}")


@pytest.fixture
def rabbit_stack(
    rabbit_server: RabbitServer, tmp_path: Path, stack_factory: Callable[[str, str], Stack]
) -> Stack:
    """Real RabbitMQ broker (its queues deleted), SQLite log in tmp_path."""
    rabbit_server.flush()
    return stack_factory(rabbit_server.url, f"sqlite:///{tmp_path / 'log.sqlite3'}")


@pytest.fixture
def postgres_stack(
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    stack_factory: Callable[[str, str], Stack],
    request: pytest.FixtureRequest,
) -> Stack:
    """Real redis-server broker and a fresh PostgreSQL database for the log."""
    redis_server.flush()
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return stack_factory(redis_server.url, postgres_server.create_database(name))
