"""Setting up: the log's schema, dispatchers, keys, JSON Schemas, and running a worker."""

import base64
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.table import Table

from delivery import collector
from delivery.cli import app, err, fail, out, print_json, safe_url
from delivery.cli.context import registry
from delivery.engine.crypto import generate_key
from delivery.log import migrate
from delivery.log.database import get_engine
from delivery.log.migrate import upgrade
from schemas import Envelope, Message, Payload, get_settings

if TYPE_CHECKING:
    from celery import Celery

db = typer.Typer(help="The delivery log's database.", no_args_is_help=True)
app.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or update the delivery log's tables (Alembic migrations)."""
    from alembic.util import CommandError

    url = get_settings().resolved_database_url
    get_engine(url)  # a bad URL or a missing driver is named here; creates the SQLite folder
    try:
        upgrade(url, revision)
    except CommandError as exc:  # e.g. an unknown revision; anything else: the CLI's boundary
        fail(f"cannot upgrade the delivery log: {exc}")
    out.print(f"delivery log at [bold]{safe_url(url)}[/] is up to date")


def _revisions() -> tuple[str, frozenset[str], frozenset[str]]:
    """The log's URL (masked), the migrations it records as applied last, and the head."""
    url = get_settings().resolved_database_url
    return safe_url(url), migrate.current(get_engine(url)), migrate.heads()


def _state(applied: frozenset[str], head: frozenset[str]) -> str:
    """Where the log stands, in words that say what to do about it."""
    if applied == head:
        return f"is at revision {_ids(applied)} (head)"
    if not applied:
        return "has no migrations applied: run `delivery db upgrade`"
    if not applied <= {revision.id for revision in migrate.history()}:
        return (
            f"is at revision {_ids(applied)}, which this version of delivery does not know "
            f"(its head is {_ids(head)}): was it migrated by a newer release?"
        )
    return f"is at revision {_ids(applied)}, behind head {_ids(head)}: run `delivery db upgrade`"


