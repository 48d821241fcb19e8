"""The recipient's say, as gates: preferences, quiet hours and per-recipient throttles.

A delivery in a critical category (``DELIVERY_CRITICAL_CATEGORIES``, default ``security``)
passes all three: a password reset is not skipped because its recipient turned email
off, nor held until morning.
"""

from collections.abc import Sequence

from delivery.engine.channels import parse_per_recipient
from delivery.engine.gates import PROCEED, Pass, Refuse, Route, Verdict, Wait
from delivery.engine.throttle import RecipientThrottle
from delivery.errors import Skipped
from delivery.log import Claim
from delivery.recipients import Preferences, RecipientPreferences

#: ``Pass.once`` key of the preferences look-up both preference gates share.
_LOOKED_UP = "preferences"


def _preferences_of(
    preferences: Preferences, route: Route, look: Pass
) -> RecipientPreferences | None:
    def look_up(routes: Sequence[Route]) -> dict[str, RecipientPreferences]:
        return preferences.lookup({a for r in routes for a in (r.address, r.envelope.address)})

    found = look.once(_LOOKED_UP, look_up)
    return found.get(route.address) or found.get(route.envelope.address)


class PreferencesGate:
    """A delivery the recipient's preferences refuse ends ``skipped``, with the reason."""

    name = "preferences"

    def __init__(self, preferences: Preferences, critical: frozenset[str]) -> None:
        self.preferences = preferences
        self.critical = critical

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        category = route.envelope.category
        if category in self.critical:
            return PROCEED
        mine = _preferences_of(self.preferences, route, look)
        reason = mine.refuses(channel=route.channel.name, category=category) if mine else None
        return Refuse(Skipped(reason), ends="skipped") if reason else PROCEED


class QuietHoursGate:
    """A delivery due inside the recipient's quiet hours is ``scheduled`` for their end,
    in the log (never an ETA in the broker)."""

    name = "quiet hours"

    def __init__(self, preferences: Preferences, critical: frozenset[str]) -> None:
        self.preferences = preferences
        self.critical = critical

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        if route.envelope.category in self.critical:
            return PROCEED
        mine = _preferences_of(self.preferences, route, look)
        until = mine.quiet_until(look.now) if mine else None
        if until is None:
            return PROCEED
        return Wait(until, "the recipient's quiet hours", scheduled=True)


class ThrottleGate:
    """At most N deliveries per address and period, per channel (``--per-recipient``) and
    per subscription; beyond that a delivery ends ``skipped``. Counted across workers."""

    name = "throttle"

    def __init__(self, throttle: RecipientThrottle, critical: frozenset[str]) -> None:
        self.throttle = throttle
        self.critical = critical

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        envelope = route.envelope
        if envelope.category in self.critical:
            return PROCEED
        limits: list[tuple[str, str, str]] = []
        if route.channel.per_recipient:
            limits.append((f"channel:{route.channel.name}", route.channel.per_recipient, "channel"))
        if envelope.per_recipient and envelope.subscription:
            limits.append(
                (f"subscription:{envelope.subscription}", envelope.per_recipient, "subscription")
            )
        for throttle, limit, owner in limits:
            count, period = parse_per_recipient(limit)
            if not self.throttle.take(
                throttle,
                route.address,
                envelope.id,
                limit=count,
                period=period,
                now=look.now,
                dry_run=claim is None,
            ):
                reason = f"throttled: this address has had {limit} on this {owner} already"
                return Refuse(Skipped(reason), ends="skipped")
        return PROCEED
