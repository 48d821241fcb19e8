"""``delivery erase``: an address, and what was sent to it, out of every table (SQLite)."""

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from typer.testing import CliRunner

from delivery.cli import app, deliveries, erase  # noqa: F401 - registers the commands
from delivery.clock import utcnow
from delivery.engine.assembly import Assembly, assemble
from delivery.engine.throttle import RecipientThrottle
from delivery.erasure import ERASED_ADDRESS, AddressForms, Eraser
from delivery.errors import SecretKeyMissing, Suppressed
from delivery.log import AttemptResult, ClaimState
from delivery.log.counts import totals
from delivery.log.inbound import InboundMessageRow, ReceiptRow, SuppressionRow
from delivery.log.tables import (
    FINAL_STATUSES,
    AttemptRow,
    DeliveryRow,
    ErasureRow,
    Outcome,
    RecipientSendRow,
    Status,
)
from delivery.notifications.tables import (
    DigestItemRow,
    EventDeliveryRow,
    EventRow,
    SubscriptionRow,
)
from delivery.recipients import Preferences
from delivery.recipients.tables import RecipientPreferencesRow
from schemas import Envelope, Payload, Settings
from tests.conftest import webhook_secret
from tests.support.recording import finish

runner = CliRunner()

ANN = "Ann.Smith@Example.com"
BOB = "bob@example.com"
SECRET_TEXT = "your one-time code is 493817"


@pytest.fixture
def assembly(settings: Settings) -> Assembly:
    from delivery.cli import context

    context.registry.cache_clear()
    built = assemble(settings, channel_ttl=0)
    built.channels.add(
        "mail", "email", {"host": "127.0.0.1", "from_address": "noreply@example.org"}
    )
    built.channels.add("hooks", "webhook", {"secret": webhook_secret()})
    return built


def envelope(delivery_id: str, address: str, message: str = SECRET_TEXT) -> Envelope:
    return Envelope(
        id=delivery_id,
        channel="mail",
        address=address,
        payload=Payload(message=message, subject=f"for {address}"),
        idempotency_key=f"welcome-{address}",
    )


def deliver(assembly: Assembly, delivery_id: str, address: str, outcome: Outcome) -> None:
    """A delivery that has had one attempt, ending ``outcome``."""
    log = assembly.log
    claim = log.claim(envelope(delivery_id, address), lease=60)
    assert claim.state is ClaimState.CLAIMED
    result = AttemptResult(
        outcome=outcome,
        started_at=utcnow(),
        duration_ms=3.0,
        status_code=550 if outcome is not Outcome.DELIVERED else 250,
        error=None if outcome is Outcome.DELIVERED else f"550 {address} said: {SECRET_TEXT}",
        provider_ref=f"ref-{delivery_id}",
        detail={"to": address, "body": SECRET_TEXT},
        next_attempt_at=utcnow() + timedelta(hours=1) if outcome is Outcome.RETRY else None,
    )
    assert finish(log, claim, result, dispatcher="email", worker="w")


def seed(assembly: Assembly, address: str, *, prefix: str) -> None:
    """One of everything the log can hold about ``address``."""
    engine = assembly.log.engine
    deliver(assembly, f"{prefix}-sent", address, Outcome.DELIVERED)
    deliver(assembly, f"{prefix}-retrying", address, Outcome.RETRY)
    now = utcnow()
    with engine.begin() as tx:
        tx.execute(
            insert(ReceiptRow).values(
                channel="mail",
                delivery_id=f"{prefix}-sent",
                provider_ref=f"ref-{prefix}-sent",
                status="confirmed",
                provider_status="delivered",
                received_at=now,
                detail={"To": address},
            )
        )
        tx.execute(
            insert(InboundMessageRow).values(
                id=f"{prefix}-in",
                backend="sms-in",
                kind="http",
                identity=address,
                text=f"STOP {SECRET_TEXT}",
                extra={},
                received_at=now,
                status="handled",
            )
        )
        tx.execute(
            insert(SubscriptionRow).values(
                id=f"{prefix}-sub", event="order.shipped", channel="mail", address=address,
                paused=False, created_at=now, digest="1h",
            )
        )  # fmt: skip
        tx.execute(
            insert(DigestItemRow).values(
                subscription_id=f"{prefix}-sub", event_id=f"{prefix}-ev", window_start=0,
                context={"n": 1}, received_at=now,
            )
        )  # fmt: skip
        tx.execute(
            insert(EventRow).values(
                id=f"{prefix}-ev", name="order.shipped", context={"email": address},
                received_at=now, fanned_out_at=now,
            )
        )  # fmt: skip
        tx.execute(
            insert(EventDeliveryRow).values(
                event_id=f"{prefix}-ev", subscription_id=f"{prefix}-sub",
                delivery_id=f"{prefix}-sent", channel="mail", address=address,
                outcome="queued", created_at=now,
            )
        )  # fmt: skip
    Preferences(engine).set_rule(address, channel=None, category="marketing", enabled=False)
    RecipientThrottle(engine).take(
        "channel:mail", address, f"{prefix}-sent", limit=5, period=3600, now=now
    )


