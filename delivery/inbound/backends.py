"""Inbound backends: a name bound to a backend kind and its validated config, kept in the
same sealed store as channels (``engine.sealed``: secrets encrypted, masked when listed)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from delivery.clock import utcnow
from delivery.engine.crypto import SecretBox
from delivery.engine.sealed import SealedConfigs, check_name, validate_config
from delivery.errors import ConfigurationError, UnknownBackend
from delivery.inbound.base import BackendConfig, InboundBackend
from delivery.inbound.registry import BackendRegistry
from delivery.log.inbound import InboundBackendRow


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    kind: str
    config: BackendConfig
    updated_at: datetime


class BackendStore:
    def __init__(
        self, engine: Engine, registry: BackendRegistry, box: Callable[[], SecretBox]
    ) -> None:
        self._sealed = SealedConfigs(engine, InboundBackendRow, box)
        self.registry = registry

    def validate(self, kind: str, raw: dict[str, Any]) -> BackendConfig:
        """The kind's config model applied to ``raw``.

        Raises:
            UnknownInboundKind: no such kind.
            ConfigurationError: the config does not validate (one line per field).
        """
        return validate_config(self.registry.get(kind).config_class, raw)

    def add(self, name: str, kind: str, raw: dict[str, Any], *, replace: bool = False) -> Backend:
        """Validate and store a backend.

        Raises:
            ConfigurationError: bad name or config, or the backend exists and ``replace``
                is false.
            UnknownInboundKind: no such kind.
        """
        check_name(name, "backend")
        config = self.validate(kind, raw)
        plain, token = self._sealed.seal(config)
        now = utcnow()
        with self._sealed.sessions.begin() as session:
            row = session.get(InboundBackendRow, name)
            if row is not None and not replace:
                raise ConfigurationError(
                    f"inbound backend {name!r} exists; remove it first or use --replace"
                )
            if row is None:
                row = InboundBackendRow(name=name, created_at=now)
                session.add(row)
            row.kind, row.config, row.secrets, row.updated_at = kind, plain, token, now
        return Backend(name, kind, config, now)

    def get(self, name: str) -> Backend:
        """The backend with its secrets decrypted.

        Raises:
            UnknownBackend: no backend has that name.
            ConfigurationError: its stored config no longer validates, or cannot be decrypted.
            RegistryError: its kind is no longer installed, or does not load.
        """
        row = self._sealed.get(name)
        if row is None:
            raise UnknownBackend(f"no inbound backend named {name!r}")
        raw = self._sealed.unseal(row)
        return Backend(row.name, row.kind, self.validate(row.kind, raw), row.updated_at)

    def instance(self, backend: Backend) -> InboundBackend:
        """The kind's backend object for ``backend``."""
        return self.registry.get(backend.kind)(backend.config)

    def summaries(self) -> list[dict[str, Any]]:
        """Every backend as shown to a person: secret fields masked, nothing decrypted."""
        return [
            {
                "name": row.name,
                "kind": row.kind,
                "path": f"/inbound/{row.name}",
                "config": self._sealed.masked(row),
                "updated_at": row.updated_at.isoformat(),
            }
            for row in self._sealed.all()
        ]

    def remove(self, name: str) -> bool:
        return self._sealed.remove(name)
