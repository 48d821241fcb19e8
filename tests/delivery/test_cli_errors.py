"""Every command, every bad setting: one line on stderr naming what to fix, exit code 1,
no traceback, no secret. Typer's own usage errors keep exit code 2."""

import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import delivery.cli
from delivery.cli import (  # noqa: F401 - registers the commands
    admin,
    app,
    channels,
    context,
    deliveries,
    demo,
    events,
    inbound,
    keys,
    serve,
)
from delivery.engine.crypto import generate_key
from delivery.log.database import dispose_engines
from delivery.producer import reset_publisher
from schemas import Settings, get_settings

runner = CliRunner()

#: Long enough for the redactor (it leaves secrets under six characters alone).
PASSWORD = "pw-not-for-your-eyes-7431"

#: Every command that reads the settings, with arguments that get it past typer's parsing.
COMMANDS = [
    "db upgrade",
    "worker",
    "beat",
    "send hooks a@example.com hi",
    "status abcdef",
    "log",
    "retry abcdef",
    "cancel abcdef",
    "channels add c console",
    "channels list",
    "channels pause c",
    "channels resume c",
    "channels remove c",
    "templates add t --text hi",
    "templates list",
    "templates show t",
    "templates remove t",
    "subscriptions add ev c a@example.com",
    "subscriptions list",
    "subscriptions pause abcdef",
    "subscriptions resume abcdef",
    "subscriptions remove abcdef",
    "notify ev",
    "inbound add i http",
    "inbound list",
    "inbound remove i",
    "inbound kinds",
    "inbox",
    "suppressions list",
    "suppressions add c a@example.com",
    "suppressions remove c a@example.com",
    "keys add k",
    "keys list",
    "keys revoke k",
    "serve",
    "demo --count 1 --timeout 5",
]


def _file_as_home(tmp: Path) -> dict[str, str]:
    (tmp / "a-file").write_text("")
    return {"DELIVERY_HOME": str(tmp / "a-file" / "home"), "DELIVERY_DATABASE_URL": ""}


