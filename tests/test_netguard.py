"""The SSRF address classifier, against tables of addresses and their expected verdicts."""

from __future__ import annotations

import ipaddress
import sys

import pytest

from dispatcher.delivery import netguard
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
    ("::5efe:7f00:1", True),
]


# The IANA IPv4 Special-Purpose Address Registry (plus multicast), entry by entry: the first and
# last address of each range, and the address just outside it on either side.
IANA_V4_TABLE = [
    # 0.0.0.0/8 "this network" (0.0.0.0/32 "this host")
    ("0.0.0.0", True),
    ("0.255.255.255", True),
    ("1.0.0.0", False),
    # 10.0.0.0/8 private use
    ("9.255.255.255", False),
    ("10.0.0.0", True),
    ("10.255.255.255", True),
    ("11.0.0.0", False),
    # 100.64.0.0/10 shared address space (CGNAT)
    ("100.63.255.255", False),
    ("100.64.0.0", True),
    ("100.127.255.255", True),
    ("100.128.0.0", False),
    # 127.0.0.0/8 loopback
    ("126.255.255.255", False),
    ("127.0.0.0", True),
    ("127.255.255.255", True),
    ("128.0.0.0", False),
    # 169.254.0.0/16 link-local
    ("169.253.255.255", False),
    ("169.254.0.0", True),
    ("169.254.255.255", True),
    ("169.255.0.0", False),
    # 172.16.0.0/12 private use
    ("172.15.255.255", False),
    ("172.16.0.0", True),
    ("172.31.255.255", True),
    ("172.32.0.0", False),
    # 192.0.0.0/24 IETF protocol assignments, refused whole: its /29 service continuity prefix,
    # .8 dummy, .9 PCP and .10 TURN anycast (globally reachable, but no webhook target), .170/.171
    # NAT64 discovery
    ("191.255.255.255", False),
    ("192.0.0.0", True),
    ("192.0.0.7", True),
    ("192.0.0.8", True),
    ("192.0.0.9", True),
    ("192.0.0.10", True),
    ("192.0.0.170", True),
    ("192.0.0.171", True),
    ("192.0.0.255", True),
    ("192.0.1.0", False),
    # 192.0.2.0/24 documentation (TEST-NET-1)
    ("192.0.1.255", False),
    ("192.0.2.0", True),
    ("192.0.2.255", True),
    ("192.0.3.0", False),
    # 192.31.196.0/24 AS112-v4 and 192.52.193.0/24 AMT: globally reachable anycast services
    ("192.31.196.1", False),
    ("192.52.193.1", False),
    # 192.88.99.0/24 deprecated 6to4 relay anycast (incl. 192.88.99.2, 6a44 relay)
    ("192.88.98.255", False),
    ("192.88.99.0", True),
    ("192.88.99.2", True),
    ("192.88.99.255", True),
    ("192.88.100.0", False),
    # 192.168.0.0/16 private use
    ("192.167.255.255", False),
    ("192.168.0.0", True),
    ("192.168.255.255", True),
    ("192.169.0.0", False),
    # 192.175.48.0/24 AS112 direct delegation: globally reachable
    ("192.175.48.1", False),
    # 198.18.0.0/15 benchmarking
    ("198.17.255.255", False),
    ("198.18.0.0", True),
    ("198.19.255.255", True),
    ("198.20.0.0", False),
    # 198.51.100.0/24 documentation (TEST-NET-2)
    ("198.51.99.255", False),
    ("198.51.100.0", True),
    ("198.51.100.255", True),
    ("198.51.101.0", False),
    # 203.0.113.0/24 documentation (TEST-NET-3)
    ("203.0.112.255", False),
    ("203.0.113.0", True),
    ("203.0.113.255", True),
    ("203.0.114.0", False),
    # 224.0.0.0/4 multicast (its own registry), then 240.0.0.0/4 reserved up to the
    # 255.255.255.255 limited broadcast: nothing public above 223.255.255.255
    ("223.255.255.255", False),
    ("224.0.0.0", True),
    ("239.255.255.255", True),
    ("240.0.0.0", True),
    ("255.255.255.254", True),
    ("255.255.255.255", True),
]

