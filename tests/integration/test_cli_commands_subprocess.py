"""The delivery commands as a person runs them: real ``delivery`` processes, a real
terminal (a pty) where one is needed, and an 80-column screen."""

import json
import os
import pty
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.clock import utcnow
from delivery.engine.crypto import generate_key
from delivery.log import AttemptResult, DeliveryLog, Outcome
from delivery.log.database import dispose_engines
from delivery.log.migrate import upgrade
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret
from tests.support.recording import finish

pytestmark = pytest.mark.integration

#: A pair whose ids share their first 10 characters.
TWIN_A = "dddddddd-d1dd-4ddd-8ddd-000000000001"
TWIN_B = "dddddddd-d2dd-4ddd-8ddd-000000000002"


class Cli:
    """Runs ``delivery`` in its own process against one test's home, log and broker."""

    def __init__(self, tmp_path: Path) -> None:
        database = f"sqlite:///{tmp_path / 'log.sqlite3'}"
        self.env = {
            **os.environ,
            "DELIVERY_HOME": str(tmp_path / ".delivery"),
            "DELIVERY_DATABASE_URL": database,
            "DELIVERY_SECRET_KEY": generate_key(),
            "DELIVERY_PUBLISH_TIMEOUT": "5",
            "COLUMNS": "80",
        }
        for name in ("DELIVERY_BROKER_URL", "DELIVERY_ALLOW_PRIVATE_NETWORKS"):
            self.env.pop(name, None)  # the embedded broker, across processes
        upgrade(database)
        self.log = DeliveryLog.from_settings(
            Settings(home=tmp_path / ".delivery", database_url=database)
        )

    def __call__(
        self, *args: str, stdin: int | None = None, terminal: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``terminal``: stdout is taken for a terminal (rich's ``TTY_COMPATIBLE``), one
        without colours, so that lines are as long as they look."""
        at_a_terminal = {"TTY_COMPATIBLE": "1", "TERM": "dumb"} if terminal else {}
        return subprocess.run(
            [sys.executable, "-m", "delivery", *args],
            env={**self.env, **at_a_terminal},
            capture_output=stdin is None,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin is not None else None,
            stderr=subprocess.PIPE if stdin is not None else None,
            text=True,
            timeout=60,
        )

    def failed(self, *ids: str) -> None:
        """Failed deliveries, with their payload, as a worker leaves them."""
        for i in ids:
            envelope = Envelope(
                id=i, channel="hooks", address="https://a.example/h", payload=Payload(message="m")
            )
            claim = self.log.claim(envelope, lease=60)
            finish(
                self.log,
                claim,
                AttemptResult(Outcome.FAILED, utcnow(), 1.0, error="400 Bad Request"),
                dispatcher="webhook",
                worker=None,
            )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path)
    added = runner("channels", "add", "hooks", "webhook", "--set", f"secret={webhook_secret()}")
    assert added.returncode == 0, added.stderr
    yield runner
    dispose_engines()


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ")
    return " ".join(stderr.split())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("nope", "https://a.example/h", "hi"), "no channel named 'nope'"),
        (("hooks", "not-a-url", "hi"), "'not-a-url' is not an http(s) URL"),
        (("hooks", "ftp://a.example/h", "hi"), "is not an http(s) URL"),
        (("hooks", "https://a.example/h", ""), "the payload has no text to send"),
    ],
)
def test_send_refuses_what_can_never_succeed(cli: Cli, args: tuple[str, ...], says: str) -> None:
    sent = cli("send", *args)
    assert sent.returncode == 1 and sent.stdout == ""
    assert says in _one_error_line(sent.stderr)


def test_a_good_send_prints_an_id_that_status_finds(cli: Cli) -> None:
    sent = cli("send", "hooks", "https://a.example/h", "hi")
    assert sent.returncode == 0, sent.stderr
    delivery_id = sent.stdout.strip()
    assert str(uuid.UUID(delivery_id)) == delivery_id


def test_ids_in_an_80_column_log_work_in_status(cli: Cli) -> None:
    lone = str(uuid.uuid4())
    cli.failed(TWIN_A, TWIN_B, lone)
    shown = cli("log", terminal=True)
    assert shown.returncode == 0, shown.stderr
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    ids = [m for m in re.findall(r"^│ (\S+) +│", shown.stdout, flags=re.M) if m != "id"]
    assert sorted(ids) == sorted([TWIN_A[:12], TWIN_B[:12], lone[:8]])
    for short in ids:
        status = cli("status", short, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["id"].startswith(short)
    ambiguous = cli("status", "dddddddd")
    assert ambiguous.returncode == 1
    message = _one_error_line(ambiguous.stderr)
    assert TWIN_A in message and TWIN_B in message


def test_a_piped_log_gives_whole_ids_to_grep_and_cut(cli: Cli) -> None:
    lone = str(uuid.uuid4())
    cli.failed(TWIN_A, lone)
    # and one delivered, which grep leaves out
    delivered = Envelope(
        id=str(uuid.uuid4()),
        channel="hooks",
        address="https://a.example/h",
        payload=Payload(message="m"),
    )
    finish(
        cli.log,
        cli.log.claim(delivered, lease=60),
        AttemptResult(Outcome.DELIVERED, utcnow(), 1.0),
        dispatcher="webhook",
        worker=None,
    )
    piped = subprocess.run(
        f"{sys.executable} -m delivery log | grep failed | cut -f1",
        shell=True,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert sorted(piped.stdout.split()) == sorted([TWIN_A, lone])


def test_unknown_status_and_empty_schedule_are_refused(cli: Cli) -> None:
    bogus = cli("log", "--status", "bogus")
    assert bogus.returncode == 2
    assert "'bogus' is not one of" in bogus.stderr and "'failed'" in bogus.stderr
    empty = cli("channels", "add", "other", "console", "--retry-schedule", "")
    assert empty.returncode == 1 and "retry schedule is empty" in _one_error_line(empty.stderr)


def test_bulk_retry_needs_a_filter_and_a_yes(cli: Cli) -> None:
    cli.failed(TWIN_A, TWIN_B)
    bare = cli("retry")
    assert bare.returncode == 1 and "--all" in _one_error_line(bare.stderr)
    unattended = cli("retry", "--all")
    assert unattended.returncode == 1
    assert "2 failed deliveries" in unattended.stderr and "--yes" in unattended.stderr
    assert {cli.log.get(i).status for i in (TWIN_A, TWIN_B)} == {"failed"}  # type: ignore[union-attr]
    done = cli("retry", "--all", "--yes")
    assert done.returncode == 0 and "2 deliveries queued again" in done.stdout


def test_bulk_retry_at_a_terminal_asks_how_many(cli: Cli) -> None:
    cli.failed(TWIN_A)
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        leader, follower = pty.openpty()
        try:
            os.write(leader, answer)  # waits in the terminal until the prompt reads it
            asked = cli("retry", "--channel", "hooks", stdin=follower)
        finally:
            os.close(follower)
            os.close(leader)
        assert asked.returncode == code, asked.stderr
        assert "Send 1 failed delivery again?" in asked.stdout
    assert "1 delivery queued again" in asked.stdout
    assert cli.log.get(TWIN_A).status == "queued"  # type: ignore[union-attr]
