"""``delivery keys add``, ``list`` and ``revoke``: the API keys of ``delivery serve``."""

from typing import Annotated

import typer
from rich.table import Table

from delivery.api.keys import KeyStore
from delivery.cli import app, fail, out, print_json, user_errors
from delivery.cli.context import delivery_log

keys = typer.Typer(help="API keys for `delivery serve`.", no_args_is_help=True)
app.add_typer(keys, name="keys")


def _store() -> KeyStore:
    return KeyStore(delivery_log().engine)


@keys.command("add")
def add(name: str) -> None:
    """Make a new API key and print it once: only its hash is kept."""
    with user_errors():
        _, key = _store().add(name)
    # The key alone on stdout, so `KEY=$(delivery keys add billing)` works.
    typer.echo(key)
    typer.echo(
        f"API key {name!r} made; this is the only time it is shown. "
        "Send it as `Authorization: Bearer <key>`.",
        err=True,
    )


@keys.command("list")
def list_keys(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every API key: name, public key id, when made and when revoked (never the key)."""
    found = _store().list()
    if as_json:
        print_json({"keys": [k.to_json() for k in found]})
        return
    table = Table("name", "key id", "created", "revoked")
    for k in found:
        table.add_row(
            k.name,
            k.key_id,
            k.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-",
        )
    out.print(table)


@keys.command("revoke")
def revoke(name: str) -> None:
    """Revoke an API key: requests with it get 401 within a few seconds."""
    if not _store().revoke(name):
        fail(f"no active API key named {name!r} (see `delivery keys list`)")
    out.print(f"API key {name!r} revoked")
