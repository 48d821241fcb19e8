"""``delivery outbox relay``: publish what applications committed to their outbox."""

import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Annotated
from urllib.parse import unquote

import typer

from delivery.cli import app, fail, out
from delivery.redaction import redactor

if TYPE_CHECKING:  # SQLAlchemy and the relay load when the command runs, not with the CLI
    from sqlalchemy import Engine

    from delivery.outbox import Relay

outbox = typer.Typer(
    help="The transactional outbox: deliveries sent inside an application's transaction.",
    no_args_is_help=True,
)
app.add_typer(outbox, name="outbox")

_URL_HELP = (
    "The application database whose delivery_outbox table to relay, as a SQLAlchemy URL "
    "(postgresql+psycopg://user:password@host/app, sqlite:///app.sqlite3)."
)


@outbox.command("relay")
def relay(
    database_url: Annotated[str, typer.Option("--database-url", help=_URL_HELP)],
    once: Annotated[
        bool, typer.Option("--once", help="Relay what is committed now, then exit.")
    ] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, max=5000, help="Rows per publish.")] = 500,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.01, help="Seconds between looks at an empty outbox."),
    ] = 1.0,
) -> None:
    """Publish committed outbox rows, oldest first, and delete each once the broker has it.

    Runs until stopped (SIGTERM, Ctrl-C), waiting quietly while the database or the broker
    is away. Several relays may share a PostgreSQL database (SKIP LOCKED); on SQLite, run
    one. A relay killed at any moment loses nothing and sends nothing twice.
    """
    from delivery.outbox import Relay
    from delivery.producer.publisher import get_publisher

    engine = _engine(database_url)
    worker = Relay(engine, get_publisher(), batch=batch)
    try:
        if once:
            _relay_once(worker)
            return
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        stop = threading.Event()

        def _stop(_signal: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        logging.getLogger(__name__).info("relaying the outbox of %s", worker.where)
        worker.run(stop, interval=interval)
    finally:
        engine.dispose()


def _relay_once(worker: "Relay") -> None:
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        count = worker.drain()
    except DBAPIError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        if "delivery_outbox" in reason:  # e.g. no such table: the app has not migrated
            reason += " (the application's migrations create it: see docs/outbox.md)"
        fail(redactor.redact(f"cannot relay the outbox of {worker.where}: {reason}"))
    except SQLAlchemyError as exc:
        fail(redactor.redact(f"cannot relay the outbox of {worker.where}: {type(exc).__name__}"))
    out.print(f"relayed {count} deliveries from {worker.where}", highlight=False)


def _engine(url: str) -> "Engine":
    """An engine for ``url``, or a usage error (exit 2) saying what is wrong with it. The
    URL itself is never repeated: it may hold a password."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise typer.BadParameter(
            "not a database URL; give one such as postgresql+psycopg://user@host/app or "
            "sqlite:///app.sqlite3",
            param_hint="'--database-url'",
        ) from None
    if parsed.password:
        # Out of every log line and message from here on, however it got there.
        password = str(parsed.password)
        redactor.register([password, unquote(password)])
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except ArgumentError:  # NoSuchModuleError among them: a dialect nobody installed
        raise typer.BadParameter(
            f"no database dialect {parsed.drivername!r}; give one such as "
            "postgresql+psycopg://… or sqlite:///…",
            param_hint="'--database-url'",
        ) from None
    except ModuleNotFoundError as exc:
        raise typer.BadParameter(
            f"the driver for {parsed.drivername!r} is not installed (no module named {exc.name!r})",
            param_hint="'--database-url'",
        ) from None
