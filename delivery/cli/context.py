"""What the commands share: settings, the log, the registry, the channel store."""

from functools import lru_cache

from delivery.dispatchers.registry import DispatcherRegistry
from delivery.engine.channels import ChannelStore
from delivery.engine.crypto import SecretBox
from delivery.log import DeliveryLog
from delivery.log.migrate import is_current
from schemas import get_settings


@lru_cache(maxsize=1)
def registry() -> DispatcherRegistry:
    return DispatcherRegistry.from_installed()


def delivery_log(*, must_exist: bool = True) -> DeliveryLog:
    from delivery.cli import fail

    settings = get_settings()
    log = DeliveryLog.from_settings(settings)
    if must_exist and not is_current(log.engine):
        fail("the delivery log is missing or out of date: run `delivery db upgrade` first")
    return log


def channel_store() -> ChannelStore:
    settings = get_settings()
    return ChannelStore(
        delivery_log().engine, registry(), lambda: SecretBox.from_settings(settings)
    )
