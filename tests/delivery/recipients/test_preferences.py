"""Preferences: which rule wins, how addresses are normalised, and the store the worker,
the CLI and the HTTP API share (a migrated SQLite log)."""

import threading
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

from delivery.log import DeliveryLog
from delivery.log.database import get_engine
from delivery.log.migrate import upgrade
from delivery.recipients import (
    MAX_RULES,
    Preferences,
    QuietHours,
    RecipientPreferences,
    Rule,
    preference_key,
)
from schemas import Settings


@pytest.fixture
def preferences(settings: Settings) -> Preferences:
    return Preferences(DeliveryLog.from_settings(settings).engine)


def prefs(*rules: tuple[str | None, str | None, bool]) -> RecipientPreferences:
    return RecipientPreferences(rules=tuple(Rule(c, k, e) for c, k, e in rules))


def test_everything_is_on_without_rules() -> None:
    assert prefs().refuses(channel="email", category="marketing") is None
    assert prefs().refuses(channel="email", category=None) is None


def test_the_most_specific_rule_wins() -> None:
    # Given everything off, email off, marketing on, and marketing by email off
    p = prefs((None, None, False), ("email", None, False), (None, "marketing", True))
    p = p.with_rule(Rule("email", "marketing", False))
    # channel and category beat category alone
    assert p.refuses(channel="email", category="marketing") == (
        "preferences: marketing on email off for this address"
    )
    # category beats channel: marketing by SMS is on, although everything is off
    assert p.refuses(channel="sms", category="marketing") is None
    # channel beats "any": receipts by email are off because email is
    assert p.refuses(channel="email", category="receipts") == (
        "preferences: email off for this address"
    )
    # and what nothing more specific names falls to "everything"
    assert p.refuses(channel="sms", category="receipts") == (
        "preferences: everything off for this address"
    )
    assert p.refuses(channel="sms", category=None) == "preferences: everything off for this address"


def test_a_category_rule_does_not_touch_deliveries_without_a_category() -> None:
    p = prefs((None, "marketing", False))
    assert p.refuses(channel="email", category=None) is None
    assert p.refuses(channel="email", category="marketing") == (
        "preferences: marketing off for this address"
    )


def test_a_rule_replaces_the_one_for_the_same_channel_and_category() -> None:
    p = prefs((None, "marketing", False)).with_rule(Rule(None, "marketing", True))
    assert p.rules == (Rule(None, "marketing", True),)
    with pytest.raises(ValueError, match="at most"):
        prefs(*((f"c{i}", None, False) for i in range(MAX_RULES))).with_rule(Rule("x", None, True))


@pytest.mark.parametrize(
    ("given_", "key"),
    [
        ("  Ann@Example.COM ", "ann@example.com"),
        ("ann@example.com", "ann@example.com"),
        ("+44 7700 900123", "+44 7700 900123"),
        ("https://Example.com/Hook", "https://Example.com/Hook"),
        ("U024BE7LH", "U024BE7LH"),
    ],
)
def test_addresses_are_normalised_once(given_: str, key: str) -> None:
    assert preference_key(given_) == key


@given(st.text(max_size=60))
def test_normalising_twice_changes_nothing(address: str) -> None:
    assert preference_key(preference_key(address)) == preference_key(address)


def test_set_show_and_look_up(preferences: Preferences) -> None:
    # Given one address that turned marketing off and has quiet hours, spelt differently
    preferences.set_rule("Ann@Example.com", channel=None, category="marketing", enabled=False)
    preferences.set_quiet(
        " ann@example.com", QuietHours.parse("22:00-07:00"), timezone="Europe/London"
    )
    # Then every spelling finds them, keyed as given, and others have none
    found = preferences.lookup(["ANN@example.com", "ann@example.com", "bob@example.com"])
    assert set(found) == {"ANN@example.com", "ann@example.com"}
    ann = found["ann@example.com"]
    assert ann.refuses(channel="email", category="marketing")
    assert ann.timezone == "Europe/London" and str(ann.quiet) == "22:00-07:00"
    assert preferences.show("ann@EXAMPLE.com") == ann
    assert preferences.show("bob@example.com") == RecipientPreferences()
    # Clearing the quiet hours keeps the time zone and the rules
    cleared = preferences.set_quiet("ann@example.com", None)
    assert cleared.quiet is None and cleared.timezone == "Europe/London" and cleared.rules


