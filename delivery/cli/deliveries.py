"""``delivery send``, ``status``, ``log``, ``retry`` and ``cancel``."""

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from delivery.cli import app, fail, out, print_json, user_errors
from delivery.cli.context import delivery_log
from delivery.log import DeliveryRecord
from delivery.producer.publisher import get_publisher, send
from schemas import Payload


@app.command("send")
def send_command(
    channel: str,
    address: str,
    message: str,
    subject: Annotated[str | None, typer.Option("--subject")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
) -> None:
    """Enqueue one delivery and print its id."""
    with user_errors():
        receipt = send(
            channel,
            address,
            Payload(message=message, subject=subject),
            idempotency_key=idempotency_key,
        )
    typer.echo(receipt.id)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@app.command("status")
def status(delivery_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A delivery and every attempt; or an event (``notify``'s id) and its deliveries."""
    record = delivery_log().get(delivery_id)
    if record is None:
        from delivery.cli.events import show_event

        if show_event(delivery_id, as_json=as_json):
            return
        fail(f"no delivery {delivery_id!r} in the log (not sent, or not yet picked up by a worker)")
    if as_json:
        print_json(record.to_json())
        return
    out.print(
        f"[bold]{record.id}[/]  {record.status}  via {record.channel} "
        f"({record.dispatcher or '?'}) to {record.address}"
    )
    out.print(
        f"created {_when(record.created_at)}  updated {_when(record.updated_at)}", highlight=False
    )
    if record.next_attempt_at and record.status == "retrying":
        out.print(f"next attempt due {_when(record.next_attempt_at)}", highlight=False)
    if record.last_error:
        out.print(f"last error: {record.last_error}", highlight=False)
    table = Table("#", "started", "duration", "outcome", "status", "provider ref", "error")
    for a in record.attempts:
        table.add_row(
            str(a.number),
            _when(a.started_at),
            f"{a.duration_ms:.1f} ms",
            a.outcome,
            str(a.status_code or "-"),
            a.provider_ref or "-",
            a.error or "",
        )
    out.print(table)
    if record.receipts:
        receipts = Table("receipt", "received", "provider status", "error code")
        for r in record.receipts:
            receipts.add_row(
                r["status"], r["received_at"][:19], r["provider_status"], r["error_code"] or "-"
            )
        out.print(receipts)


def _log_table(records: list[DeliveryRecord]) -> Table:
    table = Table("id", "created", "channel", "address", "status", "attempts", "last error")
    for r in records:
        table.add_row(
            r.id,
            _when(r.created_at),
            r.channel,
            r.address,
            r.status,
            str(r.attempt_count),
            r.last_error or "",
        )
    return table


@app.command("log")
def log(
    status: Annotated[str | None, typer.Option("--status")] = None,
    channel: Annotated[str | None, typer.Option("--channel")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent deliveries, newest first."""
    records = delivery_log().find(status=status, channel=channel, limit=limit)
    if as_json:
        print_json({"deliveries": [r.to_json(with_attempts=False) for r in records]})
        return
    out.print(_log_table(records))


@app.command("retry")
def retry(
    delivery_id: Annotated[str | None, typer.Argument()] = None,
    status: Annotated[
        str, typer.Option("--status", help="Bulk: deliveries in this state")
    ] = "failed",
    channel: Annotated[
        str | None, typer.Option("--channel", help="Bulk: only this channel")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="Bulk: created at or after (UTC)")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 1000,
) -> None:
    """Send failed deliveries again, keeping their old attempts. One ID, or a bulk filter."""
    if status != "failed":
        fail("only failed deliveries can be sent again")
    log = delivery_log()
    if delivery_id is not None:
        ids = [delivery_id]
    else:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        ids = [r.id for r in log.find(status="failed", channel=channel, since=since, limit=limit)]
    reopened = [record for i in ids if (record := log.reopen(i)) is not None]
    if delivery_id is not None and not reopened:
        current = log.get(delivery_id)
        fail(
            f"no delivery {delivery_id!r} in the log"
            if current is None
            else f"{delivery_id} is {current.status}, not failed"
        )
    with user_errors():
        get_publisher().publish_envelopes([(r.envelope(), None) for r in reopened], batch=True)
    out.print(f"{len(reopened)} deliveries queued again")


@app.command("cancel")
def cancel(delivery_id: str) -> None:
    """Make sure a delivery not yet sent is never sent (also one still in the broker)."""
    done = delivery_log().cancel(delivery_id)
    if not done.cancelled:
        fail(done.explain(delivery_id))
    out.print(done.explain(delivery_id), highlight=False)
