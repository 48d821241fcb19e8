"""Send through any Apprise URL (optional extra: ``pip install 'delivery[apprise]'``).

The address is an Apprise URL, or ``-`` for the channel's own ``url``. apprise is imported
only when a message is sent, so without it this dispatcher alone fails (with a message
saying what to install) while the registry and every other dispatcher work.

Apprise reports success or failure, not why. The reason is taken from its log: an HTTP
status it logged as ``error=NNN`` decides retryable (408, 425, 429, 5xx) or permanent
(other 4xx); without one a failure is retryable.

SSRF: with ``DELIVERY_ALLOW_PRIVATE_NETWORKS`` false, URLs whose scheme names a host of the
user's choosing (``json://``, ``xml://``, ``form://``, ``apprise://``, ``gotify://``,
``mmost://`` and their ``s`` forms) must resolve to public addresses, and HTTP redirects are
refused. Apprise resolves the name again when it connects, and other schemes are not
checked: keep URLs to self-hosted services in channel config rather than in addresses.
"""

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import ClassVar, NoReturn
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from delivery.dispatchers.base import (
    Dispatcher,
    DispatcherConfig,
    SendContext,
    SendResult,
)
from delivery.dispatchers.http import RETRYABLE_STATUSES
from delivery.dispatchers.netguard import resolve_public
from delivery.dispatchers.protocol import APPRISE, AddressType
from delivery.errors import (
    ConfigurationError,
    ForbiddenTarget,
    InvalidAddress,
    PermanentError,
    RetryableError,
)
from schemas import Payload

#: The address that means "the channel's configured URL".
CONFIG_ADDRESS = "-"

#: Schemes whose host part is a server of the user's choosing, checked against SSRF.
HOST_SCHEMES = frozenset(
    f"{name}{tls}"
    for name in ("json", "xml", "form", "apprise", "gotify", "mmost")
    for tls in ("", "s")
)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_STATUS = re.compile(r"\berror=(\d{3})\b")


class AppriseConfig(DispatcherConfig):
    url: SecretStr | None = Field(
        default=None,
        description="Apprise URL used for the address '-' (it usually holds credentials)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _URL.match(value.get_secret_value()):
            raise ValueError("must be an Apprise URL such as json://host/path")
        return value


def _apprise() -> ModuleType:
    try:
        import apprise
    except ImportError:
        raise ConfigurationError(
            "apprise is not installed on this worker; pip install 'delivery[apprise]'",
            dispatcher="apprise",
        ) from None
    return apprise


class AppriseDispatcher(Dispatcher):
    slug = "apprise"
    verbose_name = "Apprise (any Apprise URL)"
    protocol = APPRISE
    config_class = AppriseConfig
    address_types: ClassVar[frozenset[AddressType]] = frozenset({AddressType.APPRISE_URL})

    config: AppriseConfig

    def validate_address(self, address: str) -> str:
        address = address.strip()
        if address in ("", CONFIG_ADDRESS):
            if self.config.url is None:
                raise InvalidAddress(
                    "the channel has no url; give an Apprise URL as the address",
                    dispatcher=self.slug,
                )
            return CONFIG_ADDRESS
        if not _URL.match(address):
            raise InvalidAddress(
                f"expected an Apprise URL such as json://host/path or {CONFIG_ADDRESS!r}",
                dispatcher=self.slug,
            )
        return address

    def _send(self, address: str, payload: Payload, *, context: SendContext) -> SendResult:
        apprise = _apprise()
        url = address
        if address == CONFIG_ADDRESS and self.config.url is not None:
            url = self.config.url.get_secret_value()
        where = _describe(url)
        if not self.environment.allow_private_networks:
            self._guard(url, where)
        asset = apprise.AppriseAsset()
        if not self.environment.allow_private_networks and hasattr(asset, "http_redirects"):
            asset.http_redirects = False  # a redirect could lead anywhere, 169.254.169.254 too
        notifier = apprise.Apprise(asset=asset)
        if not notifier.add(url):
            raise InvalidAddress(f"Apprise cannot use {where}", dispatcher=self.slug)
        if not self.environment.allow_private_networks and any(
            getattr(s, "redirects", False) for s in notifier
        ):
            raise ForbiddenTarget(
                f"{where} asks to follow redirects, which could lead to private networks",
                dispatcher=self.slug,
            )
        with _captured_warnings() as captured:
            result = notifier.notify(
                body=payload.message,
                title=payload.subject or "",
                body_format=apprise.NotifyFormat.TEXT,
            )
        if result:
            return SendResult(detail={"service": where})
        # apprise 1.x returns a bool; 2.x a result carrying each attempt's log.
        logs = getattr(result, "logs", None)
        lines = [str(entry.message) for entry in logs()] if callable(logs) else captured
        self._raise_failure(url, where, lines)

    def _guard(self, url: str, where: str) -> None:
        """Refuse a user-chosen host that resolves to a private address.

        Raises:
            ForbiddenTarget: the host is loopback, private, link-local or reserved.
            RetryableError: the name does not resolve (yet).
        """
        parts = urlsplit(url)
        if parts.scheme.lower() not in HOST_SCHEMES or not parts.hostname:
            return
        try:
            port = parts.port or (443 if parts.scheme.lower().endswith("s") else 80)
            resolve_public(parts.hostname, port)
        except ForbiddenTarget as exc:
            raise ForbiddenTarget(str(exc), dispatcher=self.slug) from None
        except (OSError, ValueError) as exc:
            raise RetryableError(
                f"cannot resolve {where}: {type(exc).__name__}", dispatcher=self.slug
            ) from exc

    def _raise_failure(self, url: str, where: str, lines: list[str]) -> NoReturn:
        """Raise what Apprise's log says about the failure.

        Raises:
            PermanentError: the service answered with a 4xx status (not 408/425/429).
            RetryableError: a 5xx, 408/425/429, or no status in the log.
        """
        reason = _redact(" ".join(lines[-3:]), url) or "Apprise gave no reason"
        found = _STATUS.findall(" ".join(lines))
        status = int(found[-1]) if found else None
        message = f"{where}: {reason}"[:500]
        if status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUSES:
            raise PermanentError(message, dispatcher=self.slug, status=status)
        raise RetryableError(message, dispatcher=self.slug, status=status)


def _describe(url: str) -> str:
    """The URL as it may be shown: scheme, plus the host where it is a host and not a key."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in HOST_SCHEMES and parts.hostname:
        return f"{scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return f"{scheme}://…"


def _redact(text: str, url: str) -> str:
    # Most Apprise URLs carry tokens in the user, host or path parts: hide every long-ish
    # piece of the URL, and the URL itself, wherever the log quotes them.
    parts = urlsplit(url)
    pieces = {url, parts.password or "", parts.username or ""}
    pieces.update(p for p in re.split(r"[/:@?&=#]", url.split("://", 1)[-1]) if len(p) >= 6)
    if parts.scheme.lower() in HOST_SCHEMES and parts.hostname:
        pieces.discard(parts.hostname)
    for piece in sorted(filter(None, pieces), key=len, reverse=True):
        text = text.replace(piece, "***")
    return " ".join(text.split())


class _ThreadWarnings(logging.Handler):
    """Warnings Apprise logs from this thread (apprise 1.x gives no other reason)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    handler = _ThreadWarnings()
    log = logging.getLogger("apprise")
    log.addHandler(handler)
    try:
        yield handler.lines
    finally:
        log.removeHandler(handler)
