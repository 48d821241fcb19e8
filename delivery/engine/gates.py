"""Send policies as a pipeline of gates: one place that answers, before a send, "send now,
wait until T, send elsewhere, or not at all — and why".

The service resolves a delivery's ``Route`` once (the channel failover has it on, that
channel's dispatcher, the address as the dispatcher will send to it), then asks each gate in
order. The first gate that does not say ``Proceed`` decides:

- ``Wait(until)``: the delivery goes back to the log, due at ``until``, without spending an
  attempt (a paused channel, an open breaker, a rate limit, quiet hours);
- ``Reroute(target)``: the delivery moves to its channel's fallback (failover);
- ``Refuse(error)``: the delivery ends without a send, ``failed`` (a suppressed address),
  ``skipped`` (the recipient's say: preferences, a throttle) or ``expired`` (its ttl).

A gate may also add bookkeeping to the transaction that records the attempt (the breaker
counts failures there). New policies are new gates: the service does not change.

The same gates run as a *dry run* (no claim) for the CLI's pre-check: a dry run reserves
nothing and takes no probe.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from delivery.dispatchers.base import Dispatcher
from delivery.engine.channels import Channel
from delivery.errors import DeliveryError
from delivery.log import Claim
from schemas import Envelope

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route:
    """Where one delivery goes, resolved once before the gates."""

    #: The delivery, on the channel the log has it on (failover may have moved it).
    envelope: Envelope
    channel: Channel
    dispatcher: Dispatcher
    #: The address as the dispatcher sends to it (``validate_address``'s canonical form).
    address: str


@dataclass(frozen=True, slots=True)
class Proceed:
    """Send now. ``free``: this send is the breaker's probe, which tests the provider for
    everyone and does not spend one of the delivery's attempts."""

    free: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Not now: due again at ``until``, without spending an attempt."""

    until: datetime
    reason: str
    #: The delivery shows ``scheduled`` while it waits (the recipient's quiet hours) rather
    #: than ``retrying`` (its channel is held).
    scheduled: bool = False


@dataclass(frozen=True, slots=True)
class Reroute:
    """Send it on ``target`` instead (the channel's fallback)."""

    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Never send it: it ends ``failed``, ``skipped`` (the recipient's choice) or
    ``expired`` (too late: its ttl passed)."""

    error: DeliveryError
    ends: Literal["failed", "skipped", "expired"] = "failed"


Verdict = Proceed | Wait | Reroute | Refuse
PROCEED = Proceed()


@dataclass(slots=True)
class Pass:
    """One pass of a batch (or of one delivery) through the gates.

    Gates look up what they need for every route of the pass at once (``once``): a
    batch costs one query per gate, not one per delivery."""

    routes: Sequence[Route]
    now: datetime
    _found: dict[str, object] = field(default_factory=dict)

    def once(self, key: str, look_up: Callable[[Sequence[Route]], T]) -> T:
        """``look_up(routes)`` for the whole pass, run the first time a gate asks."""
        if key not in self._found:
            self._found[key] = look_up(self.routes)
        return self._found[key]  # type: ignore[return-value]  # keyed by the gate's own type


class Gate(Protocol):
    """One send policy."""

    #: Shown in logs and in the reason of a delivery it holds.
    name: str

    def check(self, route: Route, claim: Claim | None, look: Pass) -> Verdict:
        """Whether ``route`` may be sent now, for ``claim`` (None: a dry run, which must
        reserve nothing). Raises nothing for a bad delivery: it refuses it."""
        ...


def first_verdict(
    gates: Sequence[Gate], route: Route, claim: Claim | None, look: Pass
) -> tuple[Verdict, bool]:
    """The first verdict other than ``Proceed`` (or ``Proceed``), and whether a gate
    granted a free send on the way."""
    free = False
    for gate in gates:
        verdict = gate.check(route, claim, look)
        if not isinstance(verdict, Proceed):
            return verdict, free
        free = free or verdict.free
    return PROCEED, free
