"""Refuse outbound HTTP to loopback, private and link-local networks (SSRF).

The check runs on the IP address actually connected to, after DNS resolution, for every
connection a pool opens — redirects included — so a public name that resolves to
127.0.0.1, or a redirect to 169.254.169.254, is refused before a byte is sent.
"""

import ipaddress
import socket
from typing import Any

from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util import Retry
from urllib3.util import connection as urllib3_connection

from delivery.errors import ForbiddenTarget

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Redirects followed before a request is given up as a loop.
MAX_REDIRECTS = 5


#: IPv6 ranges never a webhook's address: IPv4-compatible (deprecated, ``::a.b.c.d``),
#: site-local (deprecated, private in practice), 6to4 (deprecated; it tunnels to whatever
#: IPv4 address it embeds), Teredo (the same), and local-use NAT64 (RFC 8215).
REFUSED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in ("::/96", "fec0::/10", "2002::/16", "2001::/32", "64:ff9b:1::/48")
)
#: The well-known NAT64 prefix: the address it embeds is the one reached, so it is judged.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_forbidden(ip: IPAddress) -> bool:
    """Whether an address is anything but a public, globally routable one, in whatever form
    IPv6 gives an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_forbidden(ip.ipv4_mapped)
        if ip in NAT64:
            return is_forbidden(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(ip in net for net in REFUSED_V6):
            return True
    return not ip.is_global or ip.is_multicast


def resolve_public(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, all of them public.

    Raises:
        ForbiddenTarget: any address is loopback, private, link-local or reserved.
        OSError: the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if is_forbidden(ipaddress.ip_address(address.split("%", 1)[0])):
            raise ForbiddenTarget(
                f"{host} resolves to {address}, a private, loopback or link-local address; "
                "set DELIVERY_ALLOW_PRIVATE_NETWORKS=true to allow it"
            )
    return addresses


class _GuardedConnectionMixin:
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        # Connect to the address we checked, not to a second resolution of the name, so a
        # DNS answer that changes between check and connect cannot slip through.
        try:
            addresses = resolve_public(self.host, self.port)
        except socket.gaierror as exc:
            raise NewConnectionError(self, f"cannot resolve {self.host}: {exc}") from exc  # type: ignore[arg-type]
        last: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                last = exc
        raise NewConnectionError(self, f"cannot connect to {self.host}: {last}")  # type: ignore[arg-type]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedPoolManager(PoolManager):
    """urllib3's pool manager with ``close``, which ``Dispatcher.close`` calls on its clients."""

    def close(self) -> None:
        self.clear()


def make_pool_manager(*, allow_private_networks: bool, pool_size: int = 4) -> GuardedPoolManager:
    """Keep-alive connections for calling user-supplied URLs. urllib3 rather than
    ``requests``: on this hot path ``requests``' per-call work (merging settings, cookies,
    hooks) cost more than the call itself. Unless private networks are allowed, every
    connection, redirects included, goes only to a checked public address; urllib3 reads
    no proxy settings from the environment (a proxy would make every target look alike).
    No retries here (the delivery's own schedule retries); redirects are followed
    ``MAX_REDIRECTS`` times.
    """
    manager = GuardedPoolManager(
        num_pools=pool_size,
        maxsize=pool_size,
        retries=Retry(
            total=MAX_REDIRECTS, connect=0, read=0, status=0, other=0,
            redirect=MAX_REDIRECTS, raise_on_status=False, respect_retry_after_header=False,
        ),
    )  # fmt: skip
    if not allow_private_networks:
        manager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
    return manager
