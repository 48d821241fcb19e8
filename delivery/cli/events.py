"""``delivery templates``, ``delivery subscriptions`` and ``delivery notify``; the event
half of ``delivery status``."""

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.table import Table

from delivery.cli import app, fail, out, print_json, user_errors
from delivery.cli.context import delivery_log
from delivery.notifications import EventStore, SubscriptionStore, TemplateStore
from delivery.notifications.periods import check_period
from delivery.producer.events import notify
from schemas.messages import Category, PerRecipient

templates = typer.Typer(help="Templates rendered with an event's context.", no_args_is_help=True)
subscriptions = typer.Typer(help="Who hears of which event, and how.", no_args_is_help=True)
app.add_typer(templates, name="templates")
app.add_typer(subscriptions, name="subscriptions")


def _templates() -> TemplateStore:
    return TemplateStore(delivery_log().engine)


def _subscriptions() -> SubscriptionStore:
    return SubscriptionStore(delivery_log().engine)


def _checked(adapter: TypeAdapter[str]) -> Callable[[str | None], str | None]:
    """A typer callback refusing a bad value as a usage error (exit code 2), in the
    schema's own words."""

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise typer.BadParameter(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None

    return check


def _digest_period(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        check_period(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


_category = _checked(TypeAdapter(Category))
_per_recipient = _checked(TypeAdapter(PerRecipient))
CategoryOption = Annotated[
    str | None,
    typer.Option(
        "--category",
        callback=_category,
        help="What kind of message: security, marketing… (preferences and unsubscribe "
        "links act on it)",
    ),
]


def _short(text: str | None, width: int = 40) -> str:
    if text is None:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@templates.command("add")
def templates_add(
    name: str,
    subject: Annotated[str | None, typer.Option("--subject", help="Subject template")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Text template")] = None,
    html: Annotated[str | None, typer.Option("--html", help="HTML template (escaped)")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite one of that name")] = False,
) -> None:
    """Store a template; it is compiled now, and refused (naming the line) if it cannot be."""
    with user_errors():
        template = _templates().add(name, subject=subject, text=text, html=html, replace=replace)
    out.print(f"template [bold]{template.name}[/] saved")


@templates.command("list")
def templates_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every template."""
    found = _templates().all()
    if as_json:
        print_json({"templates": [t.to_json() for t in found]})
        return
    table = Table("name", "subject", "text", "html")
    for t in found:
        table.add_row(t.name, _short(t.subject), _short(t.text), _short(t.html))
    out.print(table)


@templates.command("show")
def templates_show(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One template, every part in full."""
    template = _templates().get(name)
    if template is None:
        fail(f"no template named {name!r}")
    if as_json:
        print_json(template.to_json())
        return
    for part in ("subject", "text", "html"):
        source = getattr(template, part)
        out.print(f"[bold]{part}[/]:", highlight=False)
        out.print(source if source is not None else "-", markup=False, highlight=False)


@templates.command("remove")
def templates_remove(name: str) -> None:
    """Delete a template no subscription uses."""
    with user_errors():
        removed = _templates().remove(name)
    if not removed:
        fail(f"no template named {name!r}")
    out.print(f"template [bold]{name}[/] removed")


@subscriptions.command("add")
def subscriptions_add(
    event: str,
    channel: str,
    address: Annotated[str, typer.Argument(help="The address, or a template of it: '{{ email }}'")],
    template: Annotated[str | None, typer.Option("--template", help="Template name")] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="Expression on the context, e.g. 'order.total > 100'"),
    ] = None,
    category: CategoryOption = None,
    per_recipient: Annotated[
        str | None,
        typer.Option(
            "--per-recipient",
            metavar="N/PERIOD",
            callback=_per_recipient,
            help="At most N deliveries per address per s, m or h, e.g. 3/h; more are skipped",
        ),
    ] = None,
    digest: Annotated[
        str | None,
        typer.Option(
            "--digest",
            metavar="PERIOD",
            callback=_digest_period,
            help="Collect the events of each window (15m, 1h, 1d) into one delivery, "
            "rendered with {{ events }}",
        ),
    ] = None,
) -> None:
    """Subscribe an address on a channel to an event; prints the subscription's id."""
    with user_errors():
        subscription = _subscriptions().add(
            event,
            channel,
            address,
            template=template,
            filter=filter_,
            category=category,
            per_recipient=per_recipient,
            digest=digest,
        )
    typer.echo(subscription.id)


@subscriptions.command("list")
def subscriptions_list(
    event: Annotated[str | None, typer.Option("--event", help="Only this event")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every subscription, by event."""
    found = _subscriptions().all(event=event)
    if as_json:
        print_json({"subscriptions": [s.to_json() for s in found]})
        return
    table = Table("id", "event", "channel", "address", "template", "filter", "options", "state")
    for s in found:
        table.add_row(
            s.id,
            s.event,
            s.channel,
            _short(s.address),
            s.template or "-",
            _short(s.filter),
            _options(s.category, s.per_recipient, s.digest),
            "paused" if s.paused else "active",
        )
    out.print(table)


def _options(category: str | None, per_recipient: str | None, digest: str | None) -> str:
    pairs = (("category", category), ("per-recipient", per_recipient), ("digest", digest))
    return ", ".join(f"{name} {value}" for name, value in pairs if value) or "-"


def _set_paused(subscription_id: str, paused: bool) -> None:
    if not _subscriptions().set_paused(subscription_id, paused):
        fail(f"no subscription {subscription_id!r}")
    out.print(f"subscription {subscription_id} {'paused' if paused else 'resumed'}")


@subscriptions.command("pause")
def subscriptions_pause(subscription_id: str) -> None:
    """Stop making deliveries for a subscription until it is resumed."""
    _set_paused(subscription_id, True)


@subscriptions.command("resume")
def subscriptions_resume(subscription_id: str) -> None:
    """Make deliveries for a paused subscription again (for events from now on)."""
    _set_paused(subscription_id, False)


@subscriptions.command("remove")
def subscriptions_remove(subscription_id: str) -> None:
    """Delete a subscription."""
    if not _subscriptions().remove(subscription_id):
        fail(f"no subscription {subscription_id!r}")
    out.print(f"subscription {subscription_id} removed")


@app.command("notify")
def notify_command(
    event: str,
    context: Annotated[
        str, typer.Option("--context", help="The event's context: a JSON object")
    ] = "{}",
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    category: CategoryOption = None,
) -> None:
    """Publish an event to its subscriptions and print the event's id. ``--category``
    overrides each subscription's own."""
    try:
        loaded: Any = json.loads(context, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        fail(f"--context is not valid JSON: {exc.msg} at position {exc.pos}")
    except ValueError as exc:
        fail(f"--context is not strict JSON: {exc}")
    if not isinstance(loaded, dict):
        fail("--context must be a JSON object")
    with user_errors():
        receipt = notify(event, loaded, idempotency_key=idempotency_key, category=category)
    typer.echo(receipt.id)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def show_event(event_id: str, *, as_json: bool) -> bool:
    """Print the event and the deliveries it made (``delivery status``). False if the log
    knows no event of that id."""
    record = EventStore(delivery_log().engine).get(event_id)
    if record is None:
        return False
    if as_json:
        print_json(record.to_json())
        return True
    state = "fanned out" if record.fanned_out_at else "received, not yet fanned out"
    out.print(f"[bold]{record.id}[/]  event {record.name}  {state}", highlight=False)
    out.print(f"context: {_short(json.dumps(record.context), 100)}", markup=False, highlight=False)
    table = Table("delivery", "channel", "address", "outcome", "status", "reason")
    for outcome, status in record.deliveries:
        table.add_row(
            outcome.delivery_id if outcome.outcome != "skipped" else "-",
            outcome.channel,
            outcome.address,
            outcome.outcome,
            status or "-",
            outcome.reason or "",
        )
    out.print(table)
    return True
