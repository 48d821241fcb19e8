"""Translating HTTP responses and transport failures into delivery errors, once, at the seam."""

import email.utils
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import requests
import urllib3

from delivery.errors import DeliveryError, PermanentError, RateLimited, RetryableError

#: Statuses that mean "not now" rather than "never".
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait; providers send seconds or an HTTP date."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def raise_for_delivery(response: requests.Response, *, dispatcher: str) -> None:
    """``raise_for_status`` for a ``requests`` response."""
    raise_for_status(
        response.status_code,
        reason=response.reason,
        headers=response.headers,
        url=response.url,
        dispatcher=dispatcher,
    )


def raise_for_status(
    status: int, *, reason: str | None, headers: Mapping[str, str], url: str, dispatcher: str
) -> None:
    """Raise the delivery error a non-2xx response means.

    Raises:
        RateLimited: 429, with the server's Retry-After.
        RetryableError: 408, 425 or 5xx.
        PermanentError: any other status outside 2xx.
    """
    if 200 <= status < 300:
        return
    text = f"{status} {reason or ''} from {where(url)}".replace("  ", " ")
    if status == 429:
        raise RateLimited(
            text, dispatcher=dispatcher, status=status, retry_after=retry_after(headers)
        )
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(
            text, dispatcher=dispatcher, status=status, retry_after=retry_after(headers)
        )
    raise PermanentError(text, dispatcher=dispatcher, status=status)


def where(url: str) -> str:
    """The host (and a port other than the scheme's) a URL names, for error messages.

    Never its path, query or credentials: a webhook URL's path or query is often its
    secret (Slack's, a signed URL), and a password is always one."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        return "the server"
    if not host:
        return "the server"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{host}:{port}" if port is not None and port != default else host


def is_http_url(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL with a host."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def transport_error(
    exc: requests.RequestException, *, dispatcher: str, host: str | None
) -> DeliveryError:
    """The delivery error a failed request means (no response at all), to raise
    ``from exc``: a PermanentError for too many redirects or a URL that cannot be sent
    to, a RetryableError for timeouts and connection failures."""
    if isinstance(
        exc,
        requests.TooManyRedirects
        | requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema,
    ):
        return PermanentError(f"{type(exc).__name__} for {host}", dispatcher=dispatcher)
    if isinstance(exc, requests.Timeout):
        return RetryableError(f"timed out talking to {host}", dispatcher=dispatcher)
    return RetryableError(f"cannot reach {host}: {type(exc).__name__}", dispatcher=dispatcher)


def urllib3_error(
    exc: urllib3.exceptions.HTTPError, *, dispatcher: str, host: str | None
) -> DeliveryError:
    """``transport_error`` for urllib3's errors."""
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
        reason, urllib3.exceptions.ResponseError
    ):
        return PermanentError(f"TooManyRedirects for {host}", dispatcher=dispatcher)
    if isinstance(reason, urllib3.exceptions.LocationValueError):
        return PermanentError(f"{type(reason).__name__} for {host}", dispatcher=dispatcher)
    # NewConnectionError subclasses ConnectTimeoutError, but a refusal is no timeout.
    if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
        reason, urllib3.exceptions.NewConnectionError
    ):
        return RetryableError(f"timed out talking to {host}", dispatcher=dispatcher)
    return RetryableError(f"cannot reach {host}: {type(reason).__name__}", dispatcher=dispatcher)
