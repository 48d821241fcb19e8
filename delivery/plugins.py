"""Plugin classes by name, loaded lazily from one entry-point group.

Every kind of plugin (dispatchers, inbound backend kinds, inbound handlers) registers the
same way, ``slug = "module:Class"`` in an entry-point group, and is found by the same
registry: duplicates fail loudly (pluggy, dramatiq), and loading is lazy, so one broken
optional plugin does not take down the others. There is no metaclass auto-registration
and no directory scanning.
"""

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from delivery.errors import RegistryError

P = TypeVar("P")


class EntryPointRegistry(Generic[P]):
    """Subclasses name the group, the base class plugins must subclass and their errors."""

    #: The entry-point group, e.g. ``delivery.dispatchers``.
    group: ClassVar[str]
    #: The class every plugin in the group subclasses.
    plugin_base: ClassVar[type[Any]]
    #: Raised for a name nothing registers.
    unknown_error: ClassVar[type[RegistryError]] = RegistryError
    #: Raised for duplicates and for a plugin that does not load or is not a plugin.
    load_error: ClassVar[type[RegistryError]] = RegistryError

    def __init__(self, eps: Iterable[EntryPoint]) -> None:
        self._eps: dict[str, EntryPoint] = {}
        self._loaded: dict[str, type[P]] = {}
        for ep in eps:
            known = self._eps.get(ep.name)
            if known is not None and known.value != ep.value:
                raise self.load_error(f"{ep.name!r} declared by both {known.value} and {ep.value}")
            self._eps[ep.name] = ep

    @classmethod
    def from_installed(cls) -> Self:
        return cls(entry_points(group=cls.group))

    def names(self) -> list[str]:
        return sorted(self._eps)

    def entry_point(self, name: str) -> EntryPoint:
        """Raises: the registry's ``unknown_error`` when nothing is registered as ``name``."""
        try:
            return self._eps[name]
        except KeyError:
            raise self.unknown_error(
                f"{name!r}; known: {', '.join(self.names()) or 'none'}"
            ) from None

    def get(self, name: str) -> type[P]:
        """The class registered as ``name``.

        Raises:
            RegistryError: the registry's ``unknown_error`` when nothing is registered under
                that name; its ``load_error`` when the entry point does not import, is not a
                subclass of ``plugin_base`` or has another slug.
        """
        if name in self._loaded:
            return self._loaded[name]
        ep = self.entry_point(name)
        try:
            obj = ep.load()
        except Exception as exc:
            raise self.load_error(f"{ep.value} does not load: {exc}") from exc
        base = self.plugin_base
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise self.load_error(f"{ep.value} is not a {base.__name__} subclass")
        slug = getattr(obj, "slug", None)
        if slug != name:
            raise self.load_error(f"{ep.value} has slug {slug!r} but is registered as {name!r}")
        loaded = cast(type[P], obj)
        self._loaded[name] = loaded
        return loaded

    def version(self, name: str) -> tuple[str | None, str | None]:
        """The distribution that registers ``name`` and its version, when known."""
        dist = self.entry_point(name).dist
        return (dist.name, dist.version) if dist is not None else (None, None)