def rows(assembly: Assembly, table: Any, *where: Any) -> list[Any]:
    with assembly.log.engine.connect() as connection:
        return list(connection.execute(select(table).where(*where)))


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["erase", *args])
    return result.exit_code, result.stdout, result.stderr


def test_every_table_loses_the_address_and_what_was_sent_to_it(assembly: Assembly) -> None:
    # Given everything the log can hold about Ann, and the same about Bob
    seed(assembly, ANN, prefix="ann")
    seed(assembly, BOB, prefix="bob")
    assembly.service.suppressions.add("mail", ANN.lower(), "unsubscribed", detail="ref-x")
    # When Ann's address is erased, given in another case
    code, stdout, stderr = run("ANN.SMITH@example.COM", "--json")
    # Then every kind of row is counted
    assert code == 0, stderr
    assert json.loads(stdout) == {
        "deliveries": 2,
        "unsent": 1,
        "attempts": 2,
        "receipts": 1,
        "inbox": 1,
        "subscriptions": 1,
        "event_deliveries": 1,
        "events": 1,
        "digest_items": 1,
        "preferences": 1,
        "throttle": 1,
        "suppressions": 1,
        "early_receipts": 0,
    }
    # Deliveries keep their id and status, without the address or content
    sent, retrying = (assembly.log.get(f"ann-{kind}") for kind in ("sent", "retrying"))
    assert sent is not None and retrying is not None
    assert (sent.status, retrying.status) == ("delivered", "erased")
    for record in (sent, retrying):
        assert record.address == ERASED_ADDRESS
        assert (record.payload, record.idempotency_key, record.last_error) == (None, None, None)
        [attempt] = record.attempts
        assert (attempt.error, attempt.detail) == (None, {})
    assert sent.attempts[0].status_code == 250 and sent.receipts[0]["status"] == "confirmed"
    # Nothing anywhere still says Ann's address or the text sent to her
    dump = _everything(assembly)
    assert "ann.smith" not in dump.lower() and "ann-in" not in dump
    # Bob's rows are untouched
    assert BOB in dump and dump.count(SECRET_TEXT) >= 3
    bob = assembly.log.get("bob-retrying")
    assert bob is not None and (bob.status, bob.address) == ("retrying", BOB)
    assert Preferences(assembly.log.engine).show(BOB).rules
    # And the erasure itself is on record by keyed hash only
    [erasure] = rows(assembly, ErasureRow)
    assert len(erasure.address_hash) == 64 and erasure.counts["deliveries"] == 2


def _everything(assembly: Assembly) -> str:
    """Every row of every table this touches, as text."""
    tables = (
        DeliveryRow, AttemptRow, ReceiptRow, InboundMessageRow, SubscriptionRow, DigestItemRow,
        EventRow, EventDeliveryRow, RecipientPreferencesRow, RecipientSendRow, SuppressionRow,
    )  # fmt: skip
    return "\n".join(repr(row) for table in tables for row in rows(assembly, table))


def test_erasing_again_finds_nothing_and_says_so(assembly: Assembly) -> None:
    seed(assembly, ANN, prefix="ann")
    assert run(ANN)[0] == 0
    code, stdout, _ = run(ANN, "--json")
    assert code == 0 and set(json.loads(stdout).values()) == {0}
    code, stdout, _ = run(ANN)
    assert code == 0 and "nothing to erase" in stdout


