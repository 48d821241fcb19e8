"""Quiet hours: windows within a day, across midnight, and across daylight-saving changes."""

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.recipients import QuietHours, RecipientPreferences
from delivery.recipients.quiet import check_timezone


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def quiet(window: str, tz: str | None = "Europe/London") -> RecipientPreferences:
    return RecipientPreferences(timezone=tz, quiet=QuietHours.parse(window))


@pytest.mark.parametrize(
    ("now", "until"),
    [
        # London in winter is UTC: 22:00-07:00 local is 22:00-07:00 UTC
        ("2026-01-10T21:59:59+00:00", None),
        ("2026-01-10T22:00:00+00:00", "2026-01-11T07:00:00+00:00"),
        ("2026-01-10T23:30:00+00:00", "2026-01-11T07:00:00+00:00"),
        ("2026-01-11T03:00:00+00:00", "2026-01-11T07:00:00+00:00"),
        ("2026-01-11T07:00:00+00:00", None),
        ("2026-01-11T12:00:00+00:00", None),
        # in summer London is UTC+1: the window is 21:00-06:00 UTC
        ("2026-07-10T21:30:00+00:00", "2026-07-11T06:00:00+00:00"),
        ("2026-07-10T20:59:00+00:00", None),
        ("2026-07-11T05:59:00+00:00", "2026-07-11T06:00:00+00:00"),
    ],
)
def test_a_window_across_midnight(now: str, until: str | None) -> None:
    found = quiet("22:00-07:00").quiet_until(at(now))
    assert found == (None if until is None else at(until))
    assert found is None or found.tzinfo is UTC


def test_a_window_within_one_day() -> None:
    prefs = quiet("13:00-14:30", "Asia/Tokyo")  # UTC+9, no daylight saving
    assert prefs.quiet_until(at("2026-03-01T04:15:00+00:00")) == at("2026-03-01T05:30:00+00:00")
    assert prefs.quiet_until(at("2026-03-01T03:59:00+00:00")) is None
    assert prefs.quiet_until(at("2026-03-01T05:30:00+00:00")) is None


def test_without_a_time_zone_the_window_is_utc() -> None:
    prefs = quiet("00:00-06:00", tz=None)
    assert prefs.quiet_until(at("2026-03-01T05:00:00+00:00")) == at("2026-03-01T06:00:00+00:00")


def test_no_quiet_hours_never_hold_anything_back() -> None:
    assert (
        RecipientPreferences(timezone="Europe/London").quiet_until(at("2026-01-01T03:00")) is None
    )


def test_the_night_the_clocks_go_forward() -> None:
    # 29 March 2026, London: 01:00 GMT becomes 02:00 BST. 22:00-07:00 ends at 07:00 BST,
    # which is 06:00 UTC: eight hours after it began, not nine.
    prefs = quiet("22:00-07:00")
    assert prefs.quiet_until(at("2026-03-28T22:00:00+00:00")) == at("2026-03-29T06:00:00+00:00")
    # A window ending inside the gap (01:30 never happens that night) lasts as long as on
    # other nights: it ends at 02:30 BST, an hour after 00:30 GMT
    gap = quiet("00:30-01:30")
    assert gap.quiet_until(at("2026-03-29T00:45:00+00:00")) == at("2026-03-29T01:30:00+00:00")


def test_the_night_the_clocks_go_back() -> None:
    # 25 October 2026, London: 02:00 BST becomes 01:00 GMT, so 01:00-01:59 happens twice.
    prefs = quiet("00:00-01:30")
    # In the first 01:15 (BST, 00:15 UTC) the window ends at the first 01:30 (00:30 UTC)
    assert prefs.quiet_until(at("2026-10-25T00:15:00+00:00")) == at("2026-10-25T00:30:00+00:00")
    # In the second 01:15 (GMT, 01:15 UTC) it is still "before 01:30", and ends at the second
    assert prefs.quiet_until(at("2026-10-25T01:15:00+00:00")) == at("2026-10-25T01:30:00+00:00")


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from(["Europe/London", "America/New_York", "Australia/Lord_Howe", "UTC"]),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 23),
    st.integers(0, 59),
)
def test_an_end_is_always_later_and_within_a_day(now, tz, sh, sm, eh, em) -> None:
    if (sh, sm) == (eh, em):
        return
    end = quiet(f"{sh:02d}:{sm:02d}-{eh:02d}:{em:02d}", tz).quiet_until(now)
    if end is not None:
        assert end.tzinfo is UTC
        assert 0 < (end - now).total_seconds() <= 25 * 3600


@pytest.mark.parametrize(
    "text",
    ["", "22:00", "22-07", "24:00-07:00", "22:60-07:00", "7:00-8:00", "10:00-10:00", "x" * 99],
)
def test_a_bad_window_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="quiet hours"):
        QuietHours.parse(text)


@given(st.text(max_size=40))
def test_any_text_is_a_window_or_a_value_error(text: str) -> None:
    try:
        window = QuietHours.parse(text)
    except ValueError:
        return
    assert QuietHours.parse(str(window)) == window


@pytest.mark.parametrize(
    "name", ["", "Mars/Olympus", "../../etc/passwd", "/etc/passwd", "Europe/London\x00", "x" * 65]
)
def test_an_unknown_time_zone_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        check_timezone(name)


@given(st.text(max_size=80))
def test_any_time_zone_name_is_known_or_a_value_error(name: str) -> None:
    with contextlib.suppress(ValueError):
        assert check_timezone(name) == name
