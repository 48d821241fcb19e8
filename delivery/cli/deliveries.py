"""``delivery send``, ``status``, ``log``, ``retry`` and ``cancel``."""

import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from delivery.cli import app, err, fail, out, print_json, user_errors
from delivery.cli.context import delivery_log, engine
from delivery.engine.gates import Refuse, Wait
from delivery.log import DeliveryLog, DeliveryRecord, Status
from delivery.log.records import MIN_ID_PREFIX
from delivery.producer.publisher import get_publisher, send
from delivery.redaction import mask_address
from delivery.wording import plural
from schemas import Envelope, Message, Payload

#: From this terminal width on, ``delivery log`` shows whole ids; narrower, short ones.
FULL_ID_WIDTH = 140
#: From this terminal width on, ``delivery log`` also shows each delivery's last error, and
#: its last change to the second.
LAST_ERROR_WIDTH = 120
#: The narrowest a column cut short with an ellipsis gets (a letter or two and the "…").
MIN_CUT_WIDTH = 4
#: How many of the ids an ambiguous prefix matches an error lists.
SHOWN_CANDIDATES = 3


def _check_sendable(message: Message) -> None:
    """Refuse now what a worker could only fail later: an unknown channel, an address its
    dispatcher cannot reach, a payload it cannot carry, a suppressed address. The worker's
    own gates decide, as a dry run; what would only hold the delivery back is a note.

    The CLI runs worker-side, so it reads the channel; ``delivery.send`` stays thin.

    Raises:
        UnknownChannel, ConfigurationError, RegistryError, InvalidAddress, PayloadRejected,
        Suppressed: what the worker would have failed the delivery with.
    """
    service = engine().service
    # The fields a task message has (a countdown or ttl is turned into times when sent).
    envelope = Envelope(**message.model_dump(include=set(Envelope.model_fields)), id="preview")
    verdict = service.preview(envelope)
    service.dispatchers.get(envelope.channel)[1].protocol.adapt(message.payload)
    if isinstance(verdict, Wait):
        err.print(f"note: {verdict.reason}; the delivery waits", highlight=False, markup=False)
    elif isinstance(verdict, Refuse):
        err.print(
            f"note: the delivery will be {verdict.ends} ({verdict.error})",
            highlight=False,
            markup=False,
        )


