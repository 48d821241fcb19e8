"""``delivery preferences set`` and ``show``: what one recipient agreed to receive, and when."""

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from delivery.cli import app, fail, out, print_json
from delivery.cli.context import delivery_log
from delivery.recipients.preferences import (
    Preferences,
    RecipientPreferences,
    Rule,
    check_category,
    check_channel,
    check_key,
)
from delivery.recipients.quiet import QuietHours, check_timezone

preferences = typer.Typer(
    help="Recipients' preferences: channels and categories on or off, quiet hours.",
    no_args_is_help=True,
)
app.add_typer(preferences, name="preferences")

#: ``--quiet none`` clears the quiet hours.
CLEAR = "none"


def _store() -> Preferences:
    return Preferences(delivery_log().engine)


@preferences.command("set")
def set_(
    address: str,
    channel: Annotated[
        str | None, typer.Option("--channel", help="Only on this channel (default: any).")
    ] = None,
    category: Annotated[
        str | None, typer.Option("--category", help="Only this category (default: any).")
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Turn it off.")] = False,
    on: Annotated[bool, typer.Option("--on", help="Turn it (back) on.")] = False,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA time zone, e.g. Europe/London.")
    ] = None,
    quiet: Annotated[
        str | None,
        typer.Option("--quiet", help=f"Quiet hours HH:MM-HH:MM local time, or '{CLEAR}'."),
    ] = None,
) -> None:
    """Turn a channel and/or category on or off for ADDRESS, or set its quiet hours.

    The most specific rule wins: channel and category, then category, then channel.
    """
    if off and on:
        fail("give --on or --off, not both")
    toggles = off or on
    if (channel is not None or category is not None) and not toggles:
        fail("say whether to turn it on or off: add --on or --off")
    if not toggles and timezone is None and quiet is None:
        fail("nothing to set: give --on/--off, --timezone or --quiet (see --help)")
    try:
        key = check_key(address)
        rule = (
            Rule(
                channel=None if channel is None else check_channel(channel),
                category=None if category is None else check_category(category),
                enabled=on,
            )
            if toggles
            else None
        )
        zone = None if timezone is None else check_timezone(timezone)
        window = (
            None if quiet is None or quiet.strip().lower() == CLEAR else QuietHours.parse(quiet)
        )
    except ValueError as exc:
        fail(str(exc))

    def change(current: RecipientPreferences) -> RecipientPreferences:
        if rule is not None:
            current = current.with_rule(rule)
        return RecipientPreferences(
            rules=current.rules,
            timezone=zone or current.timezone,
            quiet=current.quiet if quiet is None else window,
        )

    try:
        result = _store().update(key, change)
    except ValueError as exc:
        fail(str(exc))
    out.print(f"preferences of {escape(key)} saved", highlight=False)
    _print(key, result)


@preferences.command("show")
def show(
    address: str,
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
) -> None:
    """What ADDRESS has chosen; without rules everything is on."""
    try:
        key = check_key(address)
    except ValueError as exc:
        fail(str(exc))
    found = _store().show(key)
    if as_json:
        print_json({"address": key, **found.to_json()})
        return
    _print(key, found)


def _print(key: str, found: RecipientPreferences) -> None:
    doc = found.to_json()
    out.print(f"address:  {escape(key)}", highlight=False)
    out.print(f"timezone: {escape(doc['timezone'] or '- (UTC)')}", highlight=False)
    out.print(f"quiet:    {escape(doc['quiet'] or '-')}", highlight=False)
    if not doc["rules"]:
        out.print("rules:    none (everything on)")
        return
    table = Table("channel", "category", "")
    for rule in doc["rules"]:
        table.add_row(
            escape(rule["channel"] or "any"),
            escape(rule["category"] or "any"),
            "on" if rule["enabled"] else "off",
        )
    out.print(table)
