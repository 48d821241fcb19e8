"""Channels: a name bound to a dispatcher and its validated config, stored worker-side."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Engine, update

from delivery.dispatchers.base import DispatcherConfig
from delivery.dispatchers.registry import DispatcherRegistry
from delivery.engine.crypto import SecretBox
from delivery.engine.sealed import SealedConfigs, check_name
from delivery.engine.sealed import split_secrets as split_secrets  # its old home
from delivery.engine.sealed import validate_config as validate_config  # its old home
from delivery.errors import ConfigurationError, UnknownChannel
from delivery.log.tables import ChannelRow
from schemas import messages
from schemas.settings import parse_delays

RATE_LIMIT_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)/(s|m|h)$")

#: How long a delivery waits for its provider's receipt before it is looked up (72 h).
DEFAULT_RECEIPT_TIMEOUT = 72 * 3600.0

#: A plugin config model.
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    dispatcher: str
    config: DispatcherConfig
    retry_schedule: tuple[float, ...] | None = None
    rate_limit: str | None = None
    paused: bool = False
    updated_at: datetime | None = None
    breaker_open_until: datetime | None = None
    #: The backup channel deliveries move to when this one's provider is down.
    fallback: str | None = None
    #: At most this many deliveries per address and period (``3/h``); more are skipped.
    per_recipient: str | None = None
    #: Seconds a delivery waits for a receipt before it is looked up at the provider.
    receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT

    @property
    def may_be_held(self) -> bool:
        """Whether deliveries may have to wait (paused, or the breaker open when last read)."""
        return self.paused or self.breaker_open_until is not None


def parse_rate_limit(value: str) -> float:
    """Messages per second for a limit such as ``1/s``, ``60/m`` or ``500/h``.

    Raises:
        ConfigurationError: the limit is not in that form.
    """
    match = RATE_LIMIT_PATTERN.match(value.strip())
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"rate limit {value!r} must be a number above 0 per s, m or h, e.g. 1/s, 60/m or 500/h"
        )
    per = {"s": 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) / per


def parse_per_recipient(value: str) -> tuple[int, float]:
    """How many deliveries one address may get, and in how many seconds (``3/h``).

    Raises:
        ConfigurationError: the throttle is not in that form.
    """
    try:
        return messages.parse_per_recipient(value)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def parse_receipt_timeout(value: str) -> float:
    """Seconds in a receipt timeout such as ``72h``, ``30m`` or ``2d``: 1 second to 7 days
    (providers keep a message's status far longer; a week is ample to wait for one).

    Raises:
        ConfigurationError: not a whole number with a unit of s, m, h or d, or out of range.
    """
    # Imported here: the notifications package stands on the engine (the digests' parser).
    from delivery.notifications.periods import check_period

    try:
        return float(check_period(value.strip(), shortest=1))
    except ValueError as exc:
        raise ConfigurationError(f"receipt timeout: {exc}") from None


def parse_retry_schedule(value: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """Seconds to wait before each retry, e.g. ``0,5,300,1800``.

    Raises:
        ConfigurationError: empty, or not 1-50 numbers of seconds from 0 to 30 days.
    """
    if isinstance(value, str) and not value.strip():
        raise ConfigurationError(
            "retry schedule is empty: give the seconds before each attempt, e.g. 0,5,300 "
            "(leave it out for the default)"
        )
    try:
        return parse_delays(value)  # finite, from 0 to 30 days, 1-50 of them
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


class ChannelStore:
    """Channels: a name bound to a dispatcher, its config (secrets sealed) and the
    channel's own settings (retry schedule, limits, fallback, pause and breaker state)."""

    def __init__(
        self, engine: Engine, registry: DispatcherRegistry, box: Callable[[], SecretBox]
    ) -> None:
        self._sealed = SealedConfigs(engine, ChannelRow, box)
        self._sessions = self._sealed.sessions
        self._registry = registry

    def validate(self, dispatcher: str, raw: dict[str, Any]) -> DispatcherConfig:
        """The dispatcher's config model applied to ``raw``.

        Raises:
            UnknownDispatcher: no such dispatcher.
            ConfigurationError: the config does not validate (one line per field).
        """
        return validate_config(self._registry.get(dispatcher).config_class, raw)

    def add(
        self,
        name: str,
        dispatcher: str,
        raw: dict[str, Any],
        *,
        retry_schedule: tuple[float, ...] | None = None,
        rate_limit: str | None = None,
        replace: bool = False,
        fallback: str | None = None,
        per_recipient: str | None = None,
        receipt_timeout: float | None = None,
    ) -> Channel:
        """Validate and store a channel.

        Raises:
            ConfigurationError: bad name, config, schedule or rate limit, or the channel
                exists and ``replace`` is false.
        """
        check_name(name, "channel")
        config = self.validate(dispatcher, raw)
        if fallback == name:
            raise ConfigurationError(f"channel {name!r} cannot be its own fallback")
        if rate_limit is not None:
            parse_rate_limit(rate_limit)
            rate_limit = rate_limit.strip()
        if per_recipient is not None:
            parse_per_recipient(per_recipient)
            per_recipient = per_recipient.strip()
        plain, token = self._sealed.seal(config)
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = session.get(ChannelRow, name)
            if row is not None and not replace:
                raise ConfigurationError(
                    f"channel {name!r} exists; remove it first or use --replace"
                )
            if fallback is not None and session.get(ChannelRow, fallback) is None:
                raise ConfigurationError(f"no channel named {fallback!r} to fall back to")
            if row is None:
                row = ChannelRow(name=name, created_at=now, paused=False, consecutive_failures=0)
                session.add(row)
            row.dispatcher = dispatcher
            row.config = plain
            row.secrets = token
            row.retry_schedule = list(retry_schedule) if retry_schedule else None
            row.rate_limit = rate_limit
            row.fallback = fallback
            row.per_recipient = per_recipient
            row.receipt_timeout = receipt_timeout
            row.updated_at = now
        return Channel(
            name,
            dispatcher,
            config,
            retry_schedule,
            rate_limit,
            False,
            now,
            fallback=fallback,
            per_recipient=per_recipient,
            receipt_timeout=receipt_timeout or DEFAULT_RECEIPT_TIMEOUT,
        )

    def get(self, name: str) -> Channel:
        """The channel with its secrets decrypted.

        Raises:
            UnknownChannel: no channel has that name.
            ConfigurationError: its stored config no longer validates, or cannot be decrypted.
        """
        row = self._sealed.get(name)
        if row is None:
            raise UnknownChannel(f"no channel named {name!r}")
        raw = self._sealed.unseal(row)
        return Channel(
            name=row.name,
            dispatcher=row.dispatcher,
            config=self.validate(row.dispatcher, raw),
            retry_schedule=tuple(row.retry_schedule) if row.retry_schedule else None,
            rate_limit=row.rate_limit,
            paused=row.paused,
            updated_at=row.updated_at,
            breaker_open_until=row.breaker_open_until,
            fallback=row.fallback,
            per_recipient=row.per_recipient,
            receipt_timeout=row.receipt_timeout or DEFAULT_RECEIPT_TIMEOUT,
        )

    def set_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume a channel; resuming also closes its breaker. False if unknown."""
        values: dict[str, Any] = {"paused": paused}
        if not paused:
            values.update(consecutive_failures=0, breaker_open_until=None)
        with self._sessions.begin() as session:
            return bool(
                session.execute(
                    update(ChannelRow).where(ChannelRow.name == name).values(**values)
                ).rowcount  # type: ignore[attr-defined]
            )

    def summaries(self) -> list[dict[str, Any]]:
        """Every channel as shown to a person: secret fields masked, nothing decrypted."""
        out = []
        for row in self._sealed.all():
            out.append(
                {
                    "name": row.name,
                    "dispatcher": row.dispatcher,
                    "config": self._sealed.masked(row),
                    "retry_schedule": row.retry_schedule,
                    "rate_limit": row.rate_limit,
                    "per_recipient": row.per_recipient,
                    "receipt_timeout": row.receipt_timeout or DEFAULT_RECEIPT_TIMEOUT,
                    "fallback": row.fallback,
                    "paused": row.paused,
                    "state": _state(row),
                    "consecutive_failures": row.consecutive_failures,
                    "breaker_open_until": row.breaker_open_until.isoformat()
                    if row.breaker_open_until
                    else None,
                    "updated_at": row.updated_at.isoformat(),
                }
            )
        return out

    def remove(self, name: str) -> bool:
        return self._sealed.remove(name)


def _state(row: ChannelRow) -> str:
    if row.paused:
        return "paused"
    if row.breaker_open_until is not None:
        return "breaker open"
    return "active"
