"""The router: every handler that takes a message, recorded, retried, never run twice."""

from importlib.metadata import EntryPoint

import pytest

from delivery.engine.assembly import assemble
from delivery.errors import PluginLoadError, UnknownHandler
from delivery.inbound import InboundMessage
from delivery.inbound.registry import HANDLERS_GROUP, BackendRegistry, HandlerRegistry
from delivery.inbound.router import Router
from delivery.inbound.wiring import Inbound, handler_policy
from schemas import Settings
from tests.delivery.inbound.handlers import FlakyHandler


def handlers(*names: str) -> HandlerRegistry:
    where = {
        "flaky": "tests.delivery.inbound.handlers:FlakyHandler",
        "refusing": "tests.delivery.inbound.handlers:RefusingHandler",
        "always-broken": "tests.delivery.inbound.handlers:AlwaysBroken",
        "opt-out": "delivery.inbound.keywords:OptOutHandler",
        "missing": "tests.delivery.inbound.no_such_module:Handler",
    }
    return HandlerRegistry([EntryPoint(n, where[n], HANDLERS_GROUP) for n in names])


@pytest.fixture
def inbound(settings: Settings) -> Inbound:
    parts = Inbound.from_assembly(assemble(settings))
    parts.backends.add("gw", "http", {"channel": "sms-out"})
    parts.backends.add("tw", "twilio", {"auth_token": "t", "channel": "sms-out"})
    return parts


def receive(inbound: Inbound, text: str, backend: str = "gw", kind: str = "http") -> str:
    return inbound.inbox.record(backend, kind, InboundMessage("+14155552671", text)).id


def router(inbound: Inbound, *names: str) -> Router:
    return inbound.router(handlers(*names))


def test_a_handler_that_raises_is_retried_and_the_others_are_not_run_again(
    inbound: Inbound, settings: Settings
) -> None:
    # Given a message two handlers take, one of which fails once
    ident = receive(inbound, "ping")
    route = router(inbound, "flaky", "missing")
    # When it is routed, the failure asks for a retry after the policy's delay
    first = route.route(ident)
    # (full jitter over the first step of exponential backoff)
    assert first.action == "retry" and 0 <= first.countdown <= settings.backoff_base
    entry = inbound.inbox.get(ident)
    assert entry is not None and entry.status == "retrying"
    [handling] = entry.handling
    assert (handling.outcome, handling.attempts) == ("retry", 1)
    assert handling.result == "ConnectionError: the CRM is down"
    # and the second time it is handled, and recorded so
    assert route.route(ident).status == "handled"
    entry = inbound.inbox.get(ident)
    assert entry is not None and entry.status == "handled" and entry.routed_at is not None
    assert [(h.handler, h.outcome, h.attempts, h.result) for h in entry.handling] == [
        ("flaky", "handled", 2, "stored 'ping'")
    ]
    # and a third routing (a redelivered task) does not run it again
    assert route.route(ident).status == "handled"
    assert FlakyHandler.seen[ident] == 2


def test_permanent_errors_fail_and_retries_run_out(inbound: Inbound, settings: Settings) -> None:
    refused = receive(inbound, "refuse this")
    broken = receive(inbound, "BROKEN")
    route = router(inbound, "refusing", "always-broken")
    assert route.route(refused).status == "failed"
    [h] = inbound.inbox.get(refused).handling  # type: ignore[union-attr]
    assert (h.handler, h.outcome) == ("refusing", "failed")
    assert h.result == "PermanentError: refused, and always will be"
    for _ in range(settings.max_attempts - 1):
        assert route.route(broken).action == "retry"
    assert route.route(broken).status == "failed"
    [h] = inbound.inbox.get(broken).handling  # type: ignore[union-attr]
    assert h.outcome == "failed" and h.result == "gave up: RuntimeError: bug"
    assert h.attempts == settings.max_attempts


def test_backend_and_keyword_declarations(inbound: Inbound) -> None:
    route = router(inbound, "refusing")
    # "refusing" takes REFUSE on backend gw only
    on_twilio = receive(inbound, "refuse", backend="tw", kind="twilio")
    assert route.route(on_twilio).status == "unhandled"
    assert route.route(receive(inbound, "hello")).status == "unhandled"


def test_opt_out_and_back_in(inbound: Inbound) -> None:
    route = router(inbound, "opt-out")
    assert route.route(receive(inbound, " stop ", backend="tw", kind="twilio")).status == "handled"
    [s] = inbound.suppressions.list(channel="sms-out")
    assert (s.address, s.reason) == ("+14155552671", "opt-out")
    # "stop by later" is a message, not an opt-out; and http backends do not opt out
    assert route.route(receive(inbound, "stop by later", "tw", "twilio")).status == "unhandled"
    assert route.route(receive(inbound, "STOP")).status == "unhandled"
    assert route.route(receive(inbound, "START", backend="tw", kind="twilio")).status == "handled"
    assert inbound.suppressions.list() == []


def test_duplicates_by_provider_id(inbound: Inbound) -> None:
    message = InboundMessage("+1", "hi", provider_id="SM1")
    first = inbound.inbox.record("gw", "http", message)
    again = inbound.inbox.record("gw", "http", message)
    other = inbound.inbox.record("tw", "twilio", message)
    assert (first.duplicate, again.duplicate, again.id) == (False, True, first.id)
    assert other.id != first.id and not other.duplicate
    assert len(inbound.inbox.find()) == 2


def test_installed_kinds_and_handlers() -> None:
    # Catches typos in pyproject.toml's entry points.
    kinds = BackendRegistry.from_installed()
    assert {"http", "twilio", "standard-webhooks"} <= set(kinds.names())
    assert kinds.describe("twilio")["config_fields"][1]["name"] == "auth_token"
    assert kinds.describe("twilio")["config_fields"][1]["secret"] is True
    installed = HandlerRegistry.from_installed()
    assert {"echo", "opt-out"} <= set(installed.names())
    assert installed.get("echo").keywords == frozenset({"PING"})
    with pytest.raises(UnknownHandler, match="'fax'; known: "):
        installed.get("fax")
    with pytest.raises(PluginLoadError, match="does not load"):
        handlers("missing").get("missing")
    with pytest.raises(PluginLoadError, match="declared by both"):
        HandlerRegistry(
            [EntryPoint("echo", "a:B", HANDLERS_GROUP), EntryPoint("echo", "c:D", HANDLERS_GROUP)]
        )


def test_handler_policy_never_waits_past_the_broker_delay_limit(settings: Settings) -> None:
    policy = handler_policy(settings)
    assert policy.cap <= settings.delay_limit and policy.schedule is None
