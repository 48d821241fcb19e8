"""A dispatcher instance per channel, rebuilt when the channel changes."""

import threading
import time

from pydantic import SecretStr

from delivery.dispatchers import (
    Dispatcher,
    DispatcherConfig,
    DispatcherEnvironment,
    DispatcherRegistry,
)
from delivery.engine.channels import Channel, ChannelStore
from delivery.errors import UnknownChannel
from delivery.redaction import redactor, secret_parts

#: How long a worker trusts its cached copy of a channel before checking for changes.
CHANNEL_TTL = 5.0


def secret_values(config: DispatcherConfig) -> list[str]:
    """The decrypted values of a config's secret fields, and the parts libraries log."""
    values: list[str] = []
    for name in config.secret_fields():
        value = getattr(config, name, None)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        values += secret_parts(value)
    return values


class DispatcherCache:
    """Dispatcher instances per channel, rebuilt when the channel changes.

    Instances live as long as their channel is unchanged, so the per-thread clients they
    hold (HTTP sessions, SMTP connections) are reused across deliveries.
    """

    def __init__(
        self,
        channels: ChannelStore,
        registry: DispatcherRegistry,
        environment: DispatcherEnvironment | None = None,
        ttl: float = CHANNEL_TTL,
    ) -> None:
        self.channels = channels
        self.registry = registry
        self.environment = environment or DispatcherEnvironment()
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Channel, Dispatcher]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[Channel, Dispatcher]:
        """Raises: UnknownChannel, RegistryError, ConfigurationError."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1], entry[2]
        try:
            channel = self.channels.get(name)
        except UnknownChannel:
            self._drop(name)
            raise
        if entry is not None and entry[1].updated_at == channel.updated_at:
            dispatcher = entry[2]
        else:
            # Before the dispatcher exists: its SDK may log the secret while it builds.
            redactor.register(secret_values(channel.config))
            dispatcher = self.registry.get(channel.dispatcher)(
                channel.config, environment=self.environment
            )
            if entry is not None:
                entry[2].close()
        with self._lock:
            self._entries[name] = (now, channel, dispatcher)
        return channel, dispatcher

    def _drop(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is not None:
            entry[2].close()

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for _, _, dispatcher in entries:
            dispatcher.close()
