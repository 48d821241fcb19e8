"""What each recipient agreed to receive, and when: rules by channel and category, a time
zone and quiet hours, one row per address.

The worker asks for a whole batch at once (``Preferences.lookup``: one query, or none when
nobody has preferences), then asks each recipient's ``RecipientPreferences`` whether it
``refuses`` a delivery and whether it falls in their ``quiet_until``. The CLI, the HTTP API and
the unsubscribe link write through ``Preferences.update``, which reads and writes one row in
one transaction so two changes at once cannot lose each other.
"""

import re
import threading
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update

from delivery.clock import utcnow
from delivery.log.base import LogBase
from delivery.log.database import read_only
from delivery.recipients.quiet import QuietHours, check_timezone, zone
from delivery.recipients.tables import RecipientPreferencesRow
from schemas.messages import CATEGORY_PATTERN, CHANNEL_NAME_PATTERN

#: The longest address preferences are kept for (the column's width).
MAX_KEY = 512
#: Rules one address may have: a person's choices, not a data store.
MAX_RULES = 100
#: How long "nobody has preferences" is believed before the table is looked at again: the
#: worker then pays no query per batch on a deployment that does not use them, and a first
#: preference set elsewhere is honoured within this many seconds.
EMPTY_RECHECK_SECONDS = 2.0

_EMAIL = re.compile(r"[^@\s/:]+@[^@\s/]+")


def preference_key(address: str) -> str:
    """The one spelling preferences are stored and found under: surrounding space removed,
    and an email address lower-cased (``Ann@Example.COM`` and ``ann@example.com`` are one
    mailbox to every provider that matters). Other addresses are kept as they are."""
    key = address.strip()
    return key.lower() if _EMAIL.fullmatch(key) else key


