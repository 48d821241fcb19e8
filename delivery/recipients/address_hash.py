"""The keyed hash an erased address is still known by (``delivery erase``).

Erasure removes an address from the log, but a suppressed address must stay suppressed: the
suppression list keeps ``erased:`` and an HMAC-SHA256 of it instead, and the check before
each send looks for that beside the address itself. A plain hash would not do: phone numbers
are few enough to hash them all, so the hash is keyed, by a subkey of
``DELIVERY_SECRET_KEY`` derived for this purpose only (as the unsubscribe links derive
theirs), so the hashes say nothing about the key that encrypts channel secrets.

Every key of a rotation (``new,old``) is kept: the first hashes what is erased now, and
each is tried when checking, so a rotation does not let an erased address through. A key
no longer configured no longer finds what it hashed.
"""

import hashlib
import hmac
from functools import lru_cache

from schemas import Settings

#: What the subkey is for; a new purpose (or format) gets a new label, never this one.
PURPOSE = b"delivery/erased-address/v1"
#: How an erased address is written on a suppression list, before its keyed hash (hex).
MARKER = "erased:"


def erasure_keys(settings: Settings) -> tuple[bytes, ...]:
    """The subkeys of ``DELIVERY_SECRET_KEY`` (or the key file) for address hashes, the
    first the one to hash with; empty when no key is set."""
    # Imported here: the engine stands on this package, not the other way round.
    from delivery.engine.crypto import load_secret_key

    raw = load_secret_key(settings)
    return derive_keys(raw) if raw else ()


@lru_cache(maxsize=8)
def derive_keys(raw: str) -> tuple[bytes, ...]:
    """One subkey per comma-separated key of ``raw`` (a rotation), in order."""
    return tuple(
        hmac.new(part.strip().encode(), PURPOSE, hashlib.sha256).digest()
        for part in raw.split(",")
        if part.strip()
    )


def keyed_hash(key: bytes, address: str) -> str:
    """HMAC-SHA256 of ``address`` under ``key``, hex (64 characters)."""
    # surrogatepass: whatever text reached the log hashes, rather than raising here.
    return hmac.new(key, address.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def hashed_forms(keys: tuple[bytes, ...], address: str) -> list[str]:
    """``address`` as a suppression list keeps it once erased, under each key."""
    return [MARKER + keyed_hash(key, address) for key in keys]
