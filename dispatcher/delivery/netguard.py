"""The SSRF guard: which addresses the daemon may connect to, checked on the address dialed.

The verdict comes from this module's own tables and bit arithmetic, never from the `is_global`,
`is_private`, `is_loopback`... flags of `ipaddress`: those pass addresses we refuse (224.0.0.1
is "global"), and their answers change between patch releases (CVE-2024-4032: 3.13.0 calls
::ffff:127.0.0.1 loopback, 3.11.7 does not), so the guard would differ by interpreter. IPv4
written inside IPv6 (mapped, compatible, NAT64, 6to4) is unwrapped and judged as the IPv4
address it carries.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)
# Global unicast, the only IPv6 space IANA allocates for public use (RFC 4291 2.4; the IPv6 Address
# Space registry). Outside it everything is refused, except IPv4 carried in ::/8 or 64:ff9b::/96,
# which is unwrapped and judged: ::/8 (unspecified, loopback, and IPv4 forms like ISATAP
# ::5efe:a.b.c.d that listing encodings one by one let through, as Hook0 found), local-use NAT64
# 64:ff9b:1::/48, discard-only 100::/64, the dummy prefix 100:0:0:1::/64, SRv6 SIDs 5f00::/16,
# unique local fc00::/7 (incl. fd00:ec2::254, the AWS metadata endpoint), link-local fe80::/10,
# site-local fec0::/10, multicast ff00::/8, and whatever IANA has not allocated yet.
GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
# Inside global unicast, what is not public either. 6to4 2002::/16 is unwrapped instead.
BLOCKED_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")


class BlockedAddress(OSError):
    """A connection to an address the SSRF guard refuses."""

    def __init__(self, address: str) -> None:
        # (errno, strerror): aiohttp builds its ClientConnectorError message from strerror.
        super().__init__(
            errno.EACCES,
            f"{address} is not a public address; to permit it, add its network to "
            "allowed_networks (for the daemon and the CLI alike), then resend the failed "
            "deliveries: dispatcher deliveries resend --status failed --since 24h",
        )
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4)."""
    bits = int(addr)
    if addr in _MAPPED or addr in _SIIT or addr in _NAT64 or (addr in _COMPATIBLE and bits > 1):
        return ipaddress.IPv4Address(bits & 0xFFFFFFFF)
    if addr in _6TO4:
        # 6to4 2002:wwxx:yyzz::/48 carries the IPv4 address 0xwwxxyyzz after its 16-bit prefix.
        return ipaddress.IPv4Address((bits >> 80) & 0xFFFFFFFF)
    return None


def is_blocked(address: str | IPAddress, allowed: Sequence[Network] = ()) -> bool:
    """Return True if connecting to `address` must be refused."""
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    if any(addr.version == net.version and addr in net for net in allowed):
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return True
        inner = embedded_ipv4(addr)
        if inner is not None:
            return is_blocked(inner, allowed)
        return addr not in GLOBAL_UNICAST_V6 or any(addr in net for net in BLOCKED_V6)
    return any(addr in net for net in BLOCKED_V4)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


class GuardedResolver(AbstractResolver):
    """Resolve with aiohttp's resolver, refusing a name if ANY of its answers is blocked.

    Refusing the whole name (rather than dropping the bad answers) follows Hook0: a name that
    mixes public and private answers is not one a webhook should target.
    """

    def __init__(self, allowed: Sequence[Network], inner: AbstractResolver | None = None) -> None:
        self._allowed = allowed
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            if is_blocked(answer["host"], self._allowed):
                raise BlockedAddress(f"{host} ({answer['host']})")
        return answers

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(allowed: Sequence[Network]) -> Any:
    """Return a TCPConnector socket_factory that refuses blocked peers at connect time.

    This runs for every address aiohttp is about to dial, IP-literal URLs included, so what is
    checked is exactly what is connected to, whatever the resolver said earlier.
    """

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        host = sockaddr[0]
        if is_blocked(host, allowed):
            raise BlockedAddress(host)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


async def target_warning(
    url: str, allowed: Sequence[Network], timeout_s: float = 3.0
) -> str | None:
    """Return why the daemon would refuse `url` as things resolve now, or None if it would not.

    Used by the CLI to warn when a webhook is added or edited; the daemon checks again on
    every connection, since DNS answers change.
    """
    host = urlsplit(url).hostname or ""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            return None  # nothing to judge yet; the daemon records a dns error if it persists
        addresses = sorted({str(info[4][0]) for info in infos})
    blocked = [a for a in addresses if is_blocked(a, allowed)]
    if not blocked:
        return None
    return (
        f"{host} resolves to {', '.join(blocked)}, which the daemon refuses to connect to"
        " (not a public address); add the network to allowed_networks to permit it"
    )


def refusal(url: str) -> str:
    """Say that the guard refused to connect to the host of `url`, and how to permit it."""
    host = urlsplit(url).hostname or url
    try:
        ipaddress.ip_address(host)
        why = "which is not a public address"
    except ValueError:
        why = "which resolves to an address that is not public"
    return (
        f"the SSRF guard refused to connect to {host}, {why};"
        " to permit it, add its network to allowed_networks"
    )