def check_key(address: str) -> str:
    """``preference_key(address)``, if preferences can be kept for it.

    Raises:
        ValueError: empty, longer than ``MAX_KEY`` or not storable text.
    """
    key = preference_key(address)
    if not key:
        raise ValueError("address must not be empty")
    if len(key) > MAX_KEY:
        raise ValueError(f"address must be at most {MAX_KEY} characters")
    if not key.isprintable():
        raise ValueError("address must not contain control characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("address must be valid Unicode text") from None
    return key


def check_channel(name: str) -> str:
    """Raises: ValueError when ``name`` cannot be a channel's name."""
    if not re.fullmatch(CHANNEL_NAME_PATTERN, name):
        raise ValueError(f"{name[:40]!r} is not a channel name (letters, digits, '_', '.', '-')")
    return name


def check_category(name: str) -> str:
    """Raises: ValueError when ``name`` cannot be a category (``marketing``)."""
    if not re.fullmatch(CATEGORY_PATTERN, name):
        raise ValueError(
            f"{name[:40]!r} is not a category (a short lower-case name such as 'marketing')"
        )
    return name


@dataclass(frozen=True, slots=True)
class Rule:
    """On or off for one channel (None: any) and one category (None: any)."""

    channel: str | None
    category: str | None
    enabled: bool

    @property
    def specificity(self) -> int:
        """Which rule wins: channel and category, then category, then channel, then any."""
        return (2 if self.category is not None else 0) + (1 if self.channel is not None else 0)

    def matches(self, channel: str, category: str | None) -> bool:
        return self.channel in (None, channel) and self.category in (None, category)

    def describe(self) -> str:
        if self.channel is not None and self.category is not None:
            return f"{self.category} on {self.channel}"
        return self.category or self.channel or "everything"

    def to_json(self) -> dict[str, Any]:
        return {"channel": self.channel, "category": self.category, "enabled": self.enabled}


@dataclass(frozen=True)
class RecipientPreferences:
    """One recipient's choices. Without a matching rule everything is on; quiet hours are
    read in ``timezone`` (UTC when none is set)."""

    rules: tuple[Rule, ...] = ()
    timezone: str | None = None
    quiet: QuietHours | None = None

    def refuses(self, *, channel: str, category: str | None) -> str | None:
        """Why this recipient does not want a delivery on ``channel`` in ``category``, or
        None when they do. The most specific matching rule decides. Critical categories are
        the caller's to let through: a recipient cannot turn them off, only ask."""
        matching = [rule for rule in self.rules if rule.matches(channel, category)]
        if not matching:
            return None
        best = max(matching, key=lambda rule: rule.specificity)
        return None if best.enabled else f"preferences: {best.describe()} off for this address"

    def quiet_until(self, now: datetime) -> datetime | None:
        """The aware UTC end of the quiet window if ``now`` falls inside it, else None."""
        if self.quiet is None:
            return None
        return self.quiet.until(now, zone(self.timezone or "UTC"))

    def with_rule(self, rule: Rule) -> "RecipientPreferences":
        """These preferences with ``rule`` in place of any for the same channel and category.

        Raises:
            ValueError: that would be more than ``MAX_RULES`` rules.
        """
        kept = tuple(
            r for r in self.rules if (r.channel, r.category) != (rule.channel, rule.category)
        )
        if len(kept) >= MAX_RULES:
            raise ValueError(f"an address may have at most {MAX_RULES} rules")
        return replace(self, rules=(*kept, rule))

    @property
    def is_empty(self) -> bool:
        return not self.rules and self.timezone is None and self.quiet is None

    def to_json(self) -> dict[str, Any]:
        return {
            "timezone": self.timezone,
            "quiet": None if self.quiet is None else str(self.quiet),
            "rules": [rule.to_json() for rule in _ordered(self.rules)],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "RecipientPreferences":
        """The stored form (``to_json``) read back.

        Raises:
            ValueError: a field is not what ``to_json`` writes.
        """
        rules = tuple(
            Rule(
                channel=None if r.get("channel") is None else check_channel(r["channel"]),
                category=None if r.get("category") is None else check_category(r["category"]),
                enabled=bool(r["enabled"]),
            )
            for r in doc.get("rules") or ()
        )
        if len({(r.channel, r.category) for r in rules}) != len(rules):
            raise ValueError("two rules for the same channel and category")
        if len(rules) > MAX_RULES:
            raise ValueError(f"an address may have at most {MAX_RULES} rules")
        timezone = doc.get("timezone")
        quiet = doc.get("quiet")
        return cls(
            rules=rules,
            timezone=None if timezone is None else check_timezone(timezone),
            quiet=None if quiet is None else QuietHours.parse(quiet),
        )


def _ordered(rules: Iterable[Rule]) -> list[Rule]:
    """Most specific first: the order in which they are considered."""
    return sorted(rules, key=lambda r: (-r.specificity, r.channel or "", r.category or ""))


class Preferences(LogBase):
    """The recipients' preferences in the delivery log."""

    def __init__(
        self, engine: Engine, *, empty_recheck_seconds: float = EMPTY_RECHECK_SECONDS
    ) -> None:
        super().__init__(engine)
        self._reads = read_only(engine)
        self._recheck = empty_recheck_seconds
        # Monotonic times: until when the table is taken as empty, and until when it is
        # known to have rows (so a batch nobody in has preferences costs one query, not two).
        self._empty_until = 0.0
        self._rows_until = 0.0
        self._lock = threading.Lock()

    def lookup(self, addresses: Iterable[str]) -> dict[str, RecipientPreferences]:
        """The preferences of each address that has any, keyed by the address as given:
        one query for all of them, none for an empty list or while nobody has any."""
        if _time.monotonic() < self._empty_until:
            return {}
        keys: dict[str, list[str]] = {}
        for address in addresses:
            key = preference_key(address)
            if key and len(key) <= MAX_KEY and _storable(key):
                keys.setdefault(key, []).append(address)
        if not keys:
            return {}
        table = RecipientPreferencesRow
        # Before the read: what it cannot see was committed after this, so believing it
        # empty until `looked + recheck` honours that preference within the bound.
        looked = _time.monotonic()
        with self._reads.connect() as connection:
            rows = connection.execute(select(table).where(table.key.in_(keys))).all()
            if not rows:
                self._note_empty(connection, looked)
        found: dict[str, RecipientPreferences] = {}
        for row in rows:
            preferences = _preferences(row)
            for address in keys[row.key]:
                found[address] = preferences
        return found

    def show(self, address: str) -> RecipientPreferences:
        """The preferences of ``address``: empty (everything on) when none are stored.

        Raises:
            ValueError: not an address preferences can be kept for.
        """
        key = check_key(address)
        table = RecipientPreferencesRow
        with self._reads.connect() as connection:
            row = connection.execute(select(table).where(table.key == key)).first()
        return RecipientPreferences() if row is None else _preferences(row)

    def update(
        self, address: str, change: Callable[[RecipientPreferences], RecipientPreferences]
    ) -> RecipientPreferences:
        """Apply ``change`` to the stored preferences of ``address`` in one transaction
        and return the result. Preferences that come back empty are removed.

        Raises:
            ValueError: not an address preferences can be kept for, or ``change`` refused.
        """
        key = check_key(address)
        table = RecipientPreferencesRow
        # On SQLite the write transaction takes the process's write lock as it begins.
        with self.engine.begin() as connection:
            # Make the row exist, then hold it: two writers for one address take turns.
            connection.execute(
                self._insert(table)
                .values(key=key, rules=[], updated_at=utcnow())
                .on_conflict_do_nothing(index_elements=["key"])
            )
            row = connection.execute(select(table).where(table.key == key).with_for_update()).one()
            result = change(_preferences(row))
            if result.is_empty:
                connection.execute(delete(table).where(table.key == key))
            else:
                doc = result.to_json()
                connection.execute(
                    update(table)
                    .where(table.key == key)
                    .values(
                        timezone=doc["timezone"],
                        quiet=doc["quiet"],
                        rules=doc["rules"],
                        updated_at=utcnow(),
                    )
                )
        with self._lock:
            self._empty_until = 0.0
            self._rows_until = 0.0
        return result

    def set_rule(
        self, address: str, *, channel: str | None, category: str | None, enabled: bool
    ) -> RecipientPreferences:
        """Turn ``category`` (None: every category) on ``channel`` (None: every channel)
        on or off for ``address``.

        Raises:
            ValueError: a bad address, channel or category, or too many rules.
        """
        rule = Rule(
            channel=None if channel is None else check_channel(channel),
            category=None if category is None else check_category(category),
            enabled=enabled,
        )
        return self.update(address, lambda current: current.with_rule(rule))

    def set_quiet(
        self, address: str, quiet: QuietHours | None, *, timezone: str | None = None
    ) -> RecipientPreferences:
        """Set (or with None clear) the quiet hours of ``address``; ``timezone`` too, when
        given (else the stored one stays).

        Raises:
            ValueError: a bad address or time zone.
        """
        tz = None if timezone is None else check_timezone(timezone)
        return self.update(
            address, lambda current: replace(current, quiet=quiet, timezone=tz or current.timezone)
        )

    def replace(self, address: str, preferences: RecipientPreferences) -> RecipientPreferences:
        """Store ``preferences`` for ``address`` in place of whatever it had.

        Raises:
            ValueError: not an address preferences can be kept for.
        """
        return self.update(address, lambda _: preferences)

    def _note_empty(self, connection: Connection, started: float) -> None:
        """Remember for a moment whether anybody has preferences at all, as the read in
        ``connection``, begun at ``started`` (monotonic), sees the table."""
        if self._recheck <= 0 or started < self._rows_until:
            return
        table = RecipientPreferencesRow
        some = connection.execute(select(table.key).limit(1)).first() is not None
        with self._lock:
            if some:
                self._rows_until = started + self._recheck
            else:
                self._empty_until = started + self._recheck


def _storable(key: str) -> bool:
    """Whether ``key`` can be sent to the database at all (PostgreSQL refuses NUL, and
    neither takes a lone surrogate); no address stored is like that."""
    if "\x00" in key:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _preferences(row: Any) -> RecipientPreferences:
    return RecipientPreferences.from_json(
        {"timezone": row.timezone, "quiet": row.quiet, "rules": row.rules}
    )
