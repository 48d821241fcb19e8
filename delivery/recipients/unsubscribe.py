"""One-click unsubscribe links (RFC 8058): ``{DELIVERY_PUBLIC_URL}/unsubscribe/TOKEN``.

The token names who and what (address, channel, category) and carries an HMAC-SHA256 of
them, so a link cannot be guessed, nor altered to unsubscribe someone else; nothing is
stored per link. The MAC key is derived from ``DELIVERY_SECRET_KEY`` for this purpose only,
so a link never reveals anything about the key that encrypts channel secrets. Every key of a
rotation (``new,old``) is accepted, the first signs. The token is signed, not encrypted:
whoever holds the link can read the address in it, as they can read the mail it came in.
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from delivery.recipients.preferences import (
    Preferences,
    RecipientPreferences,
    check_category,
    check_channel,
    check_key,
)
from schemas import Settings

logger = logging.getLogger(__name__)

#: What the subkey is for; a new purpose (or format) gets a new label, never this one.
PURPOSE = b"delivery/unsubscribe-link/v1"
#: Longer tokens are refused before any work: an address is at most 512 characters.
MAX_TOKEN = 2048
_VERSION = 1
_MAC_BYTES = 32
_TOKEN = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class UnsubscribeTarget:
    """What a link turns off: ``category`` for ``address``, or with no category, the whole
    of ``channel``."""

    address: str
    channel: str
    category: str | None

    def describe(self) -> str:
        if self.category is None:
            return f"messages on {self.channel}"
        return f"{self.category} messages"


def unsubscribe_url(
    settings: Settings, *, address: str, channel: str, category: str | None
) -> str | None:
    """The one-click unsubscribe link for one delivery, or None when there is none to give:
    no ``DELIVERY_PUBLIC_URL``, no secret key to sign with, a critical category (it cannot
    be turned off), or an address preferences cannot be kept for."""
    if not settings.public_url or category in settings.critical_categories:
        return None
    try:
        token = unsubscribe_token(settings, address=address, channel=channel, category=category)
    except ValueError:
        return None
    if token is None:
        return None
    return f"{settings.public_url.rstrip('/')}/unsubscribe/{token}"


def unsubscribe_token(
    settings: Settings, *, address: str, channel: str, category: str | None
) -> str | None:
    """The signed token for ``(address, channel, category)``; None without a secret key.

    Raises:
        ValueError: the address, channel or category cannot be kept in preferences.
    """
    keys = _keys(settings)
    if not keys:
        return None
    payload = json.dumps(
        [
            _VERSION,
            check_key(address),
            check_channel(channel),
            None if category is None else check_category(category),
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return f"{_encode(payload)}.{_encode(_mac(keys[0], payload))}"


def read_token(settings: Settings, token: str) -> UnsubscribeTarget | None:
    """What ``token`` unsubscribes from, or None when it is not one of ours: forged,
    altered, truncated, signed with a key no longer configured, or not a token at all.
    Why is not said, to the caller or anyone else."""
    found = _TOKEN.fullmatch(token) if len(token) <= MAX_TOKEN else None
    keys = _keys(settings)
    if found is None or not keys:
        return None
    try:
        payload = _decode(found.group(1))
        given = _decode(found.group(2))
    except (binascii.Error, ValueError):
        return None
    # Every key is tried, so the time taken does not say which one (if any) matched.
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(_mac(key, payload), given)
    if not valid:
        return None
    return _target(payload)


def unsubscribe(preferences: Preferences, target: UnsubscribeTarget) -> RecipientPreferences:
    """Turn off what ``target`` names, at once.

    Raises:
        ValueError: the target cannot be stored (not from a token we signed).
    """
    return preferences.set_rule(
        target.address,
        channel=None if target.category is not None else target.channel,
        category=target.category,
        enabled=False,
    )


def _target(payload: bytes) -> UnsubscribeTarget | None:
    try:
        doc: Any = json.loads(payload)
        version, address, channel, category = doc
        if version != _VERSION:
            return None
        return UnsubscribeTarget(
            address=check_key(address),
            channel=check_channel(channel),
            category=None if category is None else check_category(category),
        )
    except (ValueError, TypeError):
        return None


def _keys(settings: Settings) -> tuple[bytes, ...]:
    # Imported here: the engine stands on this package, not the other way round; this is
    # only where the key is found (environment or key file), read the one way it is read.
    from delivery.engine.crypto import load_secret_key

    raw = load_secret_key(settings)
    if not raw:
        _warn_no_key()
        return ()
    return _subkeys(raw)


@lru_cache(maxsize=8)
def _subkeys(raw: str) -> tuple[bytes, ...]:
    return tuple(
        hmac.new(part.strip().encode(), PURPOSE, hashlib.sha256).digest()
        for part in raw.split(",")
        if part.strip()
    )


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    """Raises: ValueError when ``text`` is not the one encoding of its bytes (base64 lets
    the last character's spare bits vary; an altered token must not pass for the same)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _encode(data) != text:
        raise ValueError("not canonical base64")
    return data


@lru_cache(maxsize=1)
def _warn_no_key() -> None:
    logger.warning(
        "no DELIVERY_SECRET_KEY: messages go without unsubscribe links "
        "(generate a key with `delivery keygen`)"
    )