@app.command("send")
def send_command(
    channel: str,
    address: str,
    message: str,
    subject: Annotated[str | None, typer.Option("--subject")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    category: Annotated[
        str | None, typer.Option("--category", help="What kind of message: security, marketing…")
    ] = None,
) -> None:
    """Enqueue one delivery and print its id (checked against the channel first)."""
    with user_errors():
        request = Message.model_validate(
            {
                "channel": channel,
                "address": address,
                "payload": Payload(message=message, subject=subject),
                "idempotency_key": idempotency_key,
                "category": category,
            }
        )
        _check_sendable(request)
        receipt = send(
            request.channel,
            request.address,
            request.payload,
            idempotency_key=request.idempotency_key,
            category=request.category,
        )
    typer.echo(receipt.id)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _not_found(text: str) -> str:
    message = f"no delivery {text!r} in the log (not sent, or not yet picked up by a worker)"
    if len(text) < MIN_ID_PREFIX:
        message += f"; an id prefix needs at least {MIN_ID_PREFIX} characters"
    return message


def _resolve(log: DeliveryLog, text: str) -> str | None:
    """The delivery id ``text`` names: itself, or the one id that starts with it (at least
    ``MIN_ID_PREFIX`` characters). None if none does; exits 1 if several do."""
    matches = log.match_ids(text, limit=SHOWN_CANDIDATES + 1)
    if matches == [text]:
        return text
    if len(text) < MIN_ID_PREFIX or not matches:
        return None
    if len(matches) > 1:
        shown = ", ".join(matches[:SHOWN_CANDIDATES])
        more = ", …" if len(matches) > SHOWN_CANDIDATES else ""
        fail(f"{text!r} is the start of several delivery ids ({shown}{more}); give more of it")
    return matches[0]


@app.command("status")
def status(delivery_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A delivery and every attempt; or an event (``notify``'s id) and its deliveries.

    ID may be the start of a delivery's id, as ``delivery log`` shows it."""
    log = delivery_log()
    record = log.get(delivery_id)
    if record is None:
        from delivery.cli.events import show_event

        if show_event(delivery_id, as_json=as_json):
            return
        resolved = _resolve(log, delivery_id)
        record = log.get(resolved) if resolved is not None else None
    if record is None:
        fail(_not_found(delivery_id))
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


#: ``delivery log``'s columns; piped, one line each, tab-separated, under this header.
LOG_COLUMNS = ("id", "status", "channel", "address", "attempts", "last change", "last error")
#: The columns a table cuts short, with an ellipsis, to fit the terminal: the others
#: (the id above all, which ``status``, ``retry`` and ``cancel`` take) are shown whole.
_CUT = frozenset({"channel", "address", "last error"})


def _one_line(text: str) -> str:
    """``text`` with no tab or line break: one field of one line (an error may have several)."""
    return " ".join(text.split())


def _log_row(record: DeliveryRecord, shown_id: str, *, when: str) -> list[str]:
    return [
        _one_line(value)
        for value in (
            shown_id,
            record.status,
            record.channel,
            mask_address(record.address),
            str(record.attempt_count),
            when,
            record.last_error or "",
        )
    ]


def _log_plain(records: Sequence[DeliveryRecord]) -> str:
    """Not at a terminal (piped to ``grep`` or ``cut``, or into a file): whole ids, one
    delivery per line, tab-separated, under a header line."""
    rows = [list(LOG_COLUMNS), *(_log_row(r, r.id, when=_when(r.updated_at)) for r in records)]
    return "".join("\t".join(row) + "\n" for row in rows)


def _fit(natural: list[int], cut: list[bool], room: int) -> list[int]:
    """Column widths within ``room``: whole where they fit, the ``cut`` ones shortened, the
    narrowest first, so what one leaves the wider ones share."""
    widths = list(natural)
    spare = room - sum(w for w, c in zip(natural, cut, strict=True) if not c)
    left = sum(cut)
    for i in sorted((i for i, c in enumerate(cut) if c), key=natural.__getitem__):
        widths[i] = min(natural[i], max(MIN_CUT_WIDTH, spare // left))
        spare -= widths[i]
        left -= 1
    return widths


def _log_table(records: list[DeliveryRecord], shown_ids: dict[str, str], width: int) -> Table:
    """One line per delivery within ``width`` columns: the id whole (as short as it can be,
    still unique), the status whole, the rest cut short with an ellipsis."""
    wide = width >= LAST_ERROR_WIDTH
    columns = LOG_COLUMNS if wide else LOG_COLUMNS[:-1]
    when = _when if wide else _when_short
    rows = [_log_row(r, shown_ids[r.id], when=when(r.updated_at))[: len(columns)] for r in records]
    natural = [max(cell_len(row[i]) for row in [list(columns), *rows]) for i in range(len(columns))]
    # A bordered table spends two spaces of padding per column, and a rule between columns
    # and at each edge.
    room = width - 3 * len(columns) - 1
    widths = _fit(natural, [c in _CUT for c in columns], room)
    table = Table(*columns)
    for column, fitted in zip(table.columns, widths, strict=True):
        column.width, column.no_wrap, column.overflow = fitted, True, "ellipsis"
    table.columns[columns.index("attempts")].justify = "right"
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # text, not markup: "[redacted]" stays
    return table


def _when_short(value: datetime | None) -> str:
    """A time in few columns, and unambiguous (UTC, as ``_when``): ``06 Dec 22:33``."""
    return value.astimezone(UTC).strftime("%d %b %H:%M") if value else "-"


@app.command("log")
def log(
    status: Annotated[Status | None, typer.Option("--status", case_sensitive=False)] = None,
    channel: Annotated[str | None, typer.Option("--channel")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent deliveries, newest first: a table at a terminal, one line each otherwise.

    A table narrower than 140 columns shows the shortest start of each id that no other
    delivery shares; `status`, `retry` and `cancel` take it. Piped (to grep, cut, a file),
    each delivery is one tab-separated line with its whole id (``--json``: one document)."""
    store = delivery_log()
    records = store.find(status=status, channel=channel, limit=limit)
    if as_json:
        print_json({"deliveries": [r.to_json(with_attempts=False) for r in records]})
        return
    if not records:
        out.print("no deliveries match" if status or channel else "no deliveries in the log")
        return
    if not out.is_terminal:
        sys.stdout.write(_log_plain(records))
        return
    ids = [r.id for r in records]
    shown = {i: i for i in ids} if out.width >= FULL_ID_WIDTH else store.short_ids(ids)
    out.print(_log_table(records, shown, out.width))


def _confirmed(count: int, *, more: bool) -> bool:
    """Whether the person at the terminal agrees to send ``count`` deliveries again."""
    if not _interactive():
        fail(
            f"this would send {plural(count, 'failed delivery', 'failed deliveries')} again; "
            "pass --yes to do so without a terminal to confirm at"
        )
    extra = " (more match; the rest need another run)" if more else ""
    question = f"Send {plural(count, 'failed delivery', 'failed deliveries')} again{extra}?"
    return typer.confirm(question, default=False)


def _interactive() -> bool:
    return sys.stdin.isatty()


@app.command("retry")
def retry(
    delivery_id: Annotated[str | None, typer.Argument()] = None,
    status: Annotated[
        Status,
        typer.Option("--status", case_sensitive=False, help="Bulk: deliveries in this state"),
    ] = Status.FAILED,
    channel: Annotated[
        str | None, typer.Option("--channel", help="Bulk: only this channel")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="Bulk: created at or after (UTC)")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Bulk: every failed delivery (up to --limit)")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 1000,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Bulk: do not ask for confirmation")
    ] = False,
) -> None:
    """Send failed deliveries again, keeping their old attempts. One ID (or the start of
    one), or in bulk: --channel and/or --since, or --all; bulk asks first unless --yes."""
    if status is not Status.FAILED:
        fail(f"only failed deliveries can be sent again, not {status.value} ones")
    log = delivery_log()
    if delivery_id is not None:
        if channel is not None or since is not None or all_:
            fail("give either an ID or bulk filters (--channel, --since, --all), not both")
        resolved = _resolve(log, delivery_id)
        if resolved is None:
            fail(_not_found(delivery_id))
        ids = [resolved]
    else:
        if channel is None and since is None and not all_:
            fail(
                "say which failed deliveries to send again: an ID, --channel C, "
                "--since DATE, or --all"
            )
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        found = log.find(status=Status.FAILED, channel=channel, since=since, limit=limit + 1)
        ids = [r.id for r in found[:limit]]
        if not ids:
            out.print("no failed deliveries match; nothing to send again")
            return
        if not yes and not _confirmed(len(ids), more=len(found) > limit):
            fail("nothing was sent again")
    reopened = [record for i in ids if (record := log.reopen(i)) is not None]
    if delivery_id is not None and not reopened:
        current = log.get(ids[0])
        fail(
            _not_found(delivery_id)
            if current is None
            else f"{current.id} is {current.status}, not failed"
        )
    with user_errors():
        get_publisher().publish_envelopes([(r.envelope(), None) for r in reopened], batch=True)
    out.print(f"{plural(len(reopened), 'delivery', 'deliveries')} queued again")


def _is_whole_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


@app.command("cancel")
def cancel(delivery_id: str) -> None:
    """Make sure a delivery not yet sent is never sent (also one still in the broker).

    ID may be the start of an id the log knows; one still in the broker needs its whole id."""
    log = delivery_log()
    resolved = _resolve(log, delivery_id)
    if resolved is None:
        if not _is_whole_uuid(delivery_id):
            fail(
                _not_found(delivery_id)
                + "; to cancel one still waiting in the broker, give its whole id"
            )
        resolved = delivery_id  # not in the log yet: recorded as cancelled for the worker
    done = log.cancel(resolved)
    if not done.cancelled:
        fail(done.explain(resolved))
    out.print(done.explain(resolved), highlight=False)