#: A bad setting: the environment it takes, and the variable the message must name.
BAD_SETTINGS: dict[str, tuple[Callable[[Path], dict[str, str]], str]] = {
    "unparsable database URL": (
        lambda _: {"DELIVERY_DATABASE_URL": f"postgresql//delivery:{PASSWORD}@db/x"},
        "DELIVERY_DATABASE_URL",
    ),
    "unknown database dialect": (
        lambda _: {"DELIVERY_DATABASE_URL": f"mysqlx://delivery:{PASSWORD}@db/x"},
        "DELIVERY_DATABASE_URL",
    ),
    "unreachable PostgreSQL": (
        # Port 1 on loopback: refused at once, no server needed.
        lambda _: {"DELIVERY_DATABASE_URL": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"},
        "DELIVERY_DATABASE_URL",
    ),
    "home under a file": (_file_as_home, "DELIVERY_HOME"),
    "bad retry schedule": (
        lambda _: {"DELIVERY_RETRY_SCHEDULE": "0,5,soon"},
        "DELIVERY_RETRY_SCHEDULE",
    ),
    "bad worker pool": (lambda _: {"DELIVERY_WORKER_POOL": "fibres"}, "DELIVERY_WORKER_POOL"),
    "bad lease": (lambda _: {"DELIVERY_LEASE_SECONDS": "nan"}, "DELIVERY_LEASE_SECONDS"),
    "bad boolean": (
        lambda _: {"DELIVERY_ALLOW_PRIVATE_NETWORKS": "perhaps"},
        "DELIVERY_ALLOW_PRIVATE_NETWORKS",
    ),
}
if importlib.util.find_spec("asyncpg") is None:
    BAD_SETTINGS["database driver not installed"] = (
        lambda _: {"DELIVERY_DATABASE_URL": f"postgresql+asyncpg://u:{PASSWORD}@127.0.0.1:1/x"},
        "DELIVERY_DATABASE_URL",
    )


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Good settings to spoil one at a time; no log is created (the commands must not get
    that far)."""
    monkeypatch.setenv("DELIVERY_HOME", str(tmp_path / ".delivery"))
    monkeypatch.setenv("DELIVERY_DATABASE_URL", f"sqlite:///{tmp_path / 'log.sqlite3'}")
    monkeypatch.setenv("DELIVERY_SECRET_KEY", generate_key())
    monkeypatch.setenv("DELIVERY_BROKER_URL", "memory://")
    monkeypatch.setenv("DELIVERY_PUBLISH_TIMEOUT", "1")
    monkeypatch.delenv("DELIVERY_DEBUG", raising=False)
    get_settings.cache_clear()
    context.registry.cache_clear()
    yield monkeypatch
    dispose_engines()
    get_settings.cache_clear()
    reset_publisher()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_naming(code: int, out: str, err: str, name: str) -> None:
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    assert PASSWORD not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and name in lines[0], err


#: ``notify`` only publishes (to the fixture's in-memory broker): the log's settings are
#: the worker's business, and it succeeds without them.
PUBLISHES_ONLY = {"notify ev"}
LOG_SETTINGS = {"DELIVERY_DATABASE_URL", "DELIVERY_HOME"}


@pytest.mark.parametrize(
    ("command", "bad"),
    [
        (command, bad)
        for command in COMMANDS
        for bad, (_, name) in BAD_SETTINGS.items()
        if not (command in PUBLISHES_ONLY and name in LOG_SETTINGS)
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    command: str, bad: str, environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_env, name = BAD_SETTINGS[bad]
    for key, value in make_env(tmp_path).items():
        environment.setenv(key, value)
    assert_one_line_naming(*run(*command.split()), name)


@pytest.mark.parametrize("command", ["keygen --write", "db upgrade", "log"])
def test_an_unusable_home_names_the_path_and_delivery_home(
    command: str, environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environment.setenv("DELIVERY_DATABASE_URL", "")  # the log lives under the home
    environment.setenv("DELIVERY_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")
    code, out, err = run(*command.split())
    assert_one_line_naming(code, out, err, "DELIVERY_HOME")
    assert str(tmp_path / "a-file") in err


def test_the_database_url_is_shown_with_its_password_masked(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv(
        "DELIVERY_DATABASE_URL", f"postgresql+psycopg://delivery:{PASSWORD}@127.0.0.1:1/x"
    )
    code, out, err = run("log")
    assert_one_line_naming(code, out, err, "DELIVERY_DATABASE_URL")
    assert "postgresql+psycopg://delivery:***@127.0.0.1:1/x" in err
    assert "Connection refused" in err or "connection" in err.lower()


def test_an_unreachable_broker_names_delivery_broker_url_without_its_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("channels", "add", "hooks", "console")[0] == 0
    monkeypatch.setenv("DELIVERY_BROKER_URL", f"redis://:{PASSWORD}@127.0.0.1:1/0")
    get_settings.cache_clear()
    reset_publisher()
    for command in (["send", "hooks", "a@example.com", "hi"], ["notify", "signed-up"]):
        code, out, err = run(*command)
        assert code == 1 and "Traceback" not in out + err and PASSWORD not in out + err
        last = err.strip().splitlines()[-1]  # after the publisher's retry warnings
        assert "DELIVERY_BROKER_URL" in last and "redis://:**@127.0.0.1:1/0" in last


def test_a_bad_secret_key_names_delivery_secret_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_SECRET_KEY", "not-a-fernet-key-at-all")
    get_settings.cache_clear()
    code, out, err = run("channels", "add", "hooks", "webhook", "--set", "secret=whsec_" + "A" * 44)
    assert code == 1 and "Traceback" not in out + err
    assert "DELIVERY_SECRET_KEY" in err and "not-a-fernet-key-at-all" not in err


def test_schemas_out_refuses_a_file_and_names_an_unwritable_folder(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("keep me")
    code, out, err = run("schemas", "--out", str(tmp_path / "a-file"))
    assert code == 1 and "Traceback" not in out + err
    assert "--out" in err and "is a file" in err
    assert (tmp_path / "a-file").read_text() == "keep me"
    code, out, err = run("schemas", "--out", str(tmp_path / "a-file" / "below"))
    assert code == 1 and "Traceback" not in out + err
    assert str(tmp_path / "a-file" / "below") in err or str(tmp_path / "a-file") in err


@pytest.mark.parametrize("given", ["schemas", "schemas/json", "./schemas/json/v1", "{cwd}/schemas"])
def test_schemas_out_refuses_a_folder_that_could_shadow_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    # Given an application's directory (not delivery's checkout) as the current directory
    monkeypatch.chdir(tmp_path)
    code, out, err = run("schemas", "--out", given.format(cwd=tmp_path))
    assert code == 1 and "Traceback" not in out + err
    assert "shadow" in err and "'schemas'" in err and "--out json-schemas" in err
    assert not (tmp_path / "schemas").exists()


def test_schemas_out_writes_to_another_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for given in ("json-schemas", "docs/schemas", "schemas-json"):
        code, _, err = run("schemas", "--out", given)
        assert code == 0, err
        assert (tmp_path / given / "Payload.schema.json").is_file()


def test_schemas_out_may_write_into_our_own_schemas_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import schemas
    from delivery.cli.admin import _shadows_schemas

    # In delivery's own checkout, ``schemas`` is the package itself: nothing to shadow.
    monkeypatch.chdir(Path(schemas.__file__).resolve().parent.parent)
    assert not _shadows_schemas(Path("schemas/json"))


def test_an_unknown_revision_is_a_message(settings: Settings) -> None:
    code, _, err = run("db", "upgrade", "--revision", "no-such-revision")
    assert code == 1 and "cannot upgrade the delivery log" in err and "no-such-revision" in err


def _boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError(f"something broke near {PASSWORD}\nand a second line")


def test_an_unexpected_error_is_one_line_with_its_type_and_the_debug_hint(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("DELIVERY_DATABASE_URL", f"postgresql+psycopg://u:{PASSWORD}@db/x")
    environment.setattr(context, "assemble", _boom)
    code, out, err = run("log")
    assert code == 1 and "Traceback" not in out + err and PASSWORD not in out + err
    assert err.strip().splitlines() == [
        "error: unexpected RuntimeError: something broke near [redacted] "
        "(rerun with DELIVERY_DEBUG=1 to see the traceback)"
    ]


def test_delivery_debug_adds_the_traceback_still_without_the_secret(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("DELIVERY_DATABASE_URL", f"postgresql+psycopg://u:{PASSWORD}@db/x")
    environment.setenv("DELIVERY_DEBUG", "1")
    environment.setattr(context, "assemble", _boom)
    code, out, err = run("log")
    assert code == 1 and PASSWORD not in out + err
    assert "Traceback (most recent call last)" in err and "_boom" in err
    assert err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError")


@pytest.mark.parametrize(
    "args",
    [["lgo"], ["log", "--limit", "many"], ["db", "upgrade", "extra"], ["--no-such-option"]],
)
def test_usage_errors_stay_typers_with_exit_code_2(
    args: list[str], environment: pytest.MonkeyPatch
) -> None:
    code, out, err = run(*args)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "error: unexpected" not in err
    assert "Usage:" in err


def test_version_prints_the_installed_distributions_version() -> None:
    code, out, _ = run("--version")
    assert code == 0
    assert out.strip() == f"delivery {importlib.metadata.version('delivery')}"


def test_completion_options_are_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Wide enough that rich's help panel does not cut the option names (it did under 60).
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run("--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out
    code, out, _ = run("--show-completion", "bash")
    assert code == 0 and "_DELIVERY_COMPLETE=complete_bash" in out


def test_main_turns_a_failing_import_into_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(delivery.cli, "serve", raising=False)
    monkeypatch.setitem(sys.modules, "delivery.cli.serve", None)  # a broken install
    with pytest.raises(SystemExit) as exited:
        delivery.cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unexpected ModuleNotFoundError" in err and "delivery.cli.serve" in err
