"""The ``delivery`` script as a person runs it, in a process of its own: a bad setting or a
bad argument is a line on stderr naming what to fix, never a traceback or a password."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from delivery.engine.crypto import generate_key
from tests.support.servers import PostgresServer, need_binary

pytestmark = pytest.mark.integration

PASSWORD = "pw-not-for-your-eyes-7431"


def _script() -> str:
    # The venv's own script first: its bin/ need not be on PATH. On CI a missing one fails.
    beside = Path(sys.executable).with_name("delivery")
    return str(beside) if beside.exists() else need_binary("delivery")


def run(
    tmp_path: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("DELIVERY_")}
    clean.update(
        DELIVERY_HOME=str(tmp_path / ".delivery"),
        DELIVERY_SECRET_KEY=generate_key(),
        DELIVERY_PUBLISH_TIMEOUT="1",
        COLUMNS="80",
    )
    clean.update(env)
    return subprocess.run(
        [_script(), *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_names(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The last stderr line: exit code 1, no traceback, no password, each needle in it."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and PASSWORD not in output, output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), output
    for needle in needles:
        assert needle in last, output
    return last


def test_an_unparsable_database_url(tmp_path: Path) -> None:
    result = run(tmp_path, "log", DELIVERY_DATABASE_URL="nonsense")
    assert_names(result, "DELIVERY_DATABASE_URL")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_postgresql_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://delivery:{PASSWORD}@127.0.0.1:1/delivery"
    for command in (["log"], ["db", "upgrade"], ["channels", "list"], ["worker"]):
        result = run(tmp_path, *command, DELIVERY_DATABASE_URL=url)
        assert_names(result, "DELIVERY_DATABASE_URL", "delivery:***@127.0.0.1:1")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_missing_database_on_a_real_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    server = postgres_server
    url = f"postgresql+psycopg://{server.user}:{PASSWORD}@127.0.0.1:{server.port}/no_such_db"
    last = assert_names(run(tmp_path, "log", DELIVERY_DATABASE_URL=url), "DELIVERY_DATABASE_URL")
    assert "no_such_db" in last and "does not exist" in last


def test_an_unusable_home_names_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    home = str(tmp_path / "a-file" / "home")
    for command in (
        ["log"],
        ["db", "upgrade"],
        ["keygen", "--write"],
        ["send", "c", "a@b.c", "hi"],
    ):
        assert_names(run(tmp_path, *command, DELIVERY_HOME=home), "DELIVERY_HOME")
    if Path("/proc").is_dir():  # the case as reported: a home that cannot be created
        assert_names(
            run(tmp_path, "log", DELIVERY_HOME="/proc/nope"), "/proc/nope", "DELIVERY_HOME"
        )


def test_an_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    result = run(tmp_path, "log", DELIVERY_RETRY_SCHEDULE="0,5,soon")
    assert_names(result, "DELIVERY_RETRY_SCHEDULE", "seconds separated by commas")


def test_an_unreachable_broker_names_delivery_broker_url(tmp_path: Path) -> None:
    assert run(tmp_path, "db", "upgrade").returncode == 0
    assert run(tmp_path, "channels", "add", "hooks", "console").returncode == 0
    broker = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    result = run(tmp_path, "send", "hooks", "a@example.com", "hi", DELIVERY_BROKER_URL=broker)
    assert_names(result, "DELIVERY_BROKER_URL", "redis://:**@127.0.0.1:1/0")


def test_schemas_out_a_file(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    assert_names(run(tmp_path, "schemas", "--out", str(tmp_path / "passwd")), "--out", "is a file")
    assert (tmp_path / "passwd").read_text() == "root:x:0:0\n"


def test_delivery_debug_shows_the_traceback_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://delivery:{PASSWORD}@127.0.0.1:1/delivery"
    result = run(tmp_path, "log", DELIVERY_DATABASE_URL=url, DELIVERY_DEBUG="1")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot use the delivery log")


def test_usage_errors_keep_exit_code_2(tmp_path: Path) -> None:
    for args in (["lgo"], ["log", "--limit", "many"]):
        result = run(tmp_path, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "Usage:" in result.stderr


def test_version(tmp_path: Path) -> None:
    result = run(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"delivery {importlib.metadata.version('delivery')}"


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    bash = need_binary("bash")
    script = run(tmp_path, "--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    (tmp_path / "completion.sh").write_text(script.stdout)
    # What bash does on <TAB>: the completion function, with the words typed so far.
    probe = (
        f"source {tmp_path / 'completion.sh'}\n"
        "COMP_WORDS=(delivery chan); COMP_CWORD=1; _delivery_completion delivery\n"
        'echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(delivery channels ""); COMP_CWORD=2; _delivery_completion delivery\n'
        'echo "${COMPREPLY[@]}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DELIVERY_")}
    env["PATH"] = f"{Path(_script()).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [bash, "--norc", "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["channels"], result
    assert {"add", "list", "pause", "resume", "remove"} <= set(lines[1].split()), result
