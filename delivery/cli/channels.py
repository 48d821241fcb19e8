"""``delivery channels``: add, list and remove named, configured dispatchers."""

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from delivery.cli import app, fail, out, print_json, user_errors
from delivery.cli.context import channel_store, engine
from delivery.engine.channels import parse_receipt_timeout, parse_retry_schedule
from delivery.errors import ConfigurationError
from delivery.notifications.operational import pause_by_hand

channels = typer.Typer(help="Named, configured dispatchers.", no_args_is_help=True)
app.add_typer(channels, name="channels")


def parse_settings(pairs: list[str], config_json: str | None) -> dict[str, Any]:
    """Dispatcher config from ``--config JSON`` overlaid with ``--set KEY=VALUE`` pairs."""
    raw: dict[str, Any] = {}
    if config_json:
        try:
            loaded = json.loads(config_json)
        except json.JSONDecodeError as exc:
            fail(f"--config is not valid JSON: {exc.msg} at position {exc.pos}")
        if not isinstance(loaded, dict):
            fail("--config must be a JSON object")
        raw.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--set takes KEY=VALUE, got {pair.split('=')[0]!r}")
        raw[key.strip()] = value
    return raw


def _receipt_timeout(value: str | None) -> float | None:
    """``--receipt-timeout`` in seconds; a bad value is a usage error (exit code 2)."""
    if value is None:
        return None
    try:
        return parse_receipt_timeout(value)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc)) from None


@channels.command("add")
def add(
    name: str,
    dispatcher: str,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE for one config field")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="Config fields as a JSON object")
    ] = None,
    retry_schedule: Annotated[
        str | None, typer.Option("--retry-schedule", help="Seconds before each attempt: 0,5,300,…")
    ] = None,
    rate_limit: Annotated[str | None, typer.Option("--rate-limit", help="e.g. 1/s, 60/m")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a channel of that name")
    ] = False,
    fallback: Annotated[
        str | None,
        typer.Option("--fallback", help="Backup channel for when this one's provider is down"),
    ] = None,
    per_recipient: Annotated[
        str | None,
        typer.Option(
            "--per-recipient", help="At most N deliveries per address and period, e.g. 3/h"
        ),
    ] = None,
    receipt_timeout: Annotated[
        float | None,
        typer.Option(
            "--receipt-timeout",
            parser=_receipt_timeout,
            metavar="DURATION",
            help="Look a delivery up at the provider when no receipt came by then, "
            "e.g. 72h (the default), 30m, 2d",
        ),
    ] = None,
) -> None:
    """Store a channel; its config is validated by the dispatcher's config model now."""
    raw = parse_settings(set_ or [], config)
    if fallback is not None and not fallback.strip():
        fail("--fallback needs a channel name (leave it out for no backup)")
    store = channel_store()
    with user_errors():
        # ``is not None``: an empty --retry-schedule is a mistake to report, not "the default".
        schedule = parse_retry_schedule(retry_schedule) if retry_schedule is not None else None
        channel = store.add(
            name,
            dispatcher,
            raw,
            retry_schedule=schedule,
            rate_limit=rate_limit,
            replace=replace,
            fallback=fallback,
            per_recipient=per_recipient,
            receipt_timeout=receipt_timeout,
        )
    out.print(f"channel [bold]{channel.name}[/] ({channel.dispatcher}) saved")


@channels.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every channel, secrets masked."""
    summaries = channel_store().summaries()
    if as_json:
        print_json({"channels": summaries})
        return
    table = Table(
        "name",
        "dispatcher",
        "config",
        "retry schedule",
        "rate limit",
        "per recipient",
        "receipt timeout",
        "fallback",
        "state",
    )
    for c in summaries:
        table.add_row(
            c["name"],
            c["dispatcher"],
            json.dumps(c["config"], sort_keys=True),
            ",".join(f"{d:g}" for d in c["retry_schedule"]) if c["retry_schedule"] else "default",
            c["rate_limit"] or "-",
            c["per_recipient"] or "-",
            f"{c['receipt_timeout'] / 3600:g}h",
            c["fallback"] or "-",
            c["state"]
            + (f" until {c['breaker_open_until'][:19]}" if c["breaker_open_until"] else ""),
        )
    out.print(table)


@channels.command("pause")
def pause(name: str) -> None:
    """Hold a channel's deliveries: they wait, without spending attempts, until resumed."""
    if not pause_by_hand(engine(), name, paused=True):
        fail(f"no channel named {name!r}")
    out.print(f"channel [bold]{name}[/] paused")


@channels.command("resume")
def resume(name: str) -> None:
    """Let a paused channel send again (also closes its circuit breaker)."""
    if not pause_by_hand(engine(), name, paused=False):
        fail(f"no channel named {name!r}")
    out.print(f"channel [bold]{name}[/] resumed")


@channels.command("remove")
def remove(name: str) -> None:
    """Delete a channel. Deliveries still queued for it will fail with a clear reason."""
    if not channel_store().remove(name):
        fail(f"no channel named {name!r}")
    out.print(f"channel [bold]{name}[/] removed")
