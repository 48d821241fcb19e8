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
#: Seconds before a replaced instance is closed: longer than any send with it can last
#: (a provider timeout, a batch's budget).
RETIRE_AFTER = 300.0


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
    hold (HTTP sessions, SMTP connections) are reused across deliveries. When a channel
    changes, one thread builds its new instance while the others wait for it (a lock per
    channel), and the instance it replaces is closed only ``retire_after`` seconds later:
    a thread may still be sending with it.
    """

    def __init__(
        self,
        channels: ChannelStore,
        registry: DispatcherRegistry,
        environment: DispatcherEnvironment | None = None,
        ttl: float = CHANNEL_TTL,
        retire_after: float = RETIRE_AFTER,
    ) -> None:
        self.channels = channels
        self.registry = registry
        self.environment = environment or DispatcherEnvironment()
        self.ttl = ttl
        self.retire_after = retire_after
        self._entries: dict[str, tuple[float, Channel, Dispatcher]] = {}
        #: Replaced instances and when they were replaced, closed once no send can use them.
        self._retired: list[tuple[float, Dispatcher]] = []
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def get(self, name: str) -> tuple[Channel, Dispatcher]:
        """Raises: UnknownChannel, RegistryError, ConfigurationError."""
        entry = self._fresh(name)
        if entry is not None:
            return entry[1], entry[2]
        with self._lock:
            building = self._building.setdefault(name, threading.Lock())
        with building:
            # Another thread may have checked (and rebuilt) while this one waited.
            entry = self._fresh(name)
            if entry is not None:
                return entry[1], entry[2]
            return self._refresh(name)

    def _fresh(self, name: str) -> tuple[float, Channel, Dispatcher] | None:
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and time.monotonic() - entry[0] < self.ttl:
            return entry
        return None

    def _refresh(self, name: str) -> tuple[Channel, Dispatcher]:
        """Check the channel in the store and rebuild its instance if it changed (one
        thread per channel at a time)."""
        with self._lock:
            entry = self._entries.get(name)
        try:
            channel = self.channels.get(name)
        except UnknownChannel:
            self._retire(name)
            raise
        if entry is not None and entry[1].updated_at == channel.updated_at:
            dispatcher = entry[2]
        else:
            # Before the dispatcher exists: its SDK may log the secret while it builds.
            redactor.register(secret_values(channel.config))
            dispatcher = self.registry.get(channel.dispatcher)(
                channel.config, environment=self.environment
            )
        now = time.monotonic()
        with self._lock:
            self._entries[name] = (now, channel, dispatcher)
            if entry is not None and entry[2] is not dispatcher:
                self._retired.append((now, entry[2]))
        self._close_retired()
        return channel, dispatcher

    def _retire(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None:
                self._retired.append((time.monotonic(), entry[2]))
        self._close_retired()

    def _close_retired(self) -> None:
        cutoff = time.monotonic() - self.retire_after
        with self._lock:
            spent = [d for at, d in self._retired if at <= cutoff]
            self._retired = [(at, d) for at, d in self._retired if at > cutoff]
        for dispatcher in spent:
            dispatcher.close()

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
            retired, self._retired = [d for _, d in self._retired], []
        for dispatcher in [d for _, _, d in entries] + retired:
            dispatcher.close()
