"""The gates that keep a channel healthy: pause and circuit breaker (with failover), the
suppression list, the rate limit. See ``gates`` for how the service asks them."""

import random
import time
from collections.abc import Sequence
from datetime import timedelta

from delivery.engine.breaker import Breaker
from delivery.engine.channels import parse_rate_limit
from delivery.engine.failover import Failover
from delivery.engine.gates import PROCEED, Pass, Proceed, Refuse, Reroute, Route, Verdict, Wait
from delivery.engine.ratelimit import RateLimiter
from delivery.engine.suppression import Known, SuppressionList
from delivery.errors import Expired, Suppressed
from delivery.log import Claim

#: Longest a worker thread sleeps for a rate-limit slot; further slots are waited for in
#: the broker or the log instead.
MAX_RATE_WAIT = 2.0
#: Longest a delivery held by an open breaker waits beyond its reopening: spread out so the
#: reopening is not a stampede.
MAX_BREAKER_SPREAD = 30.0


class BreakerGate:
    """A paused channel or an open breaker holds its deliveries; with a fallback the
    delivery moves there instead. One probe per interval is let through, free."""

    name = "breaker"

    def __init__(self, breaker: Breaker, failover: Failover) -> None:
        self.breaker = breaker
        self.failover = failover

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        channel = route.channel
        if claim is None:
            # A dry run reads the cached channel only: it must not take the probe.
            if channel.paused:
                resume = f"delivery channels resume {channel.name}"
                return Wait(look.now, f"channel {channel.name!r} is paused until `{resume}`")
            return PROCEED
        # The cached channel may be seconds old; a retry means the provider has been
        # failing, so ask the log whether the breaker has opened meanwhile.
        if not (channel.may_be_held or claim.attempt - claim.attempt_base > 1):
            return PROCEED
        until, probe = self.breaker.gate(channel.name, now=look.now)
        if until is None:
            return Proceed(free=probe)
        if target := self.failover.target(claim.delivery_id, channel):
            return Reroute(target, f"circuit breaker open on {channel.name}")
        spread = random.uniform(0, min(MAX_BREAKER_SPREAD, self.breaker.probe_interval / 2))
        return Wait(until + timedelta(seconds=spread), f"channel {channel.name!r} is held")


class SuppressionGate:
    """An opted-out or permanently bouncing address fails here: no provider call."""

    name = "suppression"

    def __init__(self, suppressions: SuppressionList) -> None:
        self.suppressions = suppressions

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        known = look.once(self.name, self._among)
        try:
            self.suppressions.check(route.channel.name, route.address, known=known)
        except Suppressed as exc:
            return Refuse(exc)
        return PROCEED

    def _among(self, routes: Sequence[Route]) -> Known:
        # One query for a batch (one per delivery cost a quarter of a batch's time); a
        # single delivery is looked up on its own by ``check``.
        if len(routes) < 2:
            return {}
        return self.suppressions.among((r.channel.name, r.address) for r in routes)


class RateLimitGate:
    """A channel's rate limit: a slot soon is waited for here, a later one in the broker
    or the log. Last, so that no slot is spent on a delivery another gate holds."""

    name = "rate limit"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        limit = route.channel.rate_limit
        if not limit or claim is None:
            return PROCEED
        wait, reserved = self.limiter.reserve(
            route.channel.name, parse_rate_limit(limit), max_wait=MAX_RATE_WAIT
        )
        if not reserved:
            return Wait(look.now + timedelta(seconds=wait), f"rate limit {limit} reached")
        if wait > 0:
            time.sleep(wait)
        return PROCEED


class ExpiryGate:
    """A delivery past its deadline (the producer's ``ttl``) ends ``expired``: never sent
    late. First, so that an expired delivery takes no probe and no slot."""

    name = "expiry"

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        deadline = route.envelope.expires_at
        if deadline is None or look.now < deadline:
            return PROCEED
        late = (look.now - deadline).total_seconds()
        return Refuse(Expired(f"its ttl ran out {late:.0f} s before it could be sent"), "expired")
