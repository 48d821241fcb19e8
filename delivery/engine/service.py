"""Deliver one message: claim it in the log, send it, record the attempt, decide what next."""

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol, cast

from sqlalchemy.exc import DataError, SQLAlchemyError

from delivery.clock import utcnow
from delivery.dispatchers.base import SendContext
from delivery.engine.breaker import AttemptHealth, Breaker, BreakerChange
from delivery.engine.channel_gates import (
    BreakerGate,
    ExpiryGate,
    RateLimitGate,
    SuppressionGate,
)
from delivery.engine.channels import Channel, parse_retry_schedule
from delivery.engine.failover import Failover
from delivery.engine.gates import (
    Gate,
    Pass,
    Refuse,
    Reroute,
    Route,
    Verdict,
    Wait,
    first_verdict,
)
from delivery.engine.instances import DispatcherCache
from delivery.engine.leases import LeaseKeeper
from delivery.engine.ratelimit import LocalRateLimiter, RateLimiter
from delivery.engine.recorder import GroupCommit
from delivery.engine.retry import RetryPolicy
from delivery.engine.suppression import SuppressionList
from delivery.errors import (
    ConfigurationError,
    PermanentError,
    RegistryError,
    RetryableError,
    UnknownChannel,
    UnknownDispatcher,
)
from delivery.log import AttemptResult, Claim, ClaimState, DeliveryLog, Finished
from delivery.log.tables import Outcome
from delivery.recipients import unsubscribe_url
from delivery.recipients.address_hash import erasure_keys
from delivery.tracing import attempt_span, current_traceparent
from schemas import Envelope, Settings

logger = logging.getLogger(__name__)

#: Longest a batch of deliveries runs before the rest goes one task each.
BATCH_BUDGET = 30.0
#: A batch's ended attempts are recorded two at a time: half the transactions of one per
#: attempt (a third of the pool threads' time on the one-task path, cProfile of a batch of
#: 8), and a crash re-sends at most this many per thread.
RECORD_EVERY = 2


