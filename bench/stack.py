"""The delivery stack under test: settings, the log, channels, workers and their control.

Everything goes through the real paths a user takes: ``delivery.log.migrate.upgrade`` (what
``delivery db upgrade`` runs), a ``webhook`` channel stored with ``ChannelStore``,
``delivery worker`` as a subprocess, and ``delivery.send_many`` in this process.
"""

import base64
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.processes import BenchSetupError, Child, Processes

#: The repository root, so worker subprocesses can import ``bench.baseline_app``.
ROOT = Path(__file__).resolve().parent.parent


def webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


#: How long each readiness ping waits for the worker's reply.
PING_SECONDS = 0.1


class Control:
    """Celery remote control of the bench's workers: ping, pause and resume consuming."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery("bench-control", broker=broker_url, set_as_current=False)
        self.app.conf.update(broker_connection_retry_on_startup=True, accept_content=["json"])

    def wait_ready(self, worker: "Worker", timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.child.alive():
                raise BenchSetupError(
                    f"worker {worker.hostname} exited:\n{worker.child.output()[-3000:]}"
                )
            # A ping sent before the worker listens is lost, so the wait is a whole number
            # of these: short, so that "start -> ready" (section 10) reads to 0.1 s.
            if self.app.control.ping(destination=[worker.hostname], timeout=PING_SECONDS):
                return
        raise BenchSetupError(
            f"worker {worker.hostname} not ready after {timeout:g}s:\n"
            f"{worker.child.output()[-3000:]}"
        )

    def pause(self, worker: "Worker") -> None:
        """Stop taking messages from the worker's queue (it keeps running)."""
        self._command("cancel_consumer", worker)

    def resume(self, worker: "Worker") -> None:
        self._command("add_consumer", worker)

    def _command(self, name: str, worker: "Worker") -> None:
        method = getattr(self.app.control, name)
        replies = method(worker.queue, destination=[worker.hostname], reply=True, timeout=10)
        if not replies:
            raise BenchSetupError(f"worker {worker.hostname} did not answer {name}")

    def close(self) -> None:
        self.app.close()


@dataclass
class Worker:
    """A worker process and what the bench needs to address it."""

    child: Child
    hostname: str
    queue: str
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.child.pid


class DeliveryStack:
    """Settings in this process's environment (for the producer and the log) and in the
    workers' environment, a migrated log, and helpers to start workers and channels."""

    def __init__(
        self,
        processes: Processes,
        workdir: Path,
        *,
        broker_url: str,
        database_url: str,
        queue: str = "bench-delivery",
    ) -> None:
        from delivery.engine.crypto import generate_key

        self.processes = processes
        self.workdir = workdir
        self.broker_url = broker_url
        self.database_url = database_url
        self.queue = queue
        workdir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {
            **os.environ,
            "DELIVERY_HOME": str(workdir / ".delivery"),
            "DELIVERY_BROKER_URL": broker_url,
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_SECRET_KEY": generate_key(),
            "DELIVERY_ALLOW_PRIVATE_NETWORKS": "true",
            "DELIVERY_QUEUE": queue,
            "BENCH_BROKER_URL": broker_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self._saved = {k: os.environ.get(k) for k in self.env if k.startswith("DELIVERY_")}
        self._activate()

        from delivery.engine.assembly import assemble
        from delivery.log.migrate import upgrade
        from schemas import get_settings

        upgrade(database_url)
        self.engine = assemble(get_settings())
        self.log, self.channels = self.engine.log, self.engine.channels
        self.control = Control(broker_url)
        self._workers = 0

    def _activate(self) -> None:
        from schemas import get_settings

        for key, value in self.env.items():
            if key.startswith("DELIVERY_"):
                os.environ[key] = value
        get_settings.cache_clear()

    def close(self) -> None:
        from delivery.log.database import dispose_engines
        from schemas import get_settings

        self.control.close()
        dispose_engines()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()

    def add_channel(self, name: str, *, timeout: float = 10.0) -> str:
        self.channels.add(
            name, "webhook", {"secret": webhook_secret(), "timeout": timeout}, replace=True
        )
        return name

    def start_worker(self, name: str, concurrency: int, *extra: str) -> Worker:
        """``delivery worker`` as a subprocess, ready to take messages."""
        hostname = f"{name}@bench"
        argv = [
            sys.executable,
            "-m",
            "delivery",
            "worker",
            "--loglevel",
            "warning",
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            hostname,
            "--concurrency",
            str(concurrency),
            *extra,
        ]
        return self._start(name, hostname, self.queue, argv, self.env)

    def start_baseline_worker(self, name: str, concurrency: int, queue: str) -> Worker:
        """The bare Celery worker of ``bench.baseline_app``, same broker, pool and concurrency."""
        hostname = f"{name}@bench"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.baseline_app",
            "worker",
            "--loglevel",
            "warning",
            "--without-mingle",
            "--without-gossip",
            "--pool",
            "threads",
            "--hostname",
            hostname,
            "--concurrency",
            str(concurrency),
            "--queues",
            queue,
        ]
        env = {**self.env, "BENCH_BASELINE_QUEUE": queue}
        return self._start(name, hostname, queue, argv, env)

    def _start(
        self, name: str, hostname: str, queue: str, argv: list[str], env: dict[str, str]
    ) -> Worker:
        self._workers += 1
        child = self.processes.start(
            name, argv, log_path=self.workdir / f"{name}-{self._workers}.log", env=env, cwd=ROOT
        )
        worker = Worker(child=child, hostname=hostname, queue=queue, argv=argv)
        self.control.wait_ready(worker)
        return worker

    def stop_worker(self, worker: Worker) -> None:
        self.processes.stop(worker.child.name)

    def progress(self, channel: str) -> dict[str, int]:
        """Deliveries of one channel by status."""
        from sqlalchemy import func, select

        from delivery.log.tables import DeliveryRow

        query = (
            select(DeliveryRow.status, func.count())
            .where(DeliveryRow.channel == channel)
            .group_by(DeliveryRow.status)
        )
        with self.log.engine.connect() as conn:
            return {str(k): int(v) for k, v in conn.execute(query).tuples().all()}

    def last_delivered_at(self, channel: str) -> datetime | None:
        from sqlalchemy import func, select

        from delivery.log.tables import DeliveryRow

        with self.log.engine.connect() as conn:
            # max() keeps the column's type, so the log's UTC-aware conversion applies.
            value: datetime | None = conn.execute(
                select(func.max(DeliveryRow.delivered_at)).where(DeliveryRow.channel == channel)
            ).scalar()
        return value

    def wait_delivered(self, channel: str, count: int, *, timeout: float) -> dict[str, int]:
        """Poll the log until ``count`` deliveries of ``channel`` are delivered or failed.

        Raises:
            TimeoutError: they did not finish in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            counts = self.progress(channel)
            if counts.get("delivered", 0) + counts.get("failed", 0) >= count:
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"{channel}: {counts} after {timeout:g}s (want {count})")
            time.sleep(0.1)


@contextmanager
def delivery_stack(
    processes: Processes, workdir: Path, *, broker_url: str, database_url: str, queue: str
) -> Iterator[DeliveryStack]:
    stack = DeliveryStack(
        processes, workdir, broker_url=broker_url, database_url=database_url, queue=queue
    )
    try:
        yield stack
    finally:
        stack.close()
