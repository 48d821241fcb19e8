"""Real servers on loopback for the integration tier: redis-server, RabbitMQ, PostgreSQL,
workers."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: On CI a missing server binary is a failure, not a skip (.ci/run installs them).
CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")), None
    )
    if path is None:
        message = f"{name} is not installed"
        if CI:
            raise RuntimeError(message)
        pytest.skip(message)
    return path


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A real redis-server with append-only persistence, restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.binary = need_binary("redis-server")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


class RabbitServer:
    """A throwaway RabbitMQ node (one per test session) in its own folder, on loopback.

    Every name a node shares with others on the machine is its own: node name, AMQP and
    distribution ports, epmd's port, data, logs, config and the Erlang cookie (``HOME``),
    so test sessions side by side (and a system RabbitMQ) never meet. It takes several
    seconds to start (about 8 on two shared cores), hence once a session.
    """

    #: Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that switches to the
    #: ``rabbitmq`` user through ``su`` (which resets ``HOME``); the script behind it is
    #: run directly, as that user when we are root.
    SCRIPTS = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, directory: Path) -> None:
        wrapper = need_binary("rabbitmq-server")
        script = self.SCRIPTS / "rabbitmq-server"
        self.server = str(script) if script.exists() else wrapper
        ctl = self.SCRIPTS / "rabbitmqctl"
        self.ctl = str(ctl) if ctl.exists() else (shutil.which("rabbitmqctl") or "rabbitmqctl")
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"delivery-test-{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {
            "HOME": str(d / "home"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            # Not /etc/rabbitmq/rabbitmq-env.conf: nothing of the machine's own node.
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        }

    def _command(self, *argv: str) -> list[str]:
        env = [f"{key}={value}" for key, value in self._env().items()]
        runner = ["runuser", "-u", "rabbitmq", "--"] if _runs_as_rabbitmq() else []
        return [*runner, "env", "-i", *env, *argv]

    def start(self) -> None:
        d = self.directory
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(exist_ok=True)
        # guest may connect from loopback by default; no management plugin.
        (d / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        if _runs_as_rabbitmq():
            subprocess.run(["chown", "-R", "rabbitmq", str(d)], check=True)
        started = time.monotonic()
        self._log = (d / "server.log").open("ab")
        self.process = subprocess.Popen(
            self._command(self.server),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout=120)
        except TimeoutError:
            self.stop()
            log = (d / "server.log").read_text(errors="replace")[-3000:]
            raise TimeoutError(f"RabbitMQ did not start:\n{log}") from None
        self.startup_seconds = time.monotonic() - started

    def ctl_run(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` against this node; its output."""
        done = subprocess.run(
            self._command(self.ctl, "-n", self.node, *args),
            check=True,
            capture_output=True,
            timeout=60,
        )
        return done.stdout.decode(errors="replace")

    def queues(self) -> list[str]:
        text = self.ctl_run("list_queues", "name", "--quiet", "--no-table-headers")
        return [line.strip() for line in text.splitlines() if line.strip()]

    #: What the tests leave behind: the task queue, the set-aside queue, Celery's default.
    KNOWN_QUEUES = ("delivery", "delivery.undecodable", "celery")

    def flush(self, *, everything: bool = False) -> None:
        """Delete the queues the tests use (and their messages): a few milliseconds. With
        ``everything``, every queue the node has (a second more: ``rabbitmqctl``)."""
        import amqp  # type: ignore[import-untyped]

        names = set(self.KNOWN_QUEUES) | (set(self.queues()) if everything else set())
        connection = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=10)
        connection.connect()
        try:
            channel = connection.channel()
            for name in sorted(names):
                channel.queue_delete(name)  # deleting a queue that is not there is fine
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # The node stops cleanly on SIGTERM (the script's trap asks it to as well).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self._log.close()
        self.process = None
        # epmd daemonises on the node's first start; ours listens on our port only.
        epmd = shutil.which("epmd")
        if epmd is not None:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                capture_output=True,
                timeout=10,
            )


def _runs_as_rabbitmq() -> bool:
    # As root, the node runs as the rabbitmq user, as Debian's wrapper would run it.
    return os.geteuid() == 0 and _has_user("rabbitmq")


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb in a temp dir), listening on loopback."""

    def __init__(self, directory: Path) -> None:
        self.initdb = need_binary("initdb")
        self.pg_ctl = need_binary("pg_ctl")
        self.directory = directory
        self.port = free_port()
        self.user = "delivery"

    def start(self) -> None:
        data = self.directory / "data"
        run_as = _postgres_runner()
        if not data.exists():
            subprocess.run(
                [
                    *run_as,
                    self.initdb,
                    "-D",
                    str(data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ],
                check=True,
                capture_output=True,
            )
        subprocess.run(
            [
                *run_as,
                self.pg_ctl,
                "-D",
                str(data),
                "-l",
                str(self.directory / "pg.log"),
                "-o",
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [
                *_postgres_runner(),
                self.pg_ctl,
                "-D",
                str(self.directory / "data"),
                "-m",
                "fast",
                "stop",
            ],
            capture_output=True,
        )


def _postgres_runner() -> list[str]:
    # PostgreSQL refuses to run as root; CI machines often are root.
    if os.geteuid() != 0:
        return []
    return (
        ["runuser", "-u", "postgres", "--"]
        if _has_user("postgres")
        else ["runuser", "-u", "nobody", "--"]
    )


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class WorkerProcess:
    """A real ``delivery worker`` process with its own environment and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "WorkerProcess":
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "delivery",
                "worker",
                "--loglevel",
                "info",
                "--without-mingle",
                "--without-gossip",
                *self.args,
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.output()[-4000:]}")
            if " ready." in self.output():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._log.close()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a prefork worker's pool children)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, *args: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, log_path, *args).start()
    try:
        yield worker
    finally:
        worker.stop()
