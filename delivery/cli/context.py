"""What the commands share: the engine assembled from settings, checked to be migrated."""

from functools import lru_cache

from delivery.dispatchers import DispatcherRegistry
from delivery.engine.assembly import Assembly, assemble
from delivery.engine.channels import ChannelStore
from delivery.log import DeliveryLog
from delivery.log.migrate import is_current
from schemas import get_settings


@lru_cache(maxsize=1)
def registry() -> DispatcherRegistry:
    return DispatcherRegistry.from_installed()


def engine(*, must_exist: bool = True) -> Assembly:
    from delivery.cli import fail, safe_url

    settings = get_settings()
    assembly = assemble(settings, registry=registry())
    if must_exist and not is_current(assembly.log.engine):
        fail(
            f"the delivery log at {safe_url(settings.resolved_database_url)} is missing or out "
            "of date: run `delivery db upgrade` first"
        )
    return assembly


def delivery_log(*, must_exist: bool = True) -> DeliveryLog:
    return engine(must_exist=must_exist).log


def channel_store() -> ChannelStore:
    return engine().channels
