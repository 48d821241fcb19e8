"""`delivery db purge` (retention by hand) and `delivery stats` (the counts that purging
keeps)."""

import math
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import func, select

from delivery.cli import app, fail, out, print_json
from delivery.cli.admin import db
from delivery.cli.context import delivery_log
from delivery.log.counts import UNKNOWN_CHANNEL, totals
from delivery.log.tables import FINAL_STATUSES, ChannelRow, DeliveryRow, Status
from delivery.retention import PurgeReport, Retention
from schemas import get_settings


def _days(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter("give a number of days, 0 or more (e.g. 30 or 0.5)")
    return value


@db.command("purge")
def purge(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            metavar="DAYS",
            callback=_days,
            help="Purge deliveries that ended more than DAYS ago (default: "
            "DELIVERY_RETENTION_DAYS).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """Remove deliveries in a final status older than the retention, with their attempts
    and receipts, a few hundred per transaction; the counts (/metrics, stats) stay."""
    days = get_settings().retention_days if older_than is None else older_than
    if older_than is None and not days:
        fail("DELIVERY_RETENTION_DAYS is 0 (keep every delivery): give --older-than DAYS", 2)
    report = Retention(delivery_log().engine).purge(older_than=days, dry_run=dry_run)
    if as_json:
        print_json(report.to_json())
        return
    out.print(_summary(report), soft_wrap=True)


def _summary(report: PurgeReport) -> str:
    verb = "would purge" if report.dry_run else "purged"
    others = ", ".join(
        f"{count} {table}"
        for table, count in sorted(report.rows.items())
        if table != DeliveryRow.__tablename__ and count
    )
    return (
        f"{verb} {report.deliveries} deliveries that ended before "
        f"{report.cutoff.isoformat(timespec='seconds')}" + (f" (and {others})" if others else "")
    )


#: Statuses of deliveries not yet ended: counted from the log, where they are few.
_NOT_ENDED = tuple(sorted(s for s in Status if s not in FINAL_STATUSES))


@app.command("stats")
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """Deliveries ended by channel and status, attempts by outcome (since the log began,
    purged deliveries included), and what is waiting now: what /metrics shows."""
    log = delivery_log()
    with log.engine.connect() as connection:
        known = set(connection.scalars(select(ChannelRow.name)))
        counted = totals(connection, channels=known)
        waiting = connection.execute(
            select(DeliveryRow.channel, DeliveryRow.status, func.count())
            .where(DeliveryRow.status.in_(_NOT_ENDED))
            .group_by(DeliveryRow.channel, DeliveryRow.status)
        ).all()
    ended: dict[str, dict[str, int]] = {}
    for (channel, status), count in sorted(counted.ended.items()):
        ended.setdefault(channel, {})[status] = count
    now: dict[str, dict[str, int]] = {}
    for channel, status, count in sorted(waiting):
        by_status = now.setdefault(channel if channel in known else UNKNOWN_CHANNEL, {})
        by_status[status] = by_status.get(status, 0) + count
    attempts = {outcome: counted.attempt_count(outcome) for outcome in sorted(counted.attempts)}
    if as_json:
        print_json({"ended": ended, "waiting": now, "attempts": attempts})
        return
    table = Table("channel", "status", "deliveries")
    for channel, by_status in ended.items():
        for status, count in by_status.items():
            table.add_row(channel, status, str(count))
    for channel, by_status in now.items():
        for status, count in by_status.items():
            table.add_row(channel, f"{status} (now)", str(count))
    out.print(table)
    out.print(
        "attempts: " + (", ".join(f"{o} {n}" for o, n in attempts.items()) or "none"),
        soft_wrap=True,
    )
