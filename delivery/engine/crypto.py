"""Channel secrets encrypted at rest with Fernet, keyed by ``DELIVERY_SECRET_KEY``."""

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from delivery.errors import ConfigurationError, SecretKeyMissing
from schemas import Settings


def generate_key() -> str:
    return Fernet.generate_key().decode()


def load_secret_key(settings: Settings) -> str | None:
    """The key from ``DELIVERY_SECRET_KEY``, else from the key file under ``DELIVERY_HOME``."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    if settings.key_file.is_file():
        return settings.key_file.read_text().strip() or None
    return None


class SecretBox:
    """Encrypts a dict of secrets. Several comma-separated keys allow rotation: the first
    encrypts, any decrypts."""

    def __init__(self, keys: str) -> None:
        try:
            self._fernet = MultiFernet([Fernet(k.strip()) for k in keys.split(",") if k.strip()])
        except ValueError:
            # Never echo the key itself.
            raise ConfigurationError(
                "DELIVERY_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes); "
                "generate one with `delivery keygen`"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> "SecretBox":
        """Raises: SecretKeyMissing when no key is configured."""
        key = load_secret_key(settings)
        if not key:
            raise SecretKeyMissing(
                "this channel has secret fields and no key is set to encrypt them: set "
                "DELIVERY_SECRET_KEY (generate one with `delivery keygen`)"
            )
        return cls(key)

    def encrypt(self, secrets: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(secrets).encode()).decode()

    def decrypt(self, token: str) -> dict[str, Any]:
        try:
            value = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigurationError(
                "cannot decrypt channel secrets: DELIVERY_SECRET_KEY is not the key "
                "they were saved with"
            ) from None
        if not isinstance(value, dict):
            raise ConfigurationError("channel secrets are not a JSON object")
        return value
