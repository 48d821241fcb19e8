"""Suppression lists: addresses a channel no longer sends to.

An address gets here from an opt-out (an inbound ``STOP``), a permanent bounce (a receipt
naming an unsubscribed or non-existent number) or a person. A delivery to it then fails at
once, without the provider being called: sending again would be against the recipient's
wishes, or would only bounce again and cost the sender's reputation.

An erased address (``delivery erase``) stays on the list as ``erased:`` and its keyed hash
(``delivery.recipients.address_hash``): the check looks for both, in the one query.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, delete, select, tuple_

from delivery.clock import utcnow
from delivery.errors import Suppressed
from delivery.log.database import read_only, upsert_insert
from delivery.log.inbound import SuppressionRow
from delivery.recipients.address_hash import hashed_forms

_TABLE = cast(Table, SuppressionRow.__table__)
#: Prebuilt: the check runs before every send.
_CHECK = select(_TABLE.c.reason).where(
    _TABLE.c.channel == bindparam("channel"),
    _TABLE.c.address.in_(bindparam("addresses", expanding=True)),
)
_AMONG = select(_TABLE.c.channel, _TABLE.c.address, _TABLE.c.reason).where(
    tuple_(_TABLE.c.channel, _TABLE.c.address).in_(bindparam("pairs", expanding=True))
)
#: (channel, address) pairs looked up per statement.
_AMONG_CHUNK = 500

#: What a batch's one look-up found: (channel, address) -> the reason, or None when the
#: address is not suppressed.
Known = Mapping[tuple[str, str], str | None]


@dataclass(frozen=True, slots=True)
class Suppression:
    channel: str
    address: str
    reason: str
    detail: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "address": self.address,
            "reason": self.reason,
            "detail": self.detail,
            "created_at": self.created_at.isoformat(),
        }


class SuppressionList:
    def __init__(self, engine: Engine, *, erasure_keys: tuple[bytes, ...] = ()) -> None:
        """``erasure_keys`` (``address_hash.erasure_keys``): to find erased addresses too;
        without them only addresses kept in clear are found."""
        self.engine = engine
        self._erasure_keys = erasure_keys
        self._reader = read_only(engine)
        self._insert: Any = upsert_insert(engine.dialect.name)

    def check(self, channel: str, address: str, *, known: Known | None = None) -> None:
        """Raises: Suppressed when ``address`` is on ``channel``'s list (as ``known`` has
        it, when it has the pair: a batch looks its addresses up at once)."""
        pair = (channel, address)
        if known is not None and pair in known:
            reason = known[pair]
        else:
            query = {"channel": channel, "addresses": self._forms(address)}
            with self._reader.connect() as connection:
                reason = connection.execute(_CHECK, query).scalar()
        if reason is not None:
            raise Suppressed(f"{address} is on channel {channel!r}'s suppression list ({reason})")

    def among(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """Each (channel, address) pair with its suppression's reason, or None: for ``check``
        to answer a batch from one query rather than one per delivery."""
        known: dict[tuple[str, str], str | None] = dict.fromkeys(pairs)
        # Each pair as the list may keep it (in clear, or erased) -> the pair asked about.
        asked = {
            (channel, form): (channel, address)
            for channel, address in known
            for form in self._forms(address)
        }
        wanted = list(asked)
        with self._reader.connect() as connection:
            for start in range(0, len(wanted), _AMONG_CHUNK):
                chunk = wanted[start : start + _AMONG_CHUNK]
                for channel, address, reason in connection.execute(_AMONG, {"pairs": chunk}):
                    pair = asked[(channel, address)]
                    known[pair] = known[pair] or reason
        return known

    def _forms(self, address: str) -> list[str]:
        """``address`` as the list may keep it: in clear, or erased under each key."""
        return [address, *hashed_forms(self._erasure_keys, address)]

    def add(self, channel: str, address: str, reason: str, detail: str | None = None) -> bool:
        """Suppress ``address`` on ``channel``; False if it already was (the first reason
        is kept)."""
        statement = (
            self._insert(_TABLE)
            .values(
                channel=channel,
                address=address,
                reason=reason[:64],
                detail=detail,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing()
            # What was inserted is what comes back: psycopg's rowcount here is -1.
            .returning(_TABLE.c.channel)
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).first() is not None

    def remove(self, channel: str, address: str, *, reason: str | None = None) -> bool:
        """Send to ``address`` again (kept in clear, or erased); with ``reason``, only if it
        was suppressed for that."""
        statement = delete(_TABLE).where(
            _TABLE.c.channel == channel, _TABLE.c.address.in_(self._forms(address))
        )
        if reason is not None:
            statement = statement.where(_TABLE.c.reason == reason)
        with self.engine.begin() as connection:
            return bool(connection.execute(statement).rowcount)

    def list(self, *, channel: str | None = None, limit: int = 1000) -> list[Suppression]:
        query = select(_TABLE).order_by(_TABLE.c.channel, _TABLE.c.created_at).limit(limit)
        if channel:
            query = query.where(_TABLE.c.channel == channel)
        with self.engine.connect() as connection:
            return [
                Suppression(r.channel, r.address, r.reason, r.detail, r.created_at)
                for r in connection.execute(query)
            ]
