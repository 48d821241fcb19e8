"""Digest windows: ``15m``, ``1h``, ``1d``, and where a moment falls among them.

Windows are aligned on the epoch (an hour's window starts on the hour, UTC), so every
worker that collects an event, on whatever machine, puts it in the same window without
asking any other.
"""

import re
from datetime import UTC, datetime

#: The shortest window people may ask for: a digest of seconds is a flood by another name.
MIN_DIGEST = 60
#: The longest: a week.
MAX_DIGEST = 7 * 24 * 3600

_PERIOD = re.compile(r"(\d{1,7})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def period_seconds(text: str) -> int:
    """Seconds in a period such as ``15m``, ``1h`` or ``1d`` (``s`` too).

    Raises:
        ValueError: not a whole number followed by s, m, h or d.
    """
    match = _PERIOD.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"{str(text)[:40]!r} is not a period: a whole number above 0 and a unit, "
            "m (minutes), h (hours) or d (days), e.g. 15m, 1h or 1d"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def check_period(text: str, *, shortest: int = MIN_DIGEST) -> int:
    """``period_seconds``, and within ``shortest`` and a week.

    Raises:
        ValueError: not a period, or too short or too long.
    """
    seconds = period_seconds(text)
    if not shortest <= seconds <= MAX_DIGEST:
        raise ValueError(f"{text!r} is outside {shortest} seconds to 7 days (e.g. 15m, 1h or 1d)")
    return seconds


def window_start(moment: datetime, period: int) -> int:
    """The start of the window ``moment`` falls in, in whole seconds since the epoch."""
    seconds = int(moment.timestamp())
    return seconds - seconds % period


def as_datetime(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)
