"""``delivery inbound`` (backends), ``delivery inbox`` and ``delivery suppressions``."""

import contextlib
import json
from typing import Annotated

import typer
from rich.table import Table

from delivery.cli import app, fail, out, print_json, user_errors
from delivery.cli.channels import parse_settings
from delivery.cli.context import engine
from delivery.errors import DeliveryError
from delivery.inbound.wiring import Inbound

inbound = typer.Typer(
    help="Inbound backends: providers' requests at /inbound/NAME.", no_args_is_help=True
)
app.add_typer(inbound, name="inbound")
suppressions = typer.Typer(
    help="Addresses a channel no longer sends to (opt-outs, permanent bounces).",
    no_args_is_help=True,
)
app.add_typer(suppressions, name="suppressions")


def _inbound() -> Inbound:
    return Inbound.from_assembly(engine())


@inbound.command("add")
def add(
    name: str,
    kind: str,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE for one config field")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a backend of that name")
    ] = False,
) -> None:
    """Store a backend; its config is validated by the kind's config model now."""
    raw = parse_settings(set_ or [], None)
    parts = _inbound()
    with user_errors():
        backend = parts.backends.add(name, kind, raw, replace=replace)
    public = parts.assembly.settings.public_url
    where = f"{public.rstrip('/')}/inbound/{name}" if public else f"/inbound/{name}"
    out.print(f"inbound backend [bold]{backend.name}[/] ({backend.kind}) saved: {where}")


@inbound.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every backend, secrets masked."""
    summaries = _inbound().backends.summaries()
    if as_json:
        print_json({"backends": summaries})
        return
    table = Table("name", "kind", "path", "config")
    for b in summaries:
        table.add_row(b["name"], b["kind"], b["path"], json.dumps(b["config"], sort_keys=True))
    out.print(table)


@inbound.command("remove")
def remove(name: str) -> None:
    """Delete a backend: its requests get 404 from now on; its messages stay in the inbox."""
    if not _inbound().backends.remove(name):
        fail(f"no inbound backend named {name!r}")
    out.print(f"inbound backend [bold]{name}[/] removed")


@inbound.command("kinds")
def kinds(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The kinds the entry-point group delivery.inbound registers, with their config fields."""
    registry = _inbound().backends.registry
    described, broken = [], []
    for name in registry.names():
        try:
            described.append(registry.describe(name))
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the rest
            broken.append({"kind": name, "error": str(exc)})
    if as_json:
        print_json({"kinds": described, "broken": broken})
        return
    table = Table("kind", "version", "config fields")
    for d in described:
        fields = ", ".join(
            f"{f['name']}{'*' if f['required'] else ''}{' (secret)' if f['secret'] else ''}"
            for f in d["config_fields"]
        )
        table.add_row(d["kind"], d["version"] or "?", fields or "-")
    out.print(table)
    for b in broken:
        out.print(f"[red]{b['kind']}[/]: {b['error']}")


@app.command("inbox")
def inbox(
    backend: Annotated[str | None, typer.Option("--backend", help="Only this backend")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Received messages, newest first, and what handled them."""
    entries = _inbound().inbox.find(backend=backend, limit=limit)
    if as_json:
        print_json({"messages": [e.to_json() for e in entries]})
        return
    table = Table("received", "backend", "from", "text", "status", "handled by")
    for e in entries:
        table.add_row(
            e.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            e.backend,
            e.identity,
            e.text if len(e.text) <= 40 else e.text[:39] + "…",
            e.status,
            "; ".join(f"{h.handler}: {h.outcome} ({h.result or '-'})" for h in e.handling) or "-",
        )
    out.print(table)


@suppressions.command("list")
def suppressions_list(
    channel: Annotated[str | None, typer.Option("--channel")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Suppressed addresses, by channel."""
    found = _inbound().suppressions.list(channel=channel)
    if as_json:
        print_json({"suppressions": [s.to_json() for s in found]})
        return
    table = Table("channel", "address", "reason", "since", "detail")
    for s in found:
        table.add_row(
            s.channel,
            s.address,
            s.reason,
            s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            s.detail or "",
        )
    out.print(table)


@suppressions.command("add")
def suppressions_add(
    channel: str,
    address: str,
    reason: Annotated[str, typer.Option("--reason")] = "manual",
) -> None:
    """Stop sending to an address on a channel (written as its dispatcher writes it)."""
    parts = _inbound()
    with user_errors():
        # The check before each send compares canonical addresses (E.164 for SMS).
        address = parts.assembly.dispatchers.get(channel)[1].validate_address(address)
    parts.suppressions.add(channel, address, reason, detail="delivery suppressions add")
    out.print(f"{address} suppressed on [bold]{channel}[/]")


@suppressions.command("remove")
def suppressions_remove(channel: str, address: str) -> None:
    """Send to an address on a channel again."""
    parts = _inbound()
    # A removed channel's entries are removed as they were written.
    with contextlib.suppress(DeliveryError):
        address = parts.assembly.dispatchers.get(channel)[1].validate_address(address)
    if not parts.suppressions.remove(channel, address):
        fail(f"{address} is not suppressed on channel {channel!r}")
    out.print(f"{address} no longer suppressed on [bold]{channel}[/]")
