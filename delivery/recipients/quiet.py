"""Quiet hours: a daily window, in the recipient's own time zone, when nothing non-critical
should reach them.

The window is wall-clock time (``22:00-07:00`` means ten at night to seven in the morning
wherever the recipient lives, summer or winter), so its end is found in local time and only
then turned into UTC. ``zoneinfo`` does the daylight-saving arithmetic.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: ``HH:MM-HH:MM``, 24-hour clock, both ends on the minute.
QUIET_PATTERN = r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$"
_QUIET = re.compile(QUIET_PATTERN)
#: IANA names are short (the longest is about 30 characters).
MAX_TIMEZONE = 64


@dataclass(frozen=True, slots=True)
class QuietHours:
    """From ``start`` (inclusive) to ``end`` (exclusive), local time; crosses midnight when
    ``start`` is later than ``end``."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> "QuietHours":
        """``22:00-07:00`` as a window.

        Raises:
            ValueError: not ``HH:MM-HH:MM``, or a window of no length.
        """
        found = _QUIET.fullmatch(text.strip()) if len(text) <= 32 else None
        if found is None:
            raise ValueError("quiet hours must be HH:MM-HH:MM on a 24-hour clock, e.g. 22:00-07:00")
        sh, sm, eh, em = (int(part) for part in found.groups())
        if (sh, sm) == (eh, em):
            raise ValueError("quiet hours must start and end at different times")
        return cls(time(sh, sm), time(eh, em))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def until(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """The aware UTC end of the window if ``now`` (aware) falls inside it, else None."""
        local = now.astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= clock < self.end
            end_day = local.date()
        else:  # across midnight: the evening part ends tomorrow, the morning part today
            inside = clock >= self.start or clock < self.end
            end_day = local.date() + timedelta(days=1 if clock >= self.start else 0)
        if not inside:
            return None
        # A wall-clock end that happens twice (clocks going back) is the first one still to
        # come; one that never happens (clocks going forward) is read with the offset before
        # the change, so the window lasts as long as on any other night.
        for fold in (0, 1):
            end = datetime.combine(end_day, self.end, tzinfo=zone).replace(fold=fold)
            if end.astimezone(UTC) > now:
                return end.astimezone(UTC)
        return None


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows (``Europe/London``).

    Raises:
        ValueError: empty, too long, or unknown.
    """
    if not name or len(name) > MAX_TIMEZONE or not name.isprintable():
        raise ValueError("time zone must be an IANA name such as Europe/London")
    zone(name)
    return name


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The zone called ``name``.

    Raises:
        ValueError: no such zone (zoneinfo also refuses paths and other odd keys).
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("unknown time zone; use an IANA name such as Europe/London") from None