def test_the_plain_output_says_it_in_words(assembly: Assembly) -> None:
    seed(assembly, ANN, prefix="ann")
    code, stdout, stderr = run(ANN)
    assert code == 0, stderr
    assert "2 deliveries: address and content erased" in stdout
    assert "1 delivery: not yet sent, now erased and never to be sent" in stdout
    assert "1 set of preferences: removed" in stdout
    assert "1 inbound message: removed" in stdout


def test_a_suppressed_address_stays_suppressed_by_keyed_hash(assembly: Assembly) -> None:
    # Given Ann suppressed on the mail channel (as the dispatcher writes her address)
    suppressions = assembly.service.suppressions
    canonical = assembly.dispatchers.get("mail")[1].validate_address(ANN)
    suppressions.add("mail", canonical, "bounced")
    # When she is erased
    assert run(ANN.upper())[0] == 0
    # Then the list no longer holds her address in clear…
    [kept] = rows(assembly, SuppressionRow)
    assert kept.address.startswith("erased:") and "ann" not in kept.address.lower()
    assert kept.reason == "bounced" and kept.detail is None
    # …but a delivery to her is still refused, one at a time and in a batch
    with pytest.raises(Suppressed):
        suppressions.check("mail", canonical)
    assert suppressions.among([("mail", canonical), ("mail", BOB)]) == {
        ("mail", canonical): "bounced",
        ("mail", BOB): None,
    }
    # and only on the channel she was suppressed on
    suppressions.check("hooks", canonical)


def test_the_hash_is_keyed_and_survives_a_key_rotation(
    assembly: Assembly, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import SecretStr

    from delivery.engine.crypto import generate_key
    from delivery.engine.suppression import SuppressionList
    from delivery.recipients.address_hash import erasure_keys

    assembly.service.suppressions.add("mail", ANN.lower(), "bounced")
    assert run(ANN)[0] == 0
    old = settings.secret_key
    assert old is not None
    both = f"{generate_key()},{old.get_secret_value()}"
    rotated = settings.model_copy(update={"secret_key": SecretStr(both)})
    other = settings.model_copy(update={"secret_key": SecretStr(generate_key())})
    engine = assembly.log.engine
    with pytest.raises(Suppressed):
        SuppressionList(engine, erasure_keys=erasure_keys(rotated)).check("mail", ANN.lower())
    # Another key finds nothing: the hash is not one anybody can compute
    SuppressionList(engine, erasure_keys=erasure_keys(other)).check("mail", ANN.lower())


def test_without_a_key_a_suppressed_address_is_not_erased(assembly: Assembly) -> None:
    seed(assembly, ANN, prefix="ann")
    assembly.service.suppressions.add("mail", ANN.lower(), "bounced")
    with pytest.raises(SecretKeyMissing, match="DELIVERY_SECRET_KEY"):
        Eraser(assembly.log.engine, keys=()).erase(AddressForms.of(ANN))
    # Nothing was erased: one transaction
    record = assembly.log.get("ann-retrying")
    assert record is not None and (record.status, record.address) == ("retrying", ANN)
    # Without a suppression there is nothing to keep by hash: it goes ahead
    assert Eraser(assembly.log.engine, keys=()).erase(AddressForms.of(BOB)).total == 0


def test_a_delivery_not_yet_sent_ends_erased_and_is_never_sent(assembly: Assembly) -> None:
    # Given deliveries to Ann waiting in each non-final status
    log = assembly.log
    deliver(assembly, "retrying", ANN, Outcome.RETRY)
    log.claim(envelope("sending", ANN), lease=600)  # a worker holds it
    deferred = envelope("scheduled", ANN).model_copy(
        update={"not_before": utcnow() + timedelta(hours=2)}
    )
    assert log.claim(deferred, lease=60).state is ClaimState.NOT_DUE
    # When she is erased
    code, stdout, _ = run(ANN, "--json")
    assert code == 0 and json.loads(stdout)["unsent"] == 3
    # Then each is erased, a final status, and a worker given the message again sends nothing
    assert Status.ERASED in FINAL_STATUSES
    for delivery_id in ("retrying", "sending", "scheduled"):
        record = log.get(delivery_id)
        assert record is not None and record.status == "erased"
        claim = log.claim(envelope(delivery_id, ANN), lease=60, now=utcnow() + timedelta(days=1))
        assert claim.state is ClaimState.DONE
        decision = assembly.service.deliver(envelope(delivery_id, ANN))
        assert (decision.action, decision.outcome) == ("done", None)
    # and the worker's message did not write the address back
    assert ANN not in _everything(assembly)
    # and the counts behind /metrics have the three as erased
    with log.engine.connect() as connection:
        assert totals(connection).ended[("mail", "erased")] == 3


def test_erased_is_a_status_the_log_command_takes(assembly: Assembly) -> None:
    deliver(assembly, "retrying", ANN, Outcome.RETRY)
    assert run(ANN)[0] == 0
    result = runner.invoke(app, ["log", "--status", "erased", "--json"])
    assert result.exit_code == 0, result.stderr
    [only] = json.loads(result.stdout)["deliveries"]
    assert (only["id"], only["status"], only["address"]) == ("retrying", "erased", "[erased]")


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("ann\x00@example.com", "control characters"),
        ("ann@example.com\n", "must not be empty"),
        ("@@@ ...", "is not an address"),
        ("a" * 600, "at most 512"),
    ],
)
def test_bad_addresses_are_refused_at_entry(assembly: Assembly, address: str, says: str) -> None:
    deliver(assembly, "retrying", ANN, Outcome.RETRY)
    code, stdout, stderr = run(address, "--json")
    if address == "ann@example.com\n":
        # Surrounding space goes, as everywhere else: this is Ann's address, not bad input
        assert code == 0
        return
    assert code == 2 and stdout == ""
    assert says in stderr and "Traceback" not in stderr
    record = assembly.log.get("retrying")
    assert record is not None and record.status == "retrying"


