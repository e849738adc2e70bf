"""The SSRF address classifier, against tables of addresses and their expected verdicts."""

from __future__ import annotations

import ipaddress

import pytest

from dispatcher.delivery.netguard import embedded_ipv4, is_blocked, parse_networks

# (address, blocked?) — the verdicts come from the reference's range list (section 1.2).
BLOCKED_TABLE = [
    # cloud metadata, in every spelling
    ("169.254.169.254", True),
    ("::ffff:a9fe:a9fe", True),
    ("::ffff:169.254.169.254", True),
    ("64:ff9b::a9fe:a9fe", True),
    ("fd00:ec2::254", True),
    # IPv4 special ranges
    ("0.0.0.0", True),
    ("0.255.255.255", True),
    ("10.1.2.3", True),
    ("100.64.0.1", True),
    ("100.127.255.255", True),
    ("127.0.0.2", True),
    ("169.254.1.1", True),
    ("172.16.0.1", True),
    ("172.31.255.255", True),
    ("192.0.0.1", True),
    ("192.0.2.1", True),
    ("192.88.99.1", True),
    ("192.168.1.1", True),
    ("198.18.0.1", True),
    ("198.19.255.255", True),
    ("198.51.100.7", True),
    ("203.0.113.9", True),
    ("224.0.0.1", True),
    ("239.255.255.250", True),
    ("240.0.0.1", True),
    ("255.255.255.255", True),
    # public IPv4, including the neighbours of blocked ranges
    ("8.8.8.8", False),
    ("8.8.4.4", False),
    ("1.1.1.1", False),
    ("93.184.216.34", False),
    ("100.128.0.1", False),
    ("172.15.255.255", False),
    ("172.32.0.1", False),
    ("223.255.255.255", False),
    # IPv6 special ranges
    ("::", True),
    ("::1", True),
    ("64:ff9b:1::1", True),
    ("100::1", True),
    ("2001::1", True),
    ("2001:db8::1", True),
    ("3fff::1", True),
    ("fc00::1", True),
    ("fe80::1", True),
    ("fe80::1%eth0", True),
    ("fec0::1", True),
    ("ff02::1", True),
    # IPv4 carried inside IPv6 is judged as that IPv4 address
    ("::127.0.0.1", True),
    ("::ffff:127.0.0.1", True),
    ("::ffff:0.0.0.1", True),
    ("::ffff:10.0.0.1", True),
    ("::ffff:0:7f00:1", True),
    ("64:ff9b::7f00:1", True),
    ("2002:7f00:1::1", True),
    ("2002:a00:1::1", True),
    ("::ffff:8.8.8.8", False),
    ("::ffff:0:808:808", False),
    ("64:ff9b::808:808", False),
    ("2002:808:808::1", False),
    # public IPv6
    ("2001:4860:4860::8888", False),
    ("2606:4700:4700::1111", False),
    pytest.param("::5efe:7f00:1", True),
]


@pytest.mark.parametrize(("address", "blocked"), BLOCKED_TABLE)
def test_is_blocked(address: str, blocked: bool) -> None:
    assert is_blocked(address) is blocked


def test_is_blocked_accepts_address_objects() -> None:
    assert is_blocked(ipaddress.IPv4Address("169.254.169.254")) is True
    assert is_blocked(ipaddress.IPv6Address("::ffff:169.254.169.254")) is True
    assert is_blocked(ipaddress.IPv4Address("8.8.8.8")) is False


