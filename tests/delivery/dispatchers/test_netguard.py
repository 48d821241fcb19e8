"""The SSRF guard sees through every IPv6 form of an IPv4 address."""

import ipaddress

import pytest

from delivery.dispatchers.netguard import is_forbidden, resolve_public
from delivery.errors import ForbiddenTarget


@pytest.mark.parametrize(
    "ip",
    [
        "::127.0.0.1",  # IPv4-compatible loopback
        "::10.0.0.1",  # IPv4-compatible private
        "::8.8.8.8",  # IPv4-compatible at all: deprecated, never a real target
        "::ffff:169.254.169.254",  # mapped link-local (cloud metadata)
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::c0a8:101",  # NAT64 of 192.168.1.1
        "64:ff9b:1::808:808",  # local-use NAT64 prefix
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:808:808::1",  # 6to4 of a public address: deprecated, tunnels anywhere
        "2001:0:53aa:64c::f5ff:fffe",  # Teredo, client 10.0.0.1
        "fec0::1",  # site-local
        "feff::1",  # site-local, the range's end
    ],
)
def test_ipv6_forms_of_private_or_deprecated_addresses_are_forbidden(ip: str) -> None:
    assert is_forbidden(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["64:ff9b::808:808", "2606:4700:4700::1111", "::ffff:1.1.1.1"])
def test_public_targets_stay_reachable(ip: str) -> None:
    # NAT64 of 8.8.8.8 is how an IPv6-only host reaches a public IPv4 webhook
    assert not is_forbidden(ipaddress.ip_address(ip))


@pytest.mark.parametrize("host", ["::127.0.0.1", "64:ff9b::a9fe:a9fe", "fec0::1"])
def test_a_literal_address_is_refused_where_it_is_resolved(host: str) -> None:
    with pytest.raises(ForbiddenTarget, match="DELIVERY_ALLOW_PRIVATE_NETWORKS"):
        resolve_public(host, 443)