def test_other_spellings_of_other_addresses_are_not_erased(assembly: Assembly) -> None:
    # A webhook URL's case matters: only an email address is matched in any case
    hook = "https://hooks.example/Path/T0K3N"
    claim = assembly.log.claim(
        Envelope(id="h1", channel="hooks", address=hook, payload=Payload(message="m")), lease=60
    )
    assert claim.state is ClaimState.CLAIMED
    code, stdout, _ = run(hook.lower(), "--json")
    assert code == 0 and json.loads(stdout)["deliveries"] == 0
    code, stdout, _ = run(f"  {hook} ", "--json")
    assert code == 0 and json.loads(stdout)["deliveries"] == 1


def test_status_shows_an_erased_delivery(assembly: Assembly) -> None:
    deliver(assembly, "retrying", ANN, Outcome.RETRY)
    assert run(ANN)[0] == 0
    result = runner.invoke(app, ["status", "retrying"])
    assert result.exit_code == 0, result.stderr
    assert "erased" in result.stdout and ANN not in result.stdout
    result = runner.invoke(app, ["status", "retrying", "--json"])
    doc = json.loads(result.stdout)
    assert (doc["status"], doc["address"], doc["payload"]) == ("erased", "[erased]", None)


def test_without_a_key_the_command_says_what_to_set(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    from schemas import get_settings

    deliver(assembly, "retrying", ANN, Outcome.RETRY)
    assembly.service.suppressions.add("mail", ANN.lower(), "bounced")
    monkeypatch.delenv("DELIVERY_SECRET_KEY")
    get_settings.cache_clear()
    code, stdout, stderr = run(ANN, "--json")
    assert code == 1 and stdout == ""
    assert "set DELIVERY_SECRET_KEY" in stderr and "nothing was erased" in stderr
    assert ANN not in stderr and "Traceback" not in stderr
    record = assembly.log.get("retrying")
    assert record is not None and record.status == "retrying"


def test_the_log_command_shows_the_marker_not_a_masked_one(assembly: Assembly) -> None:
    deliver(assembly, "retrying", ANN, Outcome.RETRY)
    assert run(ANN)[0] == 0
    result = runner.invoke(app, ["log"])
    assert result.exit_code == 0, result.stderr
    assert "[erased]" in result.stdout


def test_an_erased_address_can_be_taken_off_the_list_again(assembly: Assembly) -> None:
    # A recipient who texts START after being erased asks to receive again
    from delivery.inbound.wiring import Inbound

    canonical = assembly.dispatchers.get("mail")[1].validate_address(ANN)
    assembly.service.suppressions.add("mail", canonical, "opt-out")
    assert run(ANN)[0] == 0
    suppressions = Inbound.from_assembly(assembly).suppressions
    assert suppressions.remove("mail", canonical, reason="opt-out")
    assert rows(assembly, SuppressionRow) == []
    suppressions.check("mail", canonical)
