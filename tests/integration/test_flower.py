"""Flower comes with the install: `celery -A workers.app flower` works from a checkout."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.settings import EMBEDDED_BROKER_URL
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "embedded":
        return EMBEDDED_BROKER_URL
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def flower(tmp_path: Path, broker_url: str) -> Iterator[tuple[str, Callable[[], str]]]:
    """The README's command, as a real process; killed, with its children, at teardown."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DELIVERY_", "FLOWER_"))}
    env.update(DELIVERY_HOME=str(tmp_path / ".delivery"), DELIVERY_BROKER_URL=broker_url)
    log_path = tmp_path / "flower.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            env=env,
            cwd=Path(__file__).parents[2],  # the checkout, as the README runs it
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def exited() -> str:
        """Flower's output if it has exited (e.g. "No such command 'flower'"), else ""."""
        return "" if process.poll() is None else log_path.read_text()

    try:
        yield f"http://127.0.0.1:{port}", exited
    finally:
        _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _get(url: str, exited: Callable[[], str], timeout: float = 30.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        assert not exited(), exited()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: {exc}") from exc
            time.sleep(0.2)


def test_flower_serves_our_app(flower: tuple[str, Callable[[], str]], tmp_path: Path) -> None:
    url, exited = flower
    # When Flower is up, its dashboard answers and it loaded our app's tasks
    status, body = _get(url + "/", exited)
    assert status == 200
    assert "Flower" in body
    assert "delivery.deliver" in (tmp_path / "flower.log").read_text()