# The IANA IPv6 Special-Purpose Address Registry, entry by entry, the same way. Outside
# 2000::/3 (global unicast) there is no public neighbour: that space is reserved.
IANA_V6_TABLE = [
    # ::/128 unspecified, ::1/128 loopback; the rest of ::/8 is refused unless it carries IPv4
    ("::", True),
    ("::1", True),
    ("::2", True),
    # ::ffff:0:0/96 IPv4-mapped: judged as the IPv4 address, at both ends and inside
    ("::fffe:ffff:ffff", True),
    ("::ffff:0.0.0.0", True),
    ("::ffff:1.0.0.0", False),
    ("::ffff:223.255.255.255", False),
    ("::ffff:255.255.255.255", True),
    ("::1:0:0:0", True),
    # 64:ff9b::/96 NAT64 well-known prefix: judged as the IPv4 address; the rest of
    # 64:ff9b::/32 lies in ::/8
    ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("64:ff9b::", True),
    ("64:ff9b::101:101", False),
    ("64:ff9b::ffff:ffff", True),
    ("64:ff9b::1:0:0", True),
    # 64:ff9b:1::/48 local-use NAT64
    ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", True),
    ("64:ff9b:1::", True),
    ("64:ff9b:1::101:101", True),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", True),
    ("64:ff9b:2::", True),
    # 100::/64 discard-only
    ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("100::", True),
    ("100::ffff:ffff:ffff:ffff", True),
    # 100:0:0:1::/64 dummy prefix (RFC 9780), then the reserved rest of 100::/8
    ("100:0:0:1::", True),
    ("100:0:0:1:ffff:ffff:ffff:ffff", True),
    ("100:0:0:2::", True),
    # 2000::/3 global unicast: below and above it is reserved or special
    ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    # 2001::/23 IETF protocol assignments, refused whole: Teredo 2001::/32, PCP/TURN/DNS-SD
    # anycast 2001:1::1-3, benchmarking 2001:2::/48, AMT 2001:3::/32, AS112 2001:4:112::/48,
    # ORCHIDv2 2001:20::/28, drone remote ID 2001:30::/28
    ("2000::", False),
    ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2001::", True),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
    ("2001:1::1", True),
    ("2001:1::3", True),
    ("2001:2::1", True),
    ("2001:3::1", True),
    ("2001:4:112::1", True),
    ("2001:20::1", True),
    ("2001:30::1", True),
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("2001:200::", False),
    # 2001:db8::/32 documentation
    ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2001:db8::", True),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("2001:db9::", False),
    # 2002::/16 6to4: judged as the IPv4 address in bits 16-47
    ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2002::", True),
    ("2002:101:101::", False),
    ("2002:dfff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("2002:e000::", True),
    ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("2003::", False),
    # 2620:4f:8000::/48 AS112 direct delegation: globally reachable
    ("2620:4f:8000::1", False),
    # 3fff::/20 documentation
    ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("3fff::", True),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("3fff:1000::", False),
    ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
    ("4000::", True),
    # 5f00::/16 SRv6 segment identifiers (RFC 9602)
    ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("5f00::", True),
    ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("5f01::", True),
    # fc00::/7 unique local, between reserved space
    ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("fc00::", True),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("fe00::", True),
    # fe80::/10 link-local, then fec0::/10 deprecated site-local
    ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("fe80::", True),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("fec0::", True),
    ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    # ff00::/8 multicast
    ("ff00::", True),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
]


@pytest.mark.parametrize(("address", "blocked"), BLOCKED_TABLE + IANA_V4_TABLE + IANA_V6_TABLE)
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


# Addresses a classifier built on the `ipaddress` flags would let through on some CPython
# release: `is_global` is True for multicast and for loopback inside NAT64, 6to4 or the compatible
# form; `is_loopback` is False for ::ffff:127.0.0.1 before the CVE-2024-4032 fix; `is_private` is
# False for CGNAT. What those flags say differs by interpreter, so only our verdict is pinned.
STDLIB_PITFALLS = [
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::1",
    "::127.0.0.1",
    "::ffff:0:7f00:1",
    "::ffff:127.0.0.1",
    "100.64.0.1",
]


@pytest.mark.parametrize("address", STDLIB_PITFALLS)
def test_addresses_the_stdlib_flags_misjudge_are_refused(address: str) -> None:
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


# Every classification property of `ipaddress`. Their answers differ between CPython releases,
# so the guard must never read one.
STDLIB_FLAGS = (
    "is_global",
    "is_private",
    "is_loopback",
    "is_reserved",
    "is_link_local",
    "is_multicast",
    "is_unspecified",
    "is_site_local",
)
# Plain bit extraction, but ours to do: the guard decodes embedded IPv4 itself.
STDLIB_IPV6_DECODERS = ("ipv4_mapped", "sixtofour", "teredo")


class StdlibFlagRead(Exception):
    """Raised by a booby-trapped `ipaddress` property."""


@pytest.fixture
def stdlib_flags_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every stdlib classification flag raise when read, and the IPv6 decoders raise
    when the guard reads them (the stdlib itself reads ipv4_mapped to print an address)."""

    def refuse(self: object) -> bool:
        raise StdlibFlagRead(f"a stdlib flag of {self} was read")

    def decoder(name: str) -> property:
        real = getattr(ipaddress.IPv6Address, name)

        def read(self: ipaddress.IPv6Address) -> object:
            if sys._getframe(1).f_globals.get("__name__") == netguard.__name__:
                raise StdlibFlagRead(f"the SSRF guard read {name} of {self}")
            return real.fget(self)

        return property(read)

    classes = (
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
    )
    for cls in classes:
        for name in STDLIB_FLAGS:
            if hasattr(cls, name):  # is_site_local exists on the IPv6 classes only
                monkeypatch.setattr(cls, name, property(refuse))
    for name in STDLIB_IPV6_DECODERS:
        monkeypatch.setattr(ipaddress.IPv6Address, name, decoder(name))


def test_verdicts_do_not_depend_on_the_stdlib_flags(stdlib_flags_raise: None) -> None:
    """Every table above gives the same answers with the stdlib's flags unusable."""
    with pytest.raises(StdlibFlagRead):
        _ = ipaddress.ip_address("::ffff:127.0.0.1").is_loopback  # the trap is armed
    with pytest.raises(StdlibFlagRead):
        _ = ipaddress.ip_network("10.0.0.0/8").is_private

    classified = BLOCKED_TABLE + IANA_V4_TABLE + IANA_V6_TABLE
    assert [(a, is_blocked(a)) for a, _ in classified] == classified
    assert [(a, is_blocked(a)) for a in STDLIB_PITFALLS] == [(a, True) for a in STDLIB_PITFALLS]
    assert [
        (allowed, a, is_blocked(a, parse_networks(allowed))) for allowed, a, _ in ALLOWED_TABLE
    ] == ALLOWED_TABLE
    assert [(a, embedded_ipv4(ipaddress.IPv6Address(a))) for a, _ in EMBEDDED_TABLE] == [
        (a, None if v4 is None else ipaddress.IPv4Address(v4)) for a, v4 in EMBEDDED_TABLE
    ]
