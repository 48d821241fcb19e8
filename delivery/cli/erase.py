"""``delivery erase ADDRESS``: the address, and what was sent to it, out of the log."""

from typing import Annotated

import typer
from rich.markup import escape

from delivery.cli import app, fail, out, print_json
from delivery.cli.context import engine
from delivery.erasure import Erasure, erase
from delivery.erasure.forms import AddressForms
from delivery.wording import plural

#: Each count in words: (field, singular, plural, what became of the rows).
WORDS: tuple[tuple[str, str, str, str], ...] = (
    ("deliveries", "delivery", "deliveries", "address and content erased"),
    ("unsent", "delivery", "deliveries", "not yet sent, now erased and never to be sent"),
    ("attempts", "attempt", "attempts", "errors and provider details erased"),
    ("receipts", "receipt", "receipts", "provider details erased"),
    ("early_receipts", "early receipt", "early receipts", "removed"),
    ("inbox", "inbound message", "inbound messages", "removed"),
    ("subscriptions", "subscription", "subscriptions", "removed"),
    ("event_deliveries", "event outcome", "event outcomes", "address erased"),
    ("events", "event", "events", "context erased"),
    ("digest_items", "digest item", "digest items", "removed"),
    ("preferences", "set of preferences", "sets of preferences", "removed"),
    ("throttle", "throttle count", "throttle counts", "removed"),
    ("suppressions", "suppression", "suppressions", "kept by keyed hash: still suppressed"),
)


@app.command("erase")
def erase_command(
    address: Annotated[str, typer.Argument(help="Email address, phone number, URL…")],
    as_json: Annotated[bool, typer.Option("--json", help="The counts as JSON.")] = False,
) -> None:
    """Erase ADDRESS and what was sent to it from every table of the log.

    Deliveries keep their status with the address and content emptied; those not yet sent
    end `erased` and are never sent. A suppressed address stays suppressed, by keyed hash
    (DELIVERY_SECRET_KEY). Email addresses match in any case.
    """
    try:
        AddressForms.of(address)  # checked before anything is opened
    except ValueError as exc:
        fail(f"ADDRESS: {exc}", code=2)
    counts = erase(engine(), address)
    if as_json:
        print_json(counts.to_json())
        return
    _print(counts)


def _print(counts: Erasure) -> None:
    found = counts.to_json()
    if not counts.total:
        out.print("nothing held that address: nothing to erase")
        return
    out.print(f"erased {plural(counts.total, 'row')}:", highlight=False)
    for field, singular, plural_form, became in WORDS:
        if found[field]:
            line = f"  {plural(found[field], singular, plural_form)}: {became}"
            out.print(escape(line), highlight=False)
