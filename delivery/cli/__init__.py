"""The ``delivery`` command line. Errors go to stderr with a non-zero exit.

Every command runs inside one boundary, ``user_errors``: whatever a command raises becomes
one line on stderr saying what to fix (the setting or path it came from, secrets masked)
and exit code 1. Typer's own usage errors keep exit code 2. ``DELIVERY_DEBUG=1`` prints the
traceback as well, for a bug report.
"""

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import unquote, urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from delivery import collector, extras
from delivery.errors import DeliveryError, PublishError, RegistryError
from delivery.redaction import redactor
from schemas.validation import explain

__all__ = ["app", "err", "fail", "main", "out", "print_json", "safe_url", "user_errors"]

#: Set (to anything but 0, false or no) to print the traceback under an error's message.
DEBUG_VARIABLE = "DELIVERY_DEBUG"


class _Commands(TyperGroup):
    """The root command group: every command, and the callback, run inside ``user_errors``."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context, not public
        with user_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="delivery",
    cls=_Commands,
    help="Queued, retried and logged deliveries: webhooks, email, Slack, SMS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    # Escaped: a message is text, and "[redacted]" or "[0, 5]" are not markup. soft_wrap:
    # one line whatever the terminal's width, so it can be grepped and pasted.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _print_version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"delivery {version('delivery')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("delivery (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    pass


def _usage_error() -> type[Exception]:
    """The class of typer's usage errors: click's ClickException, which typer vendors from
    0.2x on and takes from click before (older typer has no TyperException)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


#: Exits, aborts and typer's usage errors (exit code 2) pass through ``user_errors``.
_TYPER_EXITS = (typer.Exit, typer.Abort, _usage_error())


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn any error into a message naming what to fix, and exit code 1."""
    try:
        yield
    except _TYPER_EXITS:
        raise  # exits, and typer's usage errors (exit code 2), stay as they are
    except Exception as exc:  # noqa: BLE001 - the last guard: no traceback, ever
        if _debug():
            err.file.write(_scrubbed("".join(traceback.format_exception(exc))))
        try:
            message = _message(exc)
        except Exception:  # noqa: BLE001 - e.g. the settings, read for a hint, are invalid too
            message = f"{type(exc).__name__}: {_first_line(exc)}"
        fail(_scrubbed(message))


def _message(exc: Exception) -> str:
    """What went wrong and which setting or path to fix: one line, or one per field."""
    missing = extras.explain(exc, "this command")
    if missing is not None:  # e.g. `delivery serve` on an install without `[server]`
        return missing
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if isinstance(exc, ValidationError):
        if exc.title == "Settings":
            from schemas.settings import describe

            return f"invalid settings: {describe(exc)}"
        return "\n".join(explain(exc))
    if isinstance(exc, RegistryError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PublishError) and "DELIVERY_BROKER_URL" not in str(exc):
        return f"{exc} (check DELIVERY_BROKER_URL)"
    if isinstance(exc, DeliveryError):
        return str(exc)
    if isinstance(exc, DBAPIError):
        return f"cannot use the delivery log at {_log_url()}: {_first_line(exc.orig or exc)}"
    if isinstance(exc, SQLAlchemyError):
        return f"the delivery log at {_log_url()} failed: {type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot use {exc.filename}: {exc.strerror or exc}{_home_hint(Path(exc.filename))}"
    if _is_broker_error(exc):
        return (
            f"cannot reach the broker at {_broker_url()}: {type(exc).__name__}: {_first_line(exc)}"
        )
    return (
        f"unexpected {type(exc).__name__}: {_first_line(exc)} "
        f"(rerun with {DEBUG_VARIABLE}=1 to see the traceback)"
    )


def safe_url(url: str) -> str:
    """A database URL as shown to a person: its password masked, nothing if unreadable."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a URL that cannot be read)"


def _log_url() -> str:
    """The log's URL, masked, and the setting that chose it."""
    from schemas import get_settings

    settings = get_settings()  # valid: the log was opened from it
    setting = "DELIVERY_DATABASE_URL" if settings.database_url else "DELIVERY_HOME"
    return f"{safe_url(settings.resolved_database_url)} ({setting})"


def _broker_url() -> str:
    from kombu.utils.url import maybe_sanitize_url

    from schemas import get_settings

    return f"{maybe_sanitize_url(get_settings().broker_url)} (DELIVERY_BROKER_URL)"


def _is_broker_error(exc: Exception) -> bool:
    from kombu.exceptions import KombuError
    from redis.exceptions import RedisError

    return isinstance(exc, KombuError | RedisError)


def _home_hint(path: Path) -> str:
    from schemas import get_settings

    home = Path(os.path.abspath(get_settings().home))
    path = Path(os.path.abspath(path))
    if path == home or home in path.parents or path in home.parents:
        return f" (DELIVERY_HOME is {home}: make it a folder you can write, or set another)"
    return ""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _scrubbed(text: str) -> str:
    """``text`` without the secrets the environment holds, read raw: the settings may be
    what is wrong. Through the process's redactor, so its log records lose them too."""
    redactor.register(_environment_secrets())
    return redactor.redact(text)


def _environment_secrets() -> Iterator[str]:
    for name, value in os.environ.items():
        name = name.upper()
        if name == "DELIVERY_SECRET_KEY":
            yield value
        elif name in ("DELIVERY_DATABASE_URL", "DELIVERY_BROKER_URL"):
            yield from _url_secrets(value)
        elif name == "DELIVERY_OUTBOX_URLS":  # several, separated by commas
            for url in value.split(","):
                yield from _url_secrets(url.strip())


def _url_secrets(value: str) -> Iterator[str]:
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password:
        yield from (password, unquote(password))
    elif "@" in value:  # a URL too broken to find its password in: hide it whole
        yield value


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def main() -> None:
    try:
        with user_errors():
            from delivery.cli import (  # noqa: F401 - registers commands
                admin,
                channels,
                deliveries,
                demo,
                erase,
                events,
                inbound,
                keys,
                outbox,
                preferences,
                serve,
            )
    except typer.Exit as exc:  # outside typer, which would turn it into an exit code
        sys.exit(exc.exit_code)
    collector.resume()
    app()
