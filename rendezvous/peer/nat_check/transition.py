"""Sans-IO verdicts about the IPv6 transition: NAT64 prefixes (RFC 7050 §3,
RFC 6052 §2.2), NPTv6 (RFC 6296), the IPv4 service continuity prefix
192.0.0.0/29 (RFC 7335: a DS-Lite B4 or AFTR, RFC 6333 §5.7, or a 464XLAT
CLAT, RFC 6877), and how IPv4 leaves this host.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# RFC 7050 §2.2: the well-known name, and the two IPv4 addresses it has (and no AAAA).
WELL_KNOWN_NAME = "ipv4only.arpa"
WELL_KNOWN_IPV4 = (ipaddress.IPv4Address("192.0.0.170"), ipaddress.IPv4Address("192.0.0.171"))
# RFC 6052 §2.2: where the IPv4 address sits for each prefix length (bits 64-71 are the u octet, zero).
PREFIX_LENGTHS = (96, 64, 56, 48, 40, 32)
SERVICE_CONTINUITY = ipaddress.IPv4Network("192.0.0.0/29")

NATIVE = "native"
NAT64 = "nat64"
DS_LITE = "ds-lite"
XLAT_464 = "464xlat"


def _embedded(address: ipaddress.IPv6Address, length: int) -> ipaddress.IPv4Address | None:
    """The IPv4 address an RFC 6052 address of this prefix length carries, or None (u octet set)."""
    raw = address.packed
    if length == 96:
        return ipaddress.IPv4Address(raw[12:16])
    if raw[8] != 0:
        return None
    start = length // 8
    octets = (raw[start:8] + raw[9:16])[:4]
    return ipaddress.IPv4Address(octets)


def _prefix(address: ipaddress.IPv6Address, length: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((int(address) >> (128 - length) << (128 - length), length))


def nat64_prefixes(aaaa: list[str]) -> list[str]:
    """RFC 7050 §3: the NAT64 prefixes (``prefix/length``) in the AAAA answer for
    ipv4only.arpa, in answer order: for each address, the longest RFC 6052 prefix
    length at which one of the well-known IPv4 addresses is embedded."""
    found = []
    for text in aaaa:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            continue
        for length in PREFIX_LENGTHS:
            if _embedded(address, length) in WELL_KNOWN_IPV4:
                prefix = str(_prefix(address, length))
                if prefix not in found:
                    found.append(prefix)
                break
    return found


def synthesize(prefix: str, ipv4: str) -> str:
    """RFC 6052 §2.2: the IPv6 address for ipv4 under a NAT64 prefix."""
    network = ipaddress.IPv6Network(prefix)
    length = network.prefixlen
    if length not in PREFIX_LENGTHS:
        raise ValueError(f"{prefix}: RFC 6052 allows only /{', /'.join(map(str, PREFIX_LENGTHS))}")
    v4 = ipaddress.IPv4Address(ipv4).packed
    raw = bytearray(network.network_address.packed)
    if length == 96:
        raw[12:16] = v4
    else:
        body = bytearray(raw[:length // 8]) + v4
        body = body[:8] + b"\x00" + body[8:]  # the u octet
        raw[:len(body)] = body
    return str(ipaddress.IPv6Address(bytes(raw)))


def is_continuity_address(ip: str | None) -> bool:
    """Whether ip is in 192.0.0.0/29 (RFC 7335), which B4s, AFTRs and CLATs use."""
    try:
        return ip is not None and ipaddress.IPv4Address(ip) in SERVICE_CONTINUITY
    except ValueError:
        return False


def nptv6(local: str | None, mapped: str | None) -> bool | None:
    """RFC 6296: the mapped IPv6 address has another prefix but the local interface
    identifier (the low 64 bits). None when it cannot be told (no IPv6 pair)."""
    try:
        a, b = ipaddress.IPv6Address(local), ipaddress.IPv6Address(mapped)
    except (ValueError, TypeError):
        return None
    low = (1 << 64) - 1
    return a != b and int(a) & low == int(b) & low


def ipv4_path(native_route: bool, through_nat64: bool, nat64_found: bool, continuity_address: str | None,
              aftr_address: str | None) -> str | None:
    """How IPv4 leaves this host: "native", "nat64" (the check reached the IPv4 server
    through a NAT64 prefix), "464xlat" (an IPv4 route, a 192.0.0.0/29 address here and
    a NAT64: a CLAT), "ds-lite" (a 192.0.0.0/29 address here without NAT64, a B4, or a
    hop from 192.0.0.0/29 on the path, an AFTR); None without IPv4."""
    if through_nat64:
        return NAT64
    if not native_route:
        return None
    if continuity_address is not None and nat64_found:
        return XLAT_464
    if continuity_address is not None or aftr_address is not None:
        return DS_LITE
    return NATIVE


@dataclass
class Transition:
    """What the check found about the IPv6 transition; None means not determined."""

    ipv4_path: str | None = None
    nat64: bool | None = None
    nat64_prefixes: list[str] = field(default_factory=list)
    continuity_address: str | None = None  # a local 192.0.0.0/29 address, "IP on IFACE"
    aftr_address: str | None = None        # a 192.0.0.0/29 hop on the IPv4 path
    ipv4_hops: list[str | None] = field(default_factory=list)  # who sent Time Exceeded, TTL 1 up
