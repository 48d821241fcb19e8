"""Processes the bench starts (redis-server, PostgreSQL, workers), and their clean-up.

Every child is registered with a :class:`Processes` stack the moment it starts, and the
stack stops them all in reverse order when the run ends: normally, on an exception, on
Ctrl-C or on SIGTERM. Children also get ``PR_SET_PDEATHSIG`` so that even a bench killed
with SIGKILL does not leave a worker or a redis-server behind.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any

#: Where Debian's PostgreSQL packages put their binaries.
POSTGRES_BINARIES = Path("/usr/lib/postgresql")


class BenchSetupError(RuntimeError):
    """Something the bench needs is missing or would not start."""


def _with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so the kernel sends it SIGTERM if the bench dies (setpriv exists on
    every util-linux system; without it the clean-up in :class:`Processes` still runs)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 20.0, alive: Callable[[], bool] = lambda: True
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchSetupError(f"the process meant to listen on port {port} exited")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchSetupError(f"nothing listening on 127.0.0.1:{port} after {timeout:g}s")


def find_binary(name: str) -> str:
    """The path of a server binary, looking in PostgreSQL's versioned folders too.

    Raises:
        BenchSetupError: the binary is not installed.
    """
    path = shutil.which(name) or next(
        (str(p) for p in sorted(POSTGRES_BINARIES.glob(f"*/bin/{name}"), reverse=True)), None
    )
    if path is None:
        raise BenchSetupError(f"{name} is not installed (apt-get install redis-server postgresql)")
    return path


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchSetupError(f"no VmRSS for process {pid}")


class Child:
    """One started process with a log file and a polite-then-firm way to stop it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(
            _with_parent_death_signal(argv),
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal reaches the bench, which then stops the
            # children in order, instead of every process at once.
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            with suppress(ProcessLookupError):
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class Processes:
    """Everything the run started, stopped in reverse order on the way out."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []

    def start(self, name: str, argv: Sequence[str], **options: Any) -> Child:
        """Start a :class:`Child` (same options) and stop it when the run ends."""
        child = Child(name, argv, **options)
        self.on_exit(child.name, child.stop)
        return child

    def on_exit(self, name: str, stop: Callable[[], None]) -> None:
        self._stops.append((name, stop))

    def stop(self, name: str) -> None:
        """Stop one registered thing now (workers between sections)."""
        for i, (known, stop) in enumerate(self._stops):
            if known == name:
                del self._stops[i]
                stop()
                return

    def close(self) -> None:
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:
                print(f"bench: could not stop {name}: {exc}", file=sys.stderr)


@contextmanager
def managed_processes() -> Iterator[Processes]:
    """A :class:`Processes` stack that is emptied even on SIGTERM and Ctrl-C."""
    processes = Processes()

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield processes
    finally:
        # A second Ctrl-C during clean-up must not leave servers behind.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            processes.close()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, previous)


class RedisServer:
    """A real redis-server on loopback, without persistence (the bench measures transport)."""

    def __init__(self, processes: Processes, directory: Path) -> None:
        self.port = free_port()
        binary = find_binary("redis-server")
        self.child = processes.start(
            "redis-server",
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            log_path=directory / "redis.log",
        )
        wait_for_port(self.port, alive=self.child.alive)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class RabbitServer:
    """A throwaway RabbitMQ node: the test suite's (``tests.support.servers.RabbitServer``:
    its own node name, ports, epmd and folders, as the ``rabbitmq`` user when root), stopped
    with the run. It takes several seconds to start, so a run starts one at most.
    """

    def __init__(self, processes: Processes) -> None:
        find_binary("rabbitmq-server")  # a BenchSetupError, not a pytest skip
        from tests.support.servers import RabbitServer as Node

        # Not in the run's scratch folder: as root the node runs as another user.
        directory = Path(tempfile.mkdtemp(prefix="delivery-bench-rabbit-"))
        directory.chmod(0o777)
        self.node = Node(directory)
        processes.on_exit("rabbitmq-server", self._stop)
        try:
            self.node.start()
        except TimeoutError as exc:
            raise BenchSetupError(str(exc)) from None
        self.startup_seconds = self.node.startup_seconds

    @property
    def url(self) -> str:
        return self.node.url

    def flush(self) -> None:
        self.node.flush()

    def _stop(self) -> None:
        try:
            self.node.stop()
        finally:
            shutil.rmtree(self.node.directory, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary folder, run in the foreground.

    PostgreSQL refuses to run as root, so as root it runs as ``postgres`` (or ``nobody``).
    """

    user = "delivery"

    def __init__(self, processes: Processes, directory: Path) -> None:
        initdb = find_binary("initdb")
        postgres = find_binary("postgres")
        run_as = _postgres_user()
        directory.mkdir(parents=True, exist_ok=True)
        # The server's user must reach its folder inside our (private) scratch folder.
        os.chmod(directory.parent, directory.parent.stat().st_mode | 0o711)
        os.chmod(directory, 0o777)
        data = directory / "data"
        subprocess.run(
            [initdb, "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=run_as,
            group=run_as,
            extra_groups=[] if run_as else None,
            cwd=directory,
        )
        self.port = free_port()
        self.child = processes.start(
            "postgres",
            [
                postgres,
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(directory),
                "-c",
                "listen_addresses=127.0.0.1",
                # Durability is not under test; the disk of a shared machine is noise.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            log_path=directory / "postgres.log",
            stop_signal=signal.SIGINT,  # fast shutdown
            user=run_as,
            cwd=directory,
        )
        wait_for_port(self.port, alive=self.child.alive)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self._dsn("postgres")):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"


def _postgres_user() -> str | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which may itself contain spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
