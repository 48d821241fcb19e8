"""Dispatcher classes by name, loaded lazily from the ``delivery.dispatchers`` entry points."""

from typing import Any

from delivery.dispatchers.base import Dispatcher
from delivery.errors import DispatcherLoadError, UnknownDispatcher
from delivery.plugins import EntryPointRegistry

GROUP = "delivery.dispatchers"


class DispatcherRegistry(EntryPointRegistry[Dispatcher]):
    """Loading is lazy, so one broken optional plugin does not take down the others."""

    group = GROUP
    plugin_base = Dispatcher
    unknown_error = UnknownDispatcher
    load_error = DispatcherLoadError

    def describe(self, name: str) -> dict[str, Any]:
        """What ``delivery dispatchers`` shows for one entry point."""
        cls = self.get(name)
        distribution, version = self.version(name)
        return {
            "slug": name,
            "verbose_name": cls.verbose_name,
            "version": version,
            "distribution": distribution,
            "protocol": cls.protocol.describe(),
            "address_types": sorted(t.value for t in cls.address_types),
            "config_fields": cls.config_class.describe_fields(),
        }
