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
def add(
    name: str,
    admin: Annotated[
        bool,
        typer.Option("--admin", help="Sees and acts on every delivery, not only its own."),
    ] = False,
    test: Annotated[
        bool,
        typer.Option(
            "--test",
            help="Its deliveries go the whole way through the workers and end delivered, "
            "but no provider is called.",
        ),
    ] = False,
) -> None:
    """Make a new API key and print it once: only its hash is kept. A key sees and acts
    only on the deliveries it sent."""
    with user_errors():
        _, key = _store().add(name, admin=admin, test=test)
    # The key alone on stdout, so `KEY=$(delivery keys add billing)` works.
    typer.echo(key)
    kind = " (admin)" if admin else ""
    kind += " (test: no provider is called)" if test else ""
    typer.echo(
        f"API key {name!r}{kind} made; this is the only time it is shown. "
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
    table = Table("name", "key id", "kind", "created", "revoked")
    for k in found:
        table.add_row(
            k.name,
            k.key_id,
            ", ".join(kind for kind, on in (("admin", k.admin), ("test", k.test)) if on) or "-",
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
