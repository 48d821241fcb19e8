"""What every section shares in one run: servers on loopback, a scratch folder, settings."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.config import BenchConfig
from bench.processes import PostgresServer, Processes, RedisServer, cpu_seconds
from bench.receiver import Receiver

#: The payload every section sends: the same for ours, the baseline and Apprise.
SUBJECT = "Shipping update"


def payload(i: int) -> dict[str, Any]:
    return {"message": f"Order {i} has shipped", "subject": SUBJECT, "data": {"order": i}}


@dataclass
class BenchContext:
    config: BenchConfig
    console: Console
    processes: Processes
    workdir: Path
    receiver: Receiver
    redis: RedisServer
    results_dir: Path
    #: Figures one section leaves for another (section 5 sets ours beside Apprise).
    shared: dict[str, Any] = field(default_factory=dict)
    _postgres: PostgresServer | None = None
    _databases: int = 0

    def sqlite_url(self, name: str) -> str:
        return f"sqlite:///{self.workdir / name}.sqlite3"

    def postgres_url(self, name: str) -> str:
        """A fresh database on the run's PostgreSQL, started on first use.

        Raises:
            BenchSetupError: PostgreSQL is not installed or would not start.
        """
        if self._postgres is None:
            self._postgres = PostgresServer(self.processes, self.workdir / "postgres")
        self._databases += 1
        return self._postgres.create_database(f"{name}_{self._databases}")

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis.url)
        try:
            client.flushall()
        finally:
            client.close()

    def cpu_seconds(self, pid: int) -> float:
        return cpu_seconds(pid)
