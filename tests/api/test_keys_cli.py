"""``delivery keys`` and ``delivery cancel`` from the command line."""

import json
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from delivery.api.keys import Caller, KeyStore, KeyVerifier
from delivery.cli import app, deliveries, keys  # noqa: F401 - registers the commands
from delivery.clock import utcnow
from delivery.log import DeliveryLog
from schemas import Envelope, Payload, Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _settings(settings: Settings) -> None:
    from delivery.cli import context

    context.registry.cache_clear()


def test_admin_and_test_keys_are_made_and_listed_as_such(settings: Settings) -> None:
    for args in (["ops", "--admin"], ["ci", "--test"], ["plain"]):
        made = runner.invoke(app, ["keys", "add", *args])
        assert made.exit_code == 0, made.stderr
    assert (
        "test: no provider is called" in runner.invoke(app, ["keys", "add", "ci2", "--test"]).stderr
    )
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)["keys"]
    kinds = {k["name"]: (k["admin"], k["test"]) for k in listed}
    assert kinds["ops"] == (True, False) and kinds["ci"] == (False, True)
    assert kinds["plain"] == (False, False)
    table = runner.invoke(app, ["keys", "list"]).stdout
    assert "admin" in table and "test" in table


def test_a_key_is_shown_once_and_only_its_hash_is_kept(settings: Settings) -> None:
    # When a person makes a key
    made = runner.invoke(app, ["keys", "add", "billing"])
    assert made.exit_code == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("dlv_")
    # Then it works, the list never shows it, and the database holds no copy of it
    store = KeyStore(DeliveryLog.from_settings(settings).engine)
    assert KeyVerifier(store, cache_seconds=0).verify(key) == Caller("billing")
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert key not in listed.stdout
    [doc] = json.loads(listed.stdout)["keys"]
    assert doc["name"] == "billing" and doc["active"]
    database = settings.resolved_database_url.removeprefix("sqlite:///")
    from pathlib import Path

    assert key.split("_", 2)[2].encode() not in Path(database).read_bytes()
    # A second key of the same name is refused with a message
    again = runner.invoke(app, ["keys", "add", "billing"])
    assert again.exit_code == 1 and "exists already" in again.stderr
    # Revoked, it stops working
    assert runner.invoke(app, ["keys", "revoke", "billing"]).exit_code == 0
    assert KeyVerifier(store, cache_seconds=0).verify(key) is None
    assert runner.invoke(app, ["keys", "revoke", "billing"]).exit_code == 1
    bad = runner.invoke(app, ["keys", "add", "no spaces"])
    assert bad.exit_code == 1 and "key name" in bad.stderr


def test_cancel_from_the_command_line(settings: Settings) -> None:
    log = DeliveryLog.from_settings(settings)
    envelope = Envelope(id="d-1", channel="hooks", address="a", payload=Payload(message="m"))
    claim = log.claim(envelope, lease=30)
    busy = runner.invoke(app, ["cancel", "d-1"])
    assert busy.exit_code == 1 and "being sent now" in busy.stderr
    # held back by a paused channel or an open breaker: waiting in the log
    log.release(claim, until=utcnow() + timedelta(minutes=5), parked=False)
    done = runner.invoke(app, ["cancel", "d-1"])
    assert done.exit_code == 0, done.stderr
    record = log.get("d-1")
    assert record is not None and record.status == "cancelled"
    # and a worker's claim of it finds it done: it is never sent
    assert log.claim(envelope, lease=30).state.value == "done"
