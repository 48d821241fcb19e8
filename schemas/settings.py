"""Settings read from the environment (prefix ``DELIVERY_``)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The embedded broker: kombu's filesystem transport, which needs no server and works
#: across processes on one machine. Its folders live under ``DELIVERY_HOME``.
EMBEDDED_BROKER_URL = "filesystem://localhost"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DELIVERY_", extra="ignore")

    #: Where the embedded defaults keep their files (broker folders, SQLite log, key file).
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
    #: How long a worker holds a claimed delivery before another may take it over.
    lease_seconds: float = Field(default=300.0, gt=0)
    #: Seconds the producer keeps trying to reach the broker before raising.
    publish_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a dispatcher waits for a provider (connect and read).
    http_timeout: float = Field(default=10.0, gt=0)
    #: Retries due sooner than this wait in the broker as ETA tasks; later ones are written
    #: to the log and re-enqueued by the sweep. Empty means half the visibility timeout,
    #: at most 5 minutes, so no ETA task outlives the broker's visibility timeout.
    broker_delay_limit: float | None = Field(default=None, ge=0)
    #: Seconds between sweeps of the log (due retries, expired leases).
    sweep_interval: float = Field(default=15.0, gt=0)
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

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def is_redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def delay_limit(self) -> float:
        if self.broker_delay_limit is not None:
            return self.broker_delay_limit
        return min(300.0, self.visibility_timeout / 2)

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'log.sqlite3'}"

    @property
    def key_file(self) -> Path:
        return self.home / "secret.key"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (tests call ``get_settings.cache_clear()``)."""
    return Settings()
