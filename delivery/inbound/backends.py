"""Inbound backends: a name bound to a backend kind and its validated config, stored as
channels are (secret fields encrypted with the channels' key, masked when listed)."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from delivery.clock import utcnow
from delivery.dispatchers.base import MASK
from delivery.engine.channels import split_secrets, validate_config
from delivery.engine.crypto import SecretBox
from delivery.errors import ConfigurationError, UnknownBackend
from delivery.inbound.base import BackendConfig, InboundBackend
from delivery.inbound.registry import BackendRegistry
from delivery.log.inbound import InboundBackendRow
from schemas import CHANNEL_NAME_PATTERN


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
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.registry = registry
        # A factory: the key is only needed when a backend actually has secrets.
        self._box = box

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
        if not re.match(CHANNEL_NAME_PATTERN, name):
            raise ConfigurationError(
                f"backend name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        config = self.validate(kind, raw)
        plain, secret = split_secrets(config)
        token = self._box().encrypt(secret) if secret else None
        now = utcnow()
        with self._sessions.begin() as session:
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
        with self._sessions() as session:
            row = session.get(InboundBackendRow, name)
        if row is None:
            raise UnknownBackend(f"no inbound backend named {name!r}")
        raw = dict(row.config)
        if row.secrets:
            raw.update(self._box().decrypt(row.secrets))
        return Backend(row.name, row.kind, self.validate(row.kind, raw), row.updated_at)

    def instance(self, backend: Backend) -> InboundBackend:
        """The kind's backend object for ``backend``."""
        return self.registry.get(backend.kind)(backend.config)

    def summaries(self) -> list[dict[str, Any]]:
        """Every backend as shown to a person: secret fields masked, nothing decrypted."""
        with self._sessions() as session:
            rows = session.scalars(select(InboundBackendRow).order_by(InboundBackendRow.name))
            out = []
            for row in rows:
                config: dict[str, Any] = dict(row.config)
                if row.secrets:
                    try:
                        config.update(dict.fromkeys(sorted(self._box().decrypt(row.secrets)), MASK))
                    except ConfigurationError:
                        config["secrets"] = "(cannot decrypt with this DELIVERY_SECRET_KEY)"
                out.append(
                    {
                        "name": row.name,
                        "kind": row.kind,
                        "path": f"/inbound/{row.name}",
                        "config": config,
                        "updated_at": row.updated_at.isoformat(),
                    }
                )
        return out

    def remove(self, name: str) -> bool:
        with self._sessions.begin() as session:
            result = session.execute(
                delete(InboundBackendRow).where(InboundBackendRow.name == name)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
