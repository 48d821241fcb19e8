"""API keys for ``delivery serve``: made once, shown once, kept only as a hash.

A key reads ``dlv_<key id>_<secret>``. The key id is public (``delivery keys list`` shows
it) and finds the row; the whole key's SHA-256 is compared in constant time
(``hmac.compare_digest``). The secret has 256 bits of entropy, so a fast hash is enough:
there is nothing to guess a password-style slow hash would protect. Keys never appear in
logs, responses or exceptions.
"""

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from delivery.clock import utcnow
from delivery.errors import ConfigurationError
from delivery.log.tables import ApiKeyRow

#: Every key starts so, which lets secret scanners recognise one that leaked.
PREFIX = "dlv"
#: Key names are identifiers, like channel names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_PATTERN = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_[A-Za-z0-9_-]{{43}}$")
#: Seconds a process trusts its copy of the key table: a revoked key stops working
#: everywhere within this, without a database query per request.
CACHE_SECONDS = 2.0


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: the key's name, and what kind of key it is."""

    name: str
    #: Sees and acts on every delivery, not only its own.
    admin: bool = False
    #: Its deliveries go the whole way, but no provider is called.
    test: bool = False


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key_id: str
    created_at: datetime
    revoked_at: datetime | None
    admin: bool = False
    test: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "active": self.active,
            "admin": self.admin,
            "test": self.test,
        }


class KeyStore:
    """The ``api_keys`` table."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add(self, name: str, *, admin: bool = False, test: bool = False) -> tuple[ApiKey, str]:
        """Make a key called ``name``; returns it with the key itself, which is not kept.
        An ``admin`` key sees every delivery; a ``test`` key's deliveries call no provider.

        Raises:
            ConfigurationError: the name is not an identifier, or a key has it already.
        """
        if not NAME_PATTERN.match(name):
            raise ConfigurationError(
                f"key name {name[:80]!r} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        key_id, key = _new_key()
        row = ApiKeyRow(
            name=name,
            key_id=key_id,
            key_hash=key_hash(key),
            created_at=utcnow(),
            revoked_at=None,
            admin=admin,
            test=test,
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise ConfigurationError(
                f"an API key named {name!r} exists already (names stay taken after "
                "`delivery keys revoke`, so the log of who used which key stays clear)"
            ) from None
        return _record(row), key

    def list(self) -> list[ApiKey]:
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [_record(row) for row in rows]

    def revoke(self, name: str) -> bool:
        """Revoke the key called ``name``. False if there is none, or it was revoked."""
        with self._sessions.begin() as session:
            moved = session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        return bool(moved)

    def active(self) -> dict[str, tuple[Caller, str]]:
        """Key id -> (who it is, hash) of every key not revoked."""
        query = select(
            ApiKeyRow.key_id, ApiKeyRow.name, ApiKeyRow.key_hash, ApiKeyRow.admin, ApiKeyRow.test
        ).where(ApiKeyRow.revoked_at.is_(None))
        with self._sessions() as session:
            return {
                row.key_id: (Caller(row.name, bool(row.admin), bool(row.test)), row.key_hash)
                for row in session.execute(query)
            }


def _record(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.name, row.key_id, row.created_at, row.revoked_at, bool(row.admin), bool(row.test)
    )


class KeyVerifier:
    """Checks presented keys against the table, which it re-reads every ``cache_seconds``.

    Raises ``SQLAlchemyError`` when the table must be read and the log is unreachable: a
    key that cannot be checked is neither accepted nor called wrong (the API answers 503).
    """

    def __init__(self, store: KeyStore, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[Caller, str]] = {}
        self._read_at = -float("inf")

    @property
    def fresh(self) -> bool:
        """Whether ``verify`` can answer without reading the table."""
        return time.monotonic() - self._read_at < self.cache_seconds

    def _current(self) -> dict[str, tuple[Caller, str]]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._keys = self.store.active()
                self._read_at = time.monotonic()
            return self._keys

    def verify(self, presented: str) -> Caller | None:
        """Who the key ``presented`` belongs to, or None if it is no active key."""
        match = _KEY_PATTERN.match(presented)
        keys = self._current()
        found = keys.get(match.group(1)) if match else None
        # Compare even when nothing was found, so a wrong key takes as long as a right one.
        expected = found[1] if found else "0" * 64
        if hmac.compare_digest(key_hash(presented), expected) and found is not None:
            return found[0]
        return None