def test_preferences_that_become_empty_are_removed(preferences: Preferences) -> None:
    preferences.set_quiet("ann@example.com", QuietHours.parse("22:00-07:00"))
    preferences.replace("ann@example.com", RecipientPreferences())
    assert preferences.lookup(["ann@example.com"]) == {}


def _count_queries(preferences: Preferences) -> list[str]:
    statements: list[str] = []
    event.listen(
        preferences.engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    return statements


def test_a_batch_is_one_query_and_an_empty_table_soon_none(settings: Settings) -> None:
    engine = DeliveryLog.from_settings(settings).engine
    preferences = Preferences(engine, empty_recheck_seconds=3600)
    statements = _count_queries(preferences)
    # No addresses: no query at all
    assert preferences.lookup([]) == {}
    assert statements == []
    # Nobody has preferences: the first look-up finds out, the next ones ask nothing
    assert preferences.lookup(["a@example.com", "b@example.com"]) == {}
    asked = len(statements)
    assert preferences.lookup([f"{i}@example.com" for i in range(100)]) == {}
    assert len(statements) == asked
    # A preference set through this store is seen at once, with one query per batch
    preferences.set_rule("c@example.com", channel="email", category=None, enabled=False)
    statements.clear()
    found = preferences.lookup([f"{i}@example.com" for i in range(100)] + ["c@example.com"])
    assert list(found) == ["c@example.com"]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


def test_another_process_s_first_preference_is_seen_after_the_recheck(settings: Settings) -> None:
    engine = DeliveryLog.from_settings(settings).engine
    worker = Preferences(engine, empty_recheck_seconds=0)
    assert worker.lookup(["a@example.com"]) == {}
    Preferences(engine).set_rule("a@example.com", channel=None, category=None, enabled=False)
    assert "a@example.com" in worker.lookup(["a@example.com"])


def test_the_recheck_bound_counts_from_before_the_read_that_saw_nobody(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a clock that moves only when told to, and a read that takes 5 s (a loaded
    # machine): the first preference is committed elsewhere while it runs
    engine = DeliveryLog.from_settings(settings).engine
    now = [100.0]
    clock = SimpleNamespace(monotonic=lambda: now[0])
    monkeypatch.setattr("delivery.recipients.preferences._time", clock)

    @event.listens_for(engine, "after_cursor_execute")
    def slow_read(*_: object) -> None:
        now[0] += 5.0

    worker = Preferences(engine, empty_recheck_seconds=2.0)
    assert worker.lookup(["a@example.com"]) == {}
    event.remove(engine, "after_cursor_execute", slow_read)
    Preferences(engine).set_rule("a@example.com", channel=None, category=None, enabled=False)
    # When the bound has passed since the read began (not since it ended)
    now[0] = 102.0
    # Then the preference is honoured
    assert "a@example.com" in worker.lookup(["a@example.com"])


def test_concurrent_changes_to_one_address_are_all_kept(preferences: Preferences) -> None:
    # Given ten people (or tabs) each turning one category off at the same moment
    def turn_off(i: int) -> None:
        preferences.set_rule("ann@example.com", channel=None, category=f"c{i}", enabled=False)

    threads = [threading.Thread(target=turn_off, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then all ten rules are there
    assert len(preferences.show("ann@example.com").rules) == 10


@pytest.mark.parametrize(
    ("address", "complaint"),
    [("", "empty"), ("   ", "empty"), ("a\x00b", "control"), ("x" * 513, "at most")],
)
def test_an_address_that_cannot_be_kept_is_refused(
    preferences: Preferences, address: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        preferences.set_rule(address, channel=None, category="marketing", enabled=False)


def test_bad_channels_and_categories_are_refused(preferences: Preferences) -> None:
    with pytest.raises(ValueError, match="category"):
        preferences.set_rule("a@example.com", channel=None, category="Marketing", enabled=False)
    with pytest.raises(ValueError, match="channel"):
        preferences.set_rule("a@example.com", channel="no spaces", category=None, enabled=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Preferences:
    """One migrated log for the property tests (hypothesis runs each many times)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('prefs') / 'log.sqlite3'}"
    upgrade(url)
    preferences = Preferences(get_engine(url), empty_recheck_seconds=0)
    preferences.set_rule("someone@example.com", channel=None, category=None, enabled=False)
    return preferences


@given(addresses=st.lists(st.text(st.characters(codec=None), max_size=20), max_size=5))
def test_looking_up_any_text_never_fails(shared: Preferences, addresses: list[str]) -> None:
    # The worker looks up whatever addresses its deliveries have; odd ones find nothing
    assert shared.lookup(addresses) == {}