@dataclass(frozen=True, slots=True)
class Decision:
    """What the task should do with the message now."""

    #: done: acknowledge. requeue: publish again after ``countdown`` (short waits only;
    #: longer ones are in the log, where the sweep will find them).
    action: Literal["done", "requeue"]
    countdown: float = 0.0
    outcome: Outcome | None = None
    #: For a failure or a retry: the error, as recorded.
    error: str | None = None
    #: For an attempt: its number (how many the delivery has had, this one included).
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt that has ended (what the log records) and the channel it was on."""

    ended: Finished
    channel: Channel | None
    #: A failure that counts towards the channel's circuit breaker.
    breaker_failure: bool
    #: A success resets the channel's breaker; a batch needs to do that once per channel.
    resets_breaker: bool = True
    #: The breaker may be open (the send was its probe, or the cached channel had it
    #: open): a success closes it (``Breaker.bookkeeping``).
    breaker_may_be_open: bool = False

    @property
    def countdown(self) -> float:
        """For a retry: seconds until it is due."""
        due = self.ended.result.next_attempt_at
        return _seconds_until(due) if due else 0.0


class BreakerWatcher(Protocol):
    """Told of the breakers a recording transaction opened or closed, once it committed
    (``delivery.notifications.operational`` announces them). Must not raise or block."""

    def breakers_changed(
        self, changes: Sequence[BreakerChange], channels: dict[str, Channel]
    ) -> None: ...


class DeliveryService:
    """Claim → route → gates → send → record, for one delivery or a batch.

    What may hold a delivery back (a paused channel, suppression, a rate limit, the
    recipient's say) is a gate (``gates``); the service only carries out the verdicts.
    """

    def __init__(
        self,
        settings: Settings,
        log: DeliveryLog,
        dispatchers: DispatcherCache,
        limiter: RateLimiter | None = None,
        *,
        recipient_gates: Sequence[Gate] = (),
    ) -> None:
        self.settings = settings
        self.log = log
        self.dispatchers = dispatchers
        self.breaker = Breaker(
            log.engine,
            threshold=settings.breaker_threshold,
            probe_interval=settings.breaker_probe_interval,
        )
        self.limiter = limiter or LocalRateLimiter()
        self.suppressions = SuppressionList(log.engine, erasure_keys=erasure_keys(settings))
        self.failover = Failover(log.engine)
        #: In order: the channel's own health first; the recipient's say before the rate
        #: limit, so no slot is spent on a delivery that will not be sent.
        self.gates: list[Gate] = [
            ExpiryGate(),
            BreakerGate(self.breaker, self.failover),
            SuppressionGate(self.suppressions),
            *recipient_gates,
            RateLimitGate(self.limiter),
        ]
        self.default_schedule = default_schedule(settings)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        #: Seconds a batch may run before handing the rest back as single tasks: short
        #: enough that a slow provider delays few others (the leases are renewed).
        self.batch_budget = BATCH_BUDGET
        self.leases = LeaseKeeper(log, lease=settings.lease_seconds)
        #: Records an ended attempt at once, in one transaction with the other threads'.
        self._recorded = GroupCommit(self._record)
        #: Claims a single task's delivery (with its message's publish time) in one
        #: transaction with the other threads'.
        self._claimed = GroupCommit(self._claim_group)
        #: Told of breakers opened and closed, after the commit (the worker sets it).
        self.breaker_watcher: BreakerWatcher | None = None
        # Imported here: the erasure package stands on the engine, not the other way round.
        from delivery.erasure.backlog import ErasedBacklog

        #: Deliveries published before their address was erased: never claimed nor sent.
        self.erased_backlog = ErasedBacklog(keys=erasure_keys(settings))

    def policy_for(self, channel: Channel | None) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.settings.max_attempts,
            base=self.settings.backoff_base,
            cap=self.settings.backoff_cap,
            schedule=(channel.retry_schedule if channel else None) or self.default_schedule,
        )

    def close(self) -> None:
        self.leases.close()

    def deliver(self, envelope: Envelope, *, published_at: float | None = None) -> Decision:
        """Send one delivery unless it is done or held elsewhere, and record the attempt.

        ``published_at``: when its task message was published (epoch seconds; None: by
        a producer too old to say, not checked). A delivery whose address was erased
        since is recorded ``erased`` and never sent.
        """
        claim = self._claimed((envelope, published_at))
        if isinstance(claim, Decision):
            return claim
        if claim.state is not ClaimState.CLAIMED:
            return self._unclaimed(envelope, claim)
        self.leases.hold([claim])
        try:
            route = self._route(envelope)
            look = Pass([route] if isinstance(route, Route) else [], utcnow())
            ended = self._attempt(claim, route, look)
            if isinstance(ended, Decision):
                return ended
            return self._recorded(ended)
        finally:
            self.leases.let_go([claim])

    def deliver_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        published_at: float | Sequence[float | None] | None = None,
    ) -> list[Decision]:
        """Deliver a batch: claimed in one transaction, sent one after another, the
        attempts recorded ``RECORD_EVERY`` at a time as they end (a crash re-sends only
        those and what was in flight).

        ``published_at``: when their task message was published, or one time each (the
        coalescer's messages); None: not checked. Those whose address was erased since
        are recorded ``erased`` and never sent, as in ``deliver``.

        Batching is for the common case only. After a retryable failure on a channel, and
        once the batch has run for ``batch_budget`` seconds, the rest is handed back
        unspent (``requeue`` at once) to go one task each, where a slow or failing
        provider holds up no other delivery and the circuit breaker sees every attempt.
        """
        times: Sequence[float | None] = (
            [None] * len(envelopes)
            if published_at is None
            else [published_at] * len(envelopes)
            if isinstance(published_at, float | int)
            else published_at
        )
        claims = self._claim_many(envelopes, times)
        held = [c for c in claims if isinstance(c, Claim) and c.state is ClaimState.CLAIMED]
        self.leases.hold(held)
        try:
            return self._send_claimed(envelopes, claims)
        finally:
            self.leases.let_go(held)

    def _send_claimed(
        self, envelopes: Sequence[Envelope], claims: Sequence[Claim | Decision]
    ) -> list[Decision]:
        decisions: list[Decision | None] = []
        ended: list[tuple[int, Attempt]] = []  # not recorded yet: (place, attempt)
        troubled: set[str] = set()
        reset: set[str] = set()  # channels whose breaker a success of this batch reset
        tried = False
        deadline = time.monotonic() + self.batch_budget
        routes = {
            index: self._route(envelope)
            for index, (envelope, claim) in enumerate(zip(envelopes, claims, strict=True))
            if isinstance(claim, Claim) and claim.state is ClaimState.CLAIMED
        }
        # The gates look up what they need for the whole batch at once.
        look = Pass([r for r in routes.values() if isinstance(r, Route)], utcnow())
        try:
            for index, (envelope, claim) in enumerate(zip(envelopes, claims, strict=True)):
                if isinstance(claim, Decision):
                    decisions.append(claim)  # failed already: the log cannot store it
                elif claim.state is not ClaimState.CLAIMED:
                    decisions.append(self._unclaimed(envelope, claim))
                elif envelope.channel in troubled or (tried and time.monotonic() > deadline):
                    decisions.append(self._hand_back(claim, troubled=envelope.channel in troubled))
                else:
                    # However slow the provider, each batch sends at least one: progress.
                    tried = True
                    outcome = self._attempt(claim, routes[index], look)
                    if isinstance(outcome, Decision):
                        decisions.append(outcome)
                        continue
                    if outcome.breaker_failure:
                        troubled.add(envelope.channel)
                    elif envelope.channel in reset:
                        outcome = dataclasses.replace(outcome, resets_breaker=False)
                    elif outcome.ended.result.outcome is Outcome.DELIVERED:
                        reset.add(envelope.channel)
                    ended.append((len(decisions), outcome))
                    decisions.append(None)
                    if len(ended) >= RECORD_EVERY:
                        self._record_ended(ended, decisions)
        finally:
            # Also when a send raised: what was sent before it is recorded, not re-sent.
            self._record_ended(ended, decisions)
        return cast(list[Decision], decisions)  # every place filled by _record_ended

    def _record_ended(
        self, ended: list[tuple[int, "Attempt"]], decisions: list[Decision | None]
    ) -> None:
        """Record ``ended`` (emptied) and put each decision in its place."""
        attempts, ended[:] = list(ended), []
        if not attempts:
            return
        recorded = self._recorded.many([attempt for _, attempt in attempts])
        for (place, _), decision in zip(attempts, recorded, strict=True):
            decisions[place] = decision

    def _hand_back(self, claim: Claim, *, troubled: bool) -> Decision:
        """Give ``claim`` back unsent, to go as a task of its own. Celery (and so Flower)
        can only show that as a retry, so the reason says that nothing was attempted."""
        why = "a delivery on its channel has just failed" if troubled else "its batch ran long"
        decision = self._release(claim, utcnow())
        return dataclasses.replace(decision, error=f"not attempted yet, handed back: {why}")

    def _claim_many(
        self, envelopes: Sequence[Envelope], published_at: Sequence[float | None]
    ) -> Sequence[Claim | Decision]:
        """Claim ``envelopes`` in one transaction; those whose address was erased since
        their message was published (``published_at``) are recorded ``erased`` in it, and
        come back ``DONE``."""
        try:
            return self.log.claim_many(
                envelopes,
                lease=self.settings.lease_seconds,
                screen=self.erased_backlog.screen(envelopes, published_at),
            )
        except DataError:
            # A value the database refuses (from a producer that skipped the schemas) must
            # not hold up its batch-mates: claim them one by one, and fail it alone.
            logger.warning("the log refused a batch; claiming its deliveries one by one")
            return [
                self._claim_alone(envelope, published)
                for envelope, published in zip(envelopes, published_at, strict=True)
            ]

    def _claim_group(
        self, items: Sequence[tuple[Envelope, float | None]]
    ) -> list[Claim | Decision]:
        if len(items) == 1:
            return [self._claim_alone(*items[0])]
        return list(self._claim_many([e for e, _ in items], [t for _, t in items]))

    def _claim_alone(self, envelope: Envelope, published_at: float | None) -> Claim | Decision:
        try:
            return self.log.claim(
                envelope,
                lease=self.settings.lease_seconds,
                screen=self.erased_backlog.screen([envelope], [published_at]),
            )
        except DataError as exc:
            problem = describe_error(exc.orig or exc)
            reason = f"the delivery log cannot store this delivery: {problem}"
            logger.error("delivery %r failed: %s", envelope.id, reason)
            try:
                self.log.reject(
                    envelope.id, channel=envelope.channel, address="?", reason=reason[:2000]
                )
            except SQLAlchemyError:
                logger.exception("could not record delivery %r as failed", envelope.id)
            return Decision("done", outcome=Outcome.FAILED, error=reason)

    def _unclaimed(self, envelope: Envelope, claim: Claim) -> Decision:
        if claim.state is ClaimState.DONE:
            logger.info("delivery %s is already %s; skipping", envelope.id, claim.status)
            return Decision("done")
        # Held by another worker, or not due yet: look again then if that is soon;
        # otherwise the sweep re-enqueues it when the time comes.
        return self._later(_seconds_until(claim.wake_at))

    def _later(self, countdown: float) -> Decision:
        if countdown <= self.settings.delay_limit:
            return Decision("requeue", countdown=countdown)
        return Decision("done")

    def _release(
        self,
        claim: Claim,
        until: datetime,
        *,
        scheduled: bool = False,
        expires_at: datetime | None = None,
    ) -> Decision:
        if expires_at is not None and until > expires_at:
            # Waiting past its deadline would only end it later: look again then, and
            # the expiry gate ends it on time.
            until = expires_at
        self.log.release(
            claim,
            until=until,
            parked=_seconds_until(until) <= self.settings.delay_limit,
            scheduled=scheduled,
        )
        return self._later(_seconds_until(until))

    def route(self, envelope: Envelope) -> Route:
        """Where ``envelope`` goes: its channel as the log has it now (failover may have
        moved it since the message was published), the dispatcher, the canonical address.

        Raises:
            UnknownChannel, UnknownDispatcher, ConfigurationError, RegistryError: the
                channel cannot be used here.
            InvalidAddress: the dispatcher cannot reach the address.
        """
        channel, dispatcher = self.dispatchers.get(envelope.channel)
        if channel.fallback is not None:
            envelope = self.failover.current(envelope)
            channel, dispatcher = self.dispatchers.get(envelope.channel)
        return Route(envelope, channel, dispatcher, dispatcher.validate_address(envelope.address))

    def preview(self, envelope: Envelope) -> Verdict:
        """The gates' dry run for a delivery about to be sent (the CLI's pre-check):
        reserves nothing, records nothing. ``Proceed``, ``Wait`` (held for now) or a
        ``Refuse`` that skips it.

        Raises:
            DeliveryError: what the worker would fail the delivery with.
        """
        route = self.route(envelope)
        verdict, _ = first_verdict(self.gates, route, None, Pass([route], utcnow()))
        if isinstance(verdict, Refuse) and verdict.ends == "failed":
            raise verdict.error
        return verdict

    def _route(self, envelope: Envelope) -> Route | Exception:
        """``route``, or the error the attempt records."""
        try:
            return self.route(envelope)
        except Exception as exc:  # noqa: BLE001  # raised again in the attempt, which records it
            return exc

    def _attempt(self, claim: Claim, route: Route | Exception, look: Pass) -> "Attempt | Decision":
        """Pass the gates and send once: the ended attempt, or a decision to wait."""
        started = utcnow()
        clock = time.perf_counter()
        channel: Channel | None = None
        breaker_failure = may_be_open = False
        try:
            if isinstance(route, Exception):
                raise route
            channel = route.channel
            verdict, free = first_verdict(self.gates, route, claim, look)
            may_be_open = free or channel.may_be_held
            if free:
                claim = dataclasses.replace(claim, attempt_base=claim.attempt_base + 1)
            if isinstance(verdict, Wait):
                return self._release(
                    claim,
                    verdict.until,
                    scheduled=verdict.scheduled,
                    expires_at=route.envelope.expires_at,
                )
            if isinstance(verdict, Reroute):
                result, claim = self.failover.moved(
                    self._ended(Outcome.FAILED, started, clock, error=verdict.reason),
                    claim,
                    source=route.channel.name,
                    target=verdict.target,
                    reason=verdict.reason,
                )
            elif isinstance(verdict, Refuse):
                outcome = _REFUSED_AS[verdict.ends]
                result = self._ended(outcome, started, clock, error=describe_error(verdict.error))
            elif route.envelope.test:
                # A test key's delivery goes the whole way but to the provider (GOV.UK
                # Notify's test keys): the gates have had their say, nobody is called.
                result = AttemptResult(
                    outcome=Outcome.DELIVERED,
                    started_at=started,
                    duration_ms=_elapsed_ms(clock),
                    detail={"test": True},
                )
            else:
                started, clock = utcnow(), time.perf_counter()
                with attempt_span(
                    delivery_id=claim.delivery_id,
                    channel=route.channel.name,
                    attempt=claim.attempt,
                    traceparent=route.envelope.traceparent,
                ):
                    sent = route.dispatcher.send(
                        route.envelope.address,
                        route.envelope.payload,
                        context=self.context(route, claim),
                    )
                result = AttemptResult(
                    outcome=Outcome.DELIVERED,
                    started_at=started,
                    duration_ms=_elapsed_ms(clock),
                    status_code=sent.status,
                    provider_ref=sent.provider_ref,
                    detail=sent.detail,
                )
        except (PermanentError, UnknownChannel, UnknownDispatcher) as exc:
            result = self._failed(started, clock, exc)
        except (RetryableError, ConfigurationError, RegistryError) as exc:
            # Configuration and plugin problems on this worker are for a person to fix;
            # the delivery waits for them rather than failing for good.
            breaker_failure = isinstance(exc, RetryableError)
            result = self._retry(started, clock, exc, claim, channel)
        except Exception as exc:
            logger.exception("unexpected error delivering %s", claim.delivery_id)
            breaker_failure = True
            result = self._retry(started, clock, exc, claim, channel)
        deadline = route.envelope.expires_at if isinstance(route, Route) else None
        if result.next_attempt_at and deadline and result.next_attempt_at > deadline:
            # The next attempt would come too late: it is due at the deadline instead,
            # when the expiry gate ends it (never left waiting past it).
            result = dataclasses.replace(result, next_attempt_at=deadline)
        if result.outcome is Outcome.FAILED and breaker_failure and channel is not None:
            # Provider-side failures to the end: the backup channel, if there is one.
            result, claim = self.failover.after_exhausted(result, claim, channel)
        countdown = _seconds_until(result.next_attempt_at) if result.next_attempt_at else 0.0
        return Attempt(
            ended=Finished(
                claim,
                result,
                dispatcher=channel.dispatcher if channel else None,
                parked=result.outcome is Outcome.RETRY and countdown <= self.settings.delay_limit,
            ),
            channel=channel,
            breaker_failure=breaker_failure,
            breaker_may_be_open=may_be_open,
        )

    def context(self, route: Route, claim: Claim) -> SendContext:
        """What the dispatcher is told about the delivery it sends: with the recipient's
        one-click unsubscribe link, when there can be one (email puts it in its headers)."""
        envelope = route.envelope
        left = (envelope.expires_at - utcnow()).total_seconds() if envelope.expires_at else None
        return SendContext(
            delivery_id=envelope.id,
            attempt=claim.attempt,
            channel=envelope.channel,
            traceparent=current_traceparent(),
            ttl=left,
            unsubscribe_url=unsubscribe_url(
                self.settings,
                address=route.address,
                channel=route.channel.name,
                category=envelope.category,
            ),
        )

    def _record(self, attempts: Sequence["Attempt"]) -> list[Decision]:
        """Record ended attempts in one transaction, with the breakers' bookkeeping."""
        if not attempts:
            return []
        changes: list[BreakerChange] = []
        health = self.breaker.bookkeeping(
            (
                AttemptHealth(
                    a.channel.name,
                    delivered=a.ended.result.outcome is Outcome.DELIVERED and a.resets_breaker,
                    failed=a.breaker_failure,
                    may_be_open=a.breaker_may_be_open,
                )
                for a in attempts
                if a.channel is not None
            ),
            now=utcnow(),
            changes=changes,
        )
        health += self.failover.moves([a.ended for a in attempts])
        moved = self.log.finish_many(
            [a.ended for a in attempts], worker=self.worker_name, health=health
        )
        if changes and self.breaker_watcher is not None:
            # Committed: only now is the change real. Rare (a breaker turning), so free.
            channels = {a.channel.name: a.channel for a in attempts if a.channel is not None}
            self.breaker_watcher.breakers_changed(changes, channels)
        if moved < len(attempts):
            # Another worker took these over (their lease ran out); its attempt counts.
            logger.warning(
                "%d of %d attempts recorded after their lease was lost (%s)",
                len(attempts) - moved,
                len(attempts),
                ", ".join(a.ended.claim.delivery_id for a in attempts[:3])
                + (" and others" if len(attempts) > 3 else ""),
            )
        decisions = []
        for attempt in attempts:
            outcome = attempt.ended.result.outcome
            logger.info(
                "delivery %s attempt %s: %s",
                attempt.ended.claim.delivery_id,
                attempt.ended.claim.attempt,
                outcome.value,
            )
            error = attempt.ended.result.error
            action: Literal["done", "requeue"] = (
                "requeue" if outcome is Outcome.RETRY and attempt.ended.parked else "done"
            )
            # "done" for a retry: scheduled from the log; countdown says when (for Flower).
            decisions.append(
                Decision(
                    action,
                    countdown=attempt.countdown,
                    outcome=outcome,
                    error=error,
                    attempts=attempt.ended.claim.attempt,
                )
            )
        return decisions

    def _failed(self, started: datetime, clock: float, exc: Exception) -> AttemptResult:
        return self._ended(
            Outcome.FAILED,
            started,
            clock,
            error=describe_error(exc),
            status_code=getattr(exc, "status", None),
        )

    @staticmethod
    def _ended(
        outcome: Outcome,
        started: datetime,
        clock: float,
        *,
        error: str,
        status_code: int | None = None,
    ) -> AttemptResult:
        return AttemptResult(
            outcome=outcome,
            started_at=started,
            duration_ms=_elapsed_ms(clock),
            error=error,
            status_code=status_code,
        )

    def _retry(
        self, started: datetime, clock: float, exc: Exception, claim: Claim, channel: Channel | None
    ) -> AttemptResult:
        delay = self.policy_for(channel).delay_after(
            claim.attempt - claim.attempt_base, retry_after=getattr(exc, "retry_after", None)
        )
        if delay is None:
            return self._failed(started, clock, exc)
        return AttemptResult(
            outcome=Outcome.RETRY,
            started_at=started,
            duration_ms=_elapsed_ms(clock),
            error=describe_error(exc),
            status_code=getattr(exc, "status", None),
            next_attempt_at=utcnow() + timedelta(seconds=delay),
        )


#: How a refused delivery ends.
_REFUSED_AS = {"failed": Outcome.FAILED, "skipped": Outcome.SKIPPED, "expired": Outcome.EXPIRED}


def default_schedule(settings: Settings) -> tuple[float, ...] | None:
    """The schedule for channels without one; None means exponential backoff.

    Raises:
        ConfigurationError: DELIVERY_RETRY_SCHEDULE is neither ``exponential`` nor delays.
    """
    if settings.retry_schedule.strip().lower() == "exponential":
        return None
    return parse_retry_schedule(settings.retry_schedule)


def describe_error(exc: BaseException) -> str:
    """The error as recorded: its class and message (dispatchers keep secrets out of both)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _elapsed_ms(clock: float) -> float:
    return (time.perf_counter() - clock) * 1000


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 1.0
    return max(0.0, (when - utcnow()).total_seconds())
