"""The one place that assembles the engine from settings: the worker, the CLI, the API, the
bench and the tests all call ``assemble``."""

from dataclasses import dataclass, field

from delivery.dispatchers import DispatcherEnvironment, DispatcherRegistry
from delivery.engine.channels import ChannelStore
from delivery.engine.crypto import SecretBox
from delivery.engine.gates import Gate
from delivery.engine.instances import CHANNEL_TTL, DispatcherCache
from delivery.engine.ratelimit import DatabaseRateLimiter, RateLimiter, RedisRateLimiter
from delivery.engine.recipient_gates import PreferencesGate, QuietHoursGate, ThrottleGate
from delivery.engine.service import DeliveryService
from delivery.engine.throttle import RecipientThrottle
from delivery.log import DeliveryLog
from delivery.recipients import Preferences
from schemas import Settings


@dataclass
class Assembly:
    """Everything a process needs to deliver, read and administer, built once."""

    settings: Settings
    log: DeliveryLog
    registry: DispatcherRegistry
    channels: ChannelStore
    dispatchers: DispatcherCache
    limiter: RateLimiter
    service: DeliveryService = field(init=False)

    def __post_init__(self) -> None:
        self.service = DeliveryService(
            self.settings,
            self.log,
            self.dispatchers,
            self.limiter,
            recipient_gates=recipient_gates(self.settings, self.log),
        )

    def close(self) -> None:
        """Close the dispatchers' clients (HTTP pools, SMTP connections) and stop renewing
        leases."""
        self.service.close()
        self.dispatchers.close()


def environment_of(settings: Settings) -> DispatcherEnvironment:
    """What dispatchers may know of the deployment."""
    return DispatcherEnvironment(
        allow_private_networks=settings.allow_private_networks,
        public_url=settings.public_url,
    )


def recipient_gates(settings: Settings, log: DeliveryLog) -> list[Gate]:
    """The recipient's say, in order: preferences (skip), quiet hours (wait), throttles
    (skip; last, so a delivery that waits is not counted)."""
    preferences = Preferences(log.engine)
    critical = settings.critical_categories
    return [
        PreferencesGate(preferences, critical),
        QuietHoursGate(preferences, critical),
        ThrottleGate(RecipientThrottle(log.engine), critical),
    ]


def rate_limiter(settings: Settings, log: DeliveryLog) -> RateLimiter:
    # Shared by every process of the site: through Redis when it is the broker (its own
    # clock, a round trip), otherwise through the delivery log.
    if settings.is_redis_broker:
        return RedisRateLimiter(settings.broker_url)
    return DatabaseRateLimiter(log.engine)


def assemble(
    settings: Settings,
    *,
    registry: DispatcherRegistry | None = None,
    channel_ttl: float = CHANNEL_TTL,
) -> Assembly:
    """The engine for ``settings``. Nothing connects until it is used."""
    log = DeliveryLog.from_settings(settings)
    registry = registry or DispatcherRegistry.from_installed()
    channels = ChannelStore(log.engine, registry, lambda: SecretBox.from_settings(settings))
    dispatchers = DispatcherCache(channels, registry, environment_of(settings), ttl=channel_ttl)
    return Assembly(settings, log, registry, channels, dispatchers, rate_limiter(settings, log))
