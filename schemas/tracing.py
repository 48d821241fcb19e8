"""The W3C ``traceparent`` a task message may carry (``delivery/tracing.py`` fills it in).

Checked leniently: a malformed value is dropped, never an error, so a caller's broken
tracing header can neither fail a delivery nor stop a worker.
"""

import re
from typing import Annotated

from pydantic import BeforeValidator

#: Version 00 (``00-<trace id>-<parent span id>-<flags>``), in lower-case hex as the
#: W3C Trace Context recommendation requires: 55 characters.
_TRACEPARENT = re.compile(r"00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}")


def valid_traceparent(value: object) -> str | None:
    """``value`` if it is a version-00 traceparent naming a trace and a span, else None
    (all-zero ids are invalid by the recommendation)."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or not int(match["trace"], 16) or not int(match["span"], 16):
        return None
    return value


#: An optional traceparent field: anything but a valid one reads as None.
Traceparent = Annotated[str | None, BeforeValidator(valid_traceparent)]
