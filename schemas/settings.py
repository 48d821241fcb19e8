"""Settings read from the environment (prefix ``DELIVERY_``)."""

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.messages import CATEGORY_PATTERN

#: The embedded broker (``delivery.transport.embedded``): a SQLite file of its own,
#: ``DELIVERY_HOME/broker.sqlite3``, which needs no server and works across processes on one
#: machine. ``filesystem://…`` (the old default, kombu's filesystem transport) means it too.
EMBEDDED_BROKER_URL = "embedded://"
EMBEDDED_BROKER_SCHEMES = ("embedded://", "filesystem://")


#: A retry schedule has at most this many delays, each at most this long (30 days).
MAX_SCHEDULE = 50
MAX_RETRY_DELAY = 30 * 24 * 3600.0
#: The longest retention there is a point in (a hundred years): more is a typo.
MAX_RETENTION_DAYS = 36_500.0


def parse_delays(value: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """A retry schedule's delays, e.g. ``0,5,300,1800``: finite, non-negative, bounded.

    Raises:
        ValueError: what is wrong with it, in words a person can act on.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    blank = [n for n, item in enumerate(items, 1) if not str(item).strip()]
    if blank and len(items) > 1:
        # ``0,,300`` is a slip (a delay left out), not ``0,300``: say so, drop nothing.
        raise ValueError(
            f"retry schedule {str(value)[:80]!r} has a blank delay (entry {blank[0]}); "
            "give seconds separated by single commas, e.g. 0,5,300"
        )
    try:
        delays = tuple(float(item) for item in items if str(item).strip())
    except (TypeError, ValueError):
        raise ValueError(
            f"retry schedule {value!r} must be seconds separated by commas, e.g. 0,5,300"
        ) from None
    if not 1 <= len(delays) <= MAX_SCHEDULE:
        raise ValueError(f"retry schedule must have 1-{MAX_SCHEDULE} delays")
    if not all(math.isfinite(d) and 0 <= d <= MAX_RETRY_DELAY for d in delays):
        raise ValueError(
            f"retry schedule delays must be numbers of seconds from 0 to {MAX_RETRY_DELAY:.0f} "
            "(30 days)"
        )
    return delays


def parse_categories(value: Any) -> frozenset[str]:
    """Categories separated by commas (``security,billing``), or an iterable of them.

    Raises:
        ValueError: one of them is not a category name.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names = frozenset(str(item).strip() for item in items if str(item).strip())
    bad = sorted(n for n in names if not re.fullmatch(CATEGORY_PATTERN, n))
    if bad:
        raise ValueError(
            f"{', '.join(repr(b[:40]) for b in bad)}: categories are short lower-case names "
            "separated by commas, e.g. security,billing"
        )
    return names


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DELIVERY_", extra="ignore")

    #: Where the embedded defaults keep their files (broker file, SQLite log, key file).
    home: Path = Path(".delivery")
    broker_url: str = EMBEDDED_BROKER_URL
    #: Empty means a SQLite file under ``home``.
    database_url: str = ""
    secret_key: SecretStr | None = None
    allow_private_networks: bool = False
    #: Where providers reach ``delivery serve`` (status callbacks, signature checks behind
    #: a proxy), e.g. ``https://delivery.example.com``. Empty: nowhere.
    public_url: str | None = None
    #: Seconds before a Redis broker hands an unacknowledged task to another worker.
    visibility_timeout: float = Field(default=3600.0, gt=0)
    #: Delay before each attempt, the first included, for channels without their own:
    #: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. ``exponential`` uses backoff
    #: with full jitter instead (``max_attempts``, ``backoff_base``, ``backoff_cap``).
    retry_schedule: str = "0,5,300,1800,7200,18000,36000,36000"
    #: Attempts before a delivery is marked failed under exponential backoff.
    max_attempts: int = Field(default=8, ge=1, le=100)
    #: Exponential backoff: the n-th retry waits up to ``backoff_base * 2**n``, capped.
    backoff_base: float = Field(default=5.0, ge=0)
    backoff_cap: float = Field(default=3600.0, ge=0)
    #: How long a claimed delivery is held without word from its worker before another may
    #: take it over. A live worker renews the leases it holds every third of this, however
    #: long its batch or its provider takes, so a short lease costs nothing but a small
    #: UPDATE now and then, and a worker that died is replaced within it.
    lease_seconds: float = Field(default=15.0, ge=3, le=24 * 3600, allow_inf_nan=False)
    #: Seconds the producer keeps trying to reach the broker before raising.
    publish_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a dispatcher waits for a provider (connect and read).
    http_timeout: float = Field(default=10.0, gt=0)
    #: Requests an API key may make a minute on ``delivery serve`` (0: no limit); beyond
    #: it, 429 with ``Retry-After``. Shared by every API process when the broker is Redis.
    api_rate_limit: int = Field(default=3000, ge=0)
    #: Retries due sooner than this wait in the broker as ETA tasks; later ones are written
    #: to the log and re-enqueued by the sweep. Empty means half the visibility timeout,
    #: at most 5 minutes, so no ETA task outlives the broker's visibility timeout.
    broker_delay_limit: float | None = Field(default=None, ge=0)
    #: Seconds between sweeps of the log (due retries, expired leases): one indexed query
    #: per site, and with the lease, how soon a dead worker's deliveries are taken over.
    sweep_interval: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    #: Failed attempts in a row that open a channel's circuit breaker (0: never).
    breaker_threshold: int = Field(default=10, ge=0)
    #: While a breaker is open, one probe delivery is let through this often.
    breaker_probe_interval: float = Field(default=60.0, gt=0)
    #: Celery pool: threads suit network-bound delivery; prefork isolates crashes.
    worker_pool: Literal["threads", "prefork", "solo", "gevent", "eventlet"] = "threads"
    #: Celery task events, for Flower and `celery events`. They cost broker traffic per
    #: task; turn them off where nobody watches.
    task_events: bool = True
    worker_concurrency: int = Field(default=16, ge=1, le=1000)
    queue: str = "delivery"
    #: Deliveries per task message from ``send_many`` (1: one task each). A batch is
    #: claimed and recorded in one transaction each and costs the broker one message;
    #: small sends are still spread over ``worker_concurrency`` tasks.
    batch_size: int = Field(default=25, ge=1, le=500)
    #: On a threads pool, single deliveries (``delivery.send``) skip Celery's per-task
    #: work, and those waiting while every worker thread is busy are sent a few at a time
    #: (up to ``batch_size``): the same guarantees and task events, less worker CPU.
    coalesce: bool = True
    #: Task arguments in full in Flower and task events. Off, they show the channel, the
    #: delivery id and a masked address, never the message text.
    task_args_in_events: bool = False
    #: Categories never skipped by preferences or throttles, and whose messages carry no
    #: unsubscribe link (comma-separated in the environment; empty: none).
    critical_categories: Annotated[frozenset[str], NoDecode] = frozenset({"security"})
    #: Seconds between the workers' looks for digest windows that have closed.
    digest_interval: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    #: Days a delivery in a final status is kept (with its attempts and receipts) before
    #: the workers' daily purge removes it; its counts stay. 0: keep every delivery.
    retention_days: float = Field(default=30.0, ge=0, le=MAX_RETENTION_DAYS, allow_inf_nan=False)
    #: Application databases whose transactional outbox every worker relays
    #: (``delivery.outbox``): SQLAlchemy URLs separated by commas. Empty: none.
    outbox_urls: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("critical_categories", mode="before")
    @classmethod
    def _categories(cls, value: Any) -> frozenset[str]:
        return parse_categories(value)

    @field_validator("outbox_urls", mode="before")
    @classmethod
    def _outbox_urls(cls, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(item).strip() for item in items if str(item).strip())

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value.strip().lower() != "exponential":
            parse_delays(value)
        return value

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith(EMBEDDED_BROKER_SCHEMES)

    @property
    def is_redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def is_amqp_broker(self) -> bool:
        """RabbitMQ (kombu's py-amqp transport)."""
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    @property
    def delay_limit(self) -> float:
        if self.broker_delay_limit is not None:
            return self.broker_delay_limit
        return min(300.0, self.visibility_timeout / 2)

    @property
    def broker_folder(self) -> Path:
        """The old embedded broker's folders (kombu's filesystem transport)."""
        return self.home / "broker"

    @property
    def broker_file(self) -> Path:
        """The embedded broker's SQLite file (not the delivery log's)."""
        return self.home / "broker.sqlite3"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'log.sqlite3'}"

    @property
    def key_file(self) -> Path:
        return self.home / "secret.key"


def describe(exc: ValidationError) -> str:
    """A settings error in one line per variable, named as it is set in the environment."""
    return "; ".join(
        f"DELIVERY_{'_'.join(str(p) for p in error['loc']).upper()}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (tests call ``get_settings.cache_clear()``)."""
    return Settings()
