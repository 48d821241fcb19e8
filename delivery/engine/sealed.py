"""Named plugin configs kept in the log with their secret fields sealed: the one store that
channels and inbound backends share.

A config (a dispatcher's or an inbound backend's pydantic model) is stored as its plain
fields in JSON and its secret fields as one Fernet token (``SecretBox``); reading it back
decrypts the token and validates the whole config again. Listing never decrypts more than
the secrets' names, which it shows masked.
"""

import re
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from delivery.dispatchers.base import MASK, DispatcherConfig
from delivery.engine.crypto import SecretBox
from delivery.errors import ConfigurationError
from schemas import CHANNEL_NAME_PATTERN
from schemas.validation import explain

M = TypeVar("M", bound=BaseModel)

#: Shown for secrets that the current DELIVERY_SECRET_KEY cannot open.
UNREADABLE = "(cannot decrypt with this DELIVERY_SECRET_KEY)"


class SealedRow(Protocol):
    """What a table of sealed configs has: a name, the plain fields, the sealed ones."""

    name: str
    config: dict[str, Any]
    secrets: str | None


R = TypeVar("R", bound=SealedRow)


def validate_config(config_class: type[M], raw: dict[str, Any]) -> M:
    """A plugin's config model applied to ``raw`` (channels, inbound backends).

    Raises:
        ConfigurationError: it does not validate (one line per field, naming it).
    """
    try:
        return config_class.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError("\n".join(explain(exc, model=config_class))) from None


def split_secrets(config: DispatcherConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config as JSON, split into plain fields and secret ones."""
    secret_names = config.secret_fields()
    plain = config.model_dump(mode="json", exclude=set(secret_names))
    secret: dict[str, Any] = {}
    for name in secret_names:
        value = getattr(config, name)
        if value is not None:
            secret[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return plain, secret


def check_name(name: str, noun: str) -> None:
    """Raises: ConfigurationError: ``name`` is not a channel-like name."""
    if not re.match(CHANNEL_NAME_PATTERN, name):
        raise ConfigurationError(
            f"{noun} name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )


class SealedConfigs(Generic[R]):
    """The rows of one table of sealed configs (``ChannelRow``, ``InboundBackendRow``)."""

    def __init__(self, engine: Engine, row_type: type[R], box: Callable[[], SecretBox]) -> None:
        self.row_type = row_type
        #: The mapped ``name`` column, for queries (the protocol types the instance's).
        self._name: Any = cast(Any, row_type).name
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        # A factory: the key is only needed when a config actually has secrets.
        self._box = box

    def seal(self, config: DispatcherConfig) -> tuple[dict[str, Any], str | None]:
        """The plain fields, and the secret ones as a token (None when there are none)."""
        plain, secret = split_secrets(config)
        return plain, self._box().encrypt(secret) if secret else None

    def unseal(self, row: R) -> dict[str, Any]:
        """The whole raw config of ``row``, secrets decrypted, to validate again.

        Raises:
            ConfigurationError: the secrets cannot be decrypted with this key.
        """
        raw = dict(row.config)
        if row.secrets:
            raw.update(self._box().decrypt(row.secrets))
        return raw

    def masked(self, row: R) -> dict[str, Any]:
        """The config as shown to a person: the secrets that are set, masked."""
        config: dict[str, Any] = dict(row.config)
        if row.secrets:
            # The names are not secret, the values are.
            try:
                config.update(dict.fromkeys(sorted(self._box().decrypt(row.secrets)), MASK))
            except ConfigurationError:
                config["secrets"] = UNREADABLE
        return config

    def get(self, name: str) -> R | None:
        with self.sessions() as session:
            return session.get(self.row_type, name)

    def all(self) -> list[R]:
        with self.sessions() as session:
            return list(session.scalars(select(self.row_type).order_by(self._name)))

    def remove(self, name: str) -> bool:
        with self.sessions.begin() as session:
            result = session.execute(delete(self.row_type).where(self._name == name))
            return bool(result.rowcount)  # type: ignore[attr-defined]