def _ids(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


@db.command("current")
def db_current(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """Print the log's migration revision and whether it is at head."""
    url, applied, head = _revisions()
    if as_json:
        print_json(
            {
                "database": url,
                "revision": _ids(applied) if applied else None,
                "head": _ids(head),
                "at_head": applied == head,
            }
        )
        return
    out.print(f"delivery log at [bold]{url}[/] {_state(applied, head)}", soft_wrap=True)


@db.command("history")
def db_history(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """List the migrations in the order they are applied, oldest first."""
    revisions = migrate.history()
    head = migrate.heads()
    if as_json:
        print_json(
            {
                "revisions": [
                    {
                        "revision": r.id,
                        "down_revision": r.down_revision,
                        "title": r.title,
                        "head": r.id in head,
                    }
                    for r in revisions
                ]
            }
        )
        return
    table = Table("#", "revision", "revises", "title")
    for position, r in enumerate(revisions, start=1):
        mark = " (head)" if r.id in head else ""
        table.add_row(str(position), r.id + mark, r.down_revision or "-", r.title)
    out.print(table)


@db.command("check")
def db_check() -> None:
    """Exit non-zero unless the log is at head (for deploy scripts)."""
    url, applied, head = _revisions()
    state = _state(applied, head)
    if applied != head:
        fail(f"the delivery log at {url} {state}")
    out.print(f"delivery log at [bold]{url}[/] {state}", soft_wrap=True)


@app.command("dispatchers")
def dispatchers(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """List the dispatchers the entry-point group delivery.dispatchers registers."""
    reg = registry()
    described, broken = [], []
    for name in reg.names():
        try:
            described.append(reg.describe(name))
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the rest
            broken.append({"slug": name, "error": str(exc)})
    if as_json:
        print_json({"dispatchers": described, "broken": broken})
        return
    table = Table("slug", "version", "protocol", "address types", "config fields")
    for d in described:
        fields = ", ".join(
            f"{f['name']}{'*' if f['required'] else ''}{' (secret)' if f['secret'] else ''}"
            for f in d["config_fields"]
        )
        table.add_row(
            d["slug"],
            d["version"] or "?",
            d["protocol"]["name"],
            ", ".join(d["address_types"]),
            fields or "-",
        )
    out.print(table)
    out.print("* required")
    for b in broken:
        out.print(f"[red]{b['slug']}[/]: {b['error']}")


@app.command("keygen")
def keygen(
    webhook: Annotated[
        bool, typer.Option("--webhook", help="A Standard Webhooks signing secret instead")
    ] = False,
    write: Annotated[
        bool, typer.Option("--write", help="Save as DELIVERY_HOME/secret.key")
    ] = False,
) -> None:
    """Print a new DELIVERY_SECRET_KEY (or, with --webhook, a whsec_ signing secret)."""
    if webhook:
        typer.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
        return
    key = generate_key()
    if not write:
        typer.echo(key)
        return
    path = get_settings().key_file
    if path.exists():
        fail(f"{path} exists; remove it first if you mean to replace the key")
    write_key_file(path, key)
    out.print(f"key written to {path} (readable by you only)")


def write_key_file(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")


#: Where docs/sending.md suggests ``delivery schemas --out`` writes: any name but ``schemas``.
SCHEMAS_OUT = "json-schemas"


def _shadows_schemas(out_dir: Path) -> bool:
    """Whether ``out_dir`` is, or is inside, a folder ``schemas`` in the current directory
    that is not our ``schemas`` package. Python puts the current directory first on
    ``sys.path`` (``python -m delivery``, ``PYTHONPATH=.``, a test runner), where such a
    folder can shadow the package (see delivery/_layout.py)."""
    import schemas

    here = Path.cwd()
    target = Path(os.path.abspath(here / out_dir))  # by name: a symlink is a folder too
    folder = here / "schemas"
    if target != folder and folder not in target.parents:
        return False
    return folder.resolve() != Path(schemas.__file__).resolve().parent


@app.command("schemas")
def export_schemas(
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help=f"Write one file per model here, e.g. {SCHEMAS_OUT}"),
    ] = None,
) -> None:
    """JSON Schemas of the messages, for producers written in other languages."""
    docs = {model.__name__: model.model_json_schema() for model in (Payload, Message, Envelope)}
    if out_dir is None:
        print_json(docs)
        return
    if _shadows_schemas(out_dir):
        fail(
            f"--out {out_dir} would write into a folder named 'schemas' in the current "
            "directory, which can shadow delivery's own `schemas` package on sys.path; "
            f"give another name, e.g. --out {SCHEMAS_OUT}"
        )
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir} is a file: give a folder (it is created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (out_dir / f"{name}.schema.json").write_text(json.dumps(doc, indent=2) + "\n")
    out.print(f"wrote {len(docs)} schemas to {out_dir}")


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("worker", context_settings=PASS_THROUGH)
def worker(
    ctx: typer.Context,
    beat: Annotated[
        bool, typer.Option("--beat", hidden=True, help="Not needed: workers sweep by themselves")
    ] = False,
) -> None:
    """Run a Celery worker with the project's defaults; other options go to Celery."""
    from delivery.cli.context import delivery_log

    # A bad DELIVERY_ variable, or a log without tables, stops the worker here, with a
    # message, not every task.
    delivery_log()
    collector.pause()  # until Celery has imported the tasks (workers/app.py resumes it)
    try:
        from workers.app import app as celery_app

        if beat:
            err.print(
                "note: --beat is no longer needed: the workers take turns at the sweep themselves"
            )
        pool = _pool_option(ctx.args)
        if pool is not None:
            # Celery cannot tell an explicit "--pool prefork" from its default and would
            # keep the configured pool, so set the configuration itself.
            celery_app.conf.worker_pool = pool
        code = _celery_worker(celery_app, ctx.args)
    finally:
        collector.resume()  # had Celery stopped before its workers started (a bad option)
    if code:
        raise typer.Exit(code)


def _celery_worker(celery_app: "Celery", args: list[str]) -> int:
    """Celery's ``worker`` command alone, as ``celery worker`` runs it; its exit code.

    Not through the ``celery`` command group (``Celery.worker_main``): the group imports
    every installed ``celery.commands`` plugin first (Flower, and with it redis.asyncio),
    a quarter of a worker's start-up CPU, for commands a worker never runs.
    """
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker as worker_command

    context = CLIContext(
        app=celery_app, no_color=bool(os.environ.get("NO_COLOR")), workdir=None, quiet=False
    )
    try:
        code = worker_command.main(
            args=args, prog_name="delivery worker", obj=context, standalone_mode=False
        )
    except click.UsageError as exc:
        fail(f"{exc.format_message()} (see `delivery worker --help` and `celery worker --help`)", 2)
    return code if isinstance(code, int) else 0


def _pool_option(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg in ("--pool", "-P") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
    return None


@app.command("beat", context_settings=PASS_THROUGH)
def beat_command(ctx: typer.Context) -> None:
    """Run Celery beat, for schedules of your own: the sweep needs none (workers take turns)."""
    from delivery.cli.context import delivery_log

    delivery_log()
    err.print("note: the sweep needs no beat: the workers take turns at it themselves")
    from workers.app import app as celery_app

    celery_app.start(["beat", *ctx.args])


# `db purge` and `stats` live with retention; importing them here registers them with `db`.
from delivery.cli import retention  # noqa: E402, F401
