from importlib.metadata import EntryPoint

import pytest

from delivery.dispatchers.registry import GROUP, DispatcherRegistry
from delivery.dispatchers.webhook import WebhookDispatcher
from delivery.errors import DispatcherLoadError, UnknownDispatcher


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, GROUP)


def test_installed_registry_has_the_built_ins() -> None:
    # Catches typos in pyproject.toml's entry points.
    registry = DispatcherRegistry.from_installed()
    assert {"webhook", "console"} <= set(registry.names())
    assert registry.get("webhook") is WebhookDispatcher
    described = registry.describe("webhook")
    assert described["version"] and described["protocol"]["name"] == "webhook"
    assert described["address_types"] == ["url"]
    secret = next(f for f in described["config_fields"] if f["name"] == "secret")
    assert secret["secret"] is True and secret["required"] is True


def test_duplicate_names_fail_loudly() -> None:
    with pytest.raises(DispatcherLoadError, match="declared by both"):
        DispatcherRegistry([ep("webhook", "a:B"), ep("webhook", "c:D")])


def test_unknown_dispatcher_names_the_known_ones() -> None:
    registry = DispatcherRegistry([ep("webhook", "delivery.dispatchers.webhook:WebhookDispatcher")])
    with pytest.raises(UnknownDispatcher, match="'fax'; known: webhook"):
        registry.get("fax")


def test_a_broken_plugin_does_not_take_down_the_others() -> None:
    registry = DispatcherRegistry(
        [
            ep("webhook", "delivery.dispatchers.webhook:WebhookDispatcher"),
            ep("broken", "no_such_module_anywhere:Thing"),
            ep("notdispatcher", "delivery.errors:DeliveryError"),
            ep("misnamed", "delivery.dispatchers.console:ConsoleDispatcher"),
        ]
    )
    assert registry.get("webhook") is WebhookDispatcher
    with pytest.raises(DispatcherLoadError, match="does not load"):
        registry.get("broken")
    with pytest.raises(DispatcherLoadError, match="not a Dispatcher subclass"):
        registry.get("notdispatcher")
    with pytest.raises(DispatcherLoadError, match="has slug 'console'"):
        registry.get("misnamed")
