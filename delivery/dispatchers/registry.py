"""Dispatcher classes by name, loaded lazily from the ``delivery.dispatchers`` entry points."""

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Self

from delivery.dispatchers.base import Dispatcher
from delivery.errors import DispatcherLoadError, UnknownDispatcher

GROUP = "delivery.dispatchers"


class DispatcherRegistry:
    """Loading is lazy, so one broken optional plugin does not take down the others."""

    def __init__(self, eps: Iterable[EntryPoint]) -> None:
        self._eps: dict[str, EntryPoint] = {}
        self._loaded: dict[str, type[Dispatcher]] = {}
        for ep in eps:
            known = self._eps.get(ep.name)
            if known is not None and known.value != ep.value:
                raise DispatcherLoadError(
                    f"{ep.name!r} declared by both {known.value} and {ep.value}"
                )
            self._eps[ep.name] = ep

    @classmethod
    def from_installed(cls) -> Self:
        return cls(entry_points(group=GROUP))

    def names(self) -> list[str]:
        return sorted(self._eps)

    def get(self, name: str) -> type[Dispatcher]:
        """The dispatcher class registered as ``name``.

        Raises:
            UnknownDispatcher: nothing is registered under that name.
            DispatcherLoadError: the entry point does not import, or is not a Dispatcher.
        """
        if name in self._loaded:
            return self._loaded[name]
        try:
            ep = self._eps[name]
        except KeyError:
            raise UnknownDispatcher(
                f"{name!r}; known: {', '.join(self.names()) or 'none'}"
            ) from None
        try:
            obj = ep.load()
        except Exception as exc:
            raise DispatcherLoadError(f"{ep.value} does not load: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Dispatcher)):
            raise DispatcherLoadError(f"{ep.value} is not a Dispatcher subclass")
        if obj.slug != name:
            raise DispatcherLoadError(
                f"{ep.value} has slug {obj.slug!r} but is registered as {name!r}"
            )
        self._loaded[name] = obj
        return obj

    def describe(self, name: str) -> dict[str, Any]:
        """What ``delivery dispatchers`` shows for one entry point."""
        cls = self.get(name)
        ep = self._eps[name]
        return {
            "slug": name,
            "verbose_name": cls.verbose_name,
            "version": ep.dist.version if ep.dist is not None else None,
            "distribution": ep.dist.name if ep.dist is not None else None,
            "protocol": cls.protocol.describe(),
            "address_types": sorted(t.value for t in cls.address_types),
            "config_fields": cls.config_class.describe_fields(),
        }