# (allowed networks, address, blocked?)
ALLOWED_TABLE = [
    (("127.0.0.0/8",), "127.0.0.1", False),
    (("127.0.0.0/8",), "127.255.255.255", False),
    (("127.0.0.0/8",), "::ffff:127.0.0.1", False),
    (("127.0.0.0/8",), "10.0.0.1", True),
    (("127.0.0.0/8",), "169.254.169.254", True),
    (("127.0.0.0/8",), "::1", True),
    (("127.0.0.0/8",), "8.8.8.8", False),
    (("127.0.0.1/32",), "127.0.0.1", False),
    (("127.0.0.1/32",), "127.0.0.2", True),
    (("127.0.0.1/32",), "127.0.0.0", True),
    (("::1/128",), "::1", False),
    (("::1/128",), "127.0.0.1", True),
    (("::1/128",), "::ffff:127.0.0.1", True),
    (("172.16.0.0/16",), "172.16.0.1", False),
    (("172.16.0.0/16",), "172.16.255.255", False),
    (("172.16.0.0/16",), "172.17.0.0", True),
    (("172.16.0.0/16",), "172.31.0.1", True),
    (("10.0.0.0/8",), "::ffff:10.1.2.3", False),
    (("10.0.0.0/8",), "64:ff9b::a01:203", False),
    (("10.0.0.0/8",), "192.168.1.1", True),
    (("fd00::/8",), "fd00:ec2::254", False),
    (("fd00::/8",), "fc00::1", True),
    (("10.0.0.0/8", "192.168.0.0/16"), "192.168.1.1", False),
    (("10.0.0.0/8", "192.168.0.0/16"), "10.1.2.3", False),
    (("10.0.0.0/8", "192.168.0.0/16"), "172.16.0.1", True),
]


@pytest.mark.parametrize(("allowed", "address", "blocked"), ALLOWED_TABLE)
def test_allowed_networks_exempt_exactly_their_range(
    allowed: tuple[str, ...], address: str, blocked: bool
) -> None:
    assert is_blocked(address, parse_networks(allowed)) is blocked


# (address, ipaddress attribute, its value on this Python) — each one a way a classifier built
# on the standard library alone would let the address through. CPython 3.11 values; later
# versions change some of them, which is another reason not to rely on them.
STDLIB_PITFALLS = [
    ("224.0.0.1", "is_global", True),
    ("239.255.255.250", "is_global", True),
    ("ff02::1", "is_global", True),
    ("64:ff9b::7f00:1", "is_global", True),
    ("2002:7f00:1::1", "is_global", True),
    ("::127.0.0.1", "is_global", True),
    ("::ffff:0:7f00:1", "is_global", True),
    ("::ffff:127.0.0.1", "is_loopback", False),
    ("100.64.0.1", "is_private", False),
]


@pytest.mark.parametrize(("address", "attribute", "value"), STDLIB_PITFALLS)
def test_stdlib_flags_alone_would_misjudge(address: str, attribute: str, value: bool) -> None:
    """Document why the explicit table exists: the stdlib's flags say "fine" for these."""
    assert getattr(ipaddress.ip_address(address), attribute) is value
    assert is_blocked(address) is True


# (IPv6 address, the IPv4 address it carries or None)
EMBEDDED_TABLE = [
    ("::ffff:a9fe:a9fe", "169.254.169.254"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("::ffff:8.8.8.8", "8.8.8.8"),
    ("::ffff:0:7f00:1", "127.0.0.1"),
    ("::ffff:0:808:808", "8.8.8.8"),
    ("::127.0.0.1", "127.0.0.1"),
    ("::8.8.8.8", "8.8.8.8"),
    ("::2", "0.0.0.2"),
    ("::1", None),
    ("::", None),
    ("64:ff9b::7f00:1", "127.0.0.1"),
    ("64:ff9b::808:808", "8.8.8.8"),
    ("64:ff9b:1::7f00:1", None),
    ("2002:7f00:1::1", "127.0.0.1"),
    ("2002:808:808::1", "8.8.8.8"),
    ("2002:a9fe:a9fe:1:2:3:4:5", "169.254.169.254"),
    ("2001:4860:4860::8888", None),
    ("fe80::1", None),
    ("fd00:ec2::254", None),
    ("ff02::1", None),
]


@pytest.mark.parametrize(("address", "inner"), EMBEDDED_TABLE)
def test_embedded_ipv4(address: str, inner: str | None) -> None:
    expected = None if inner is None else ipaddress.IPv4Address(inner)
    assert embedded_ipv4(ipaddress.IPv6Address(address)) == expected
