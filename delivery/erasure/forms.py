"""Which spellings of an address an erasure looks for, and how to find them in a column.

The log keeps an address as it was given (stripped), a suppression list as the channel's
dispatcher writes it (E.164 for SMS), preferences under ``preference_key`` (an email address
lower-cased). An erasure looks for each of these, and for an email address in any case.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, func, or_
from sqlalchemy.orm import InstrumentedAttribute

from delivery.recipients.preferences import check_key, preference_key

#: A mapped attribute or a table's column.
Column = ColumnElement[Any] | InstrumentedAttribute[Any]


@dataclass(frozen=True, slots=True)
class AddressForms:
    """The spellings of one address an erasure looks for."""

    #: ``preference_key`` of the address: what preferences are kept under.
    key: str
    #: Every spelling compared exactly: as given, the key, each dispatcher's canonical form.
    exact: frozenset[str]
    #: For an email address, its lower-cased form, compared with any stored case.
    email: str | None

    @classmethod
    def of(cls, address: str, canonical: Iterable[str] = ()) -> "AddressForms":
        """The forms of ``address``; ``canonical``: what the channels' dispatchers make of it.

        Raises:
            ValueError: ``address`` is empty, too long, has control characters, or has no
                letter or digit at all.
        """
        key = check_key(address)
        if not any(c.isalnum() for c in key):
            raise ValueError(
                f"{key[:40]!r} is not an address: give an email address, phone number, URL…"
            )
        exact = {address.strip(), key, *(c for c in canonical if c and c == c.strip())}
        # preference_key lower-cases email addresses and nothing else: one it lower-cases
        # back from upper case is an email address (with letters, so case matters).
        email = key if key.upper() != key and preference_key(key.upper()) == key else None
        return cls(key=key, exact=frozenset(exact), email=email)

    def matches(self, column: Column) -> ColumnElement[bool]:
        """``column`` holds one of these forms."""
        clauses: list[ColumnElement[bool]] = [column.in_(sorted(self.exact))]
        if self.email is not None:
            clauses.append(func.lower(func.trim(column)) == self.email)
        return or_(*clauses)

    def within(self, column: Column) -> ColumnElement[bool]:
        """The JSON in ``column`` mentions one of these forms (as JSON writes it, too)."""
        clauses: list[ColumnElement[bool]] = []
        for form in sorted(self.exact):
            for needle in {form, json.dumps(form)[1:-1]}:
                clauses.append(cast(column, Text).contains(needle, autoescape=True))
        if self.email is not None:
            clauses.append(func.lower(cast(column, Text)).contains(self.email, autoescape=True))
        return or_(*clauses)
