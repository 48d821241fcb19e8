"""Inbound backend kinds (``delivery.inbound``) and handlers (``delivery.handlers``), loaded
lazily from their entry points exactly as dispatchers are."""

from typing import Any

from delivery.errors import PluginLoadError, UnknownHandler, UnknownInboundKind
from delivery.inbound.base import InboundBackend
from delivery.inbound.handler import Handler
from delivery.plugins import EntryPointRegistry

KINDS_GROUP = "delivery.inbound"
HANDLERS_GROUP = "delivery.handlers"


class BackendRegistry(EntryPointRegistry[InboundBackend]):
    group = KINDS_GROUP
    plugin_base = InboundBackend
    unknown_error = UnknownInboundKind
    load_error = PluginLoadError

    def describe(self, name: str) -> dict[str, Any]:
        """What ``delivery inbound kinds`` shows for one kind."""
        cls = self.get(name)
        distribution, version = self.version(name)
        return {
            "kind": name,
            "verbose_name": cls.verbose_name,
            "version": version,
            "distribution": distribution,
            "config_fields": cls.config_class.describe_fields(),
        }


class HandlerRegistry(EntryPointRegistry[Handler]):
    group = HANDLERS_GROUP
    plugin_base = Handler
    unknown_error = UnknownHandler
    load_error = PluginLoadError
