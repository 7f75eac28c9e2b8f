"""The peer addresses a relay self-test asks for: internal ranges and every IPv6 spelling of them.

RFC 8656 §21 (security considerations: a relay must not become a way into
the operator's own network) and §9 (a permission is for an IP address).
The list follows what TURN scanners try (stunner's range scan) and the
bypasses found in deployed relays: 0.0.0.0 reaching loopback (coturn,
CVE-2020-26262), IPv4-mapped and other IPv6 forms that embed an internal
IPv4 address. Each range is tried at its first and last usable address, so
a rule that stops one short of a range's end shows. Pure data: nothing
here is sent anywhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TARGET_PORT = 80  # what a scanner would aim at; a CreatePermission ignores it (RFC 8656 §9)


@dataclass(frozen=True)
class Target:
    """A peer address to ask the relay for: its range, the address as sent, and what it is."""

    category: str
    address: str
    what: str

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


IPV4_TARGETS: tuple[Target, ...] = (
    Target("unspecified", "0.0.0.0", "unspecified: Linux delivers it to the host itself (CVE-2020-26262)"),
    Target("unspecified", "0.1.2.3", "'this network' 0.0.0.0/8"),
    Target("loopback", "127.0.0.1", "loopback"),
    Target("loopback", "127.255.255.254", "loopback, end of 127.0.0.0/8"),
    Target("private", "10.0.0.1", "RFC 1918 10.0.0.0/8"),
    Target("private", "10.255.255.254", "RFC 1918, end of 10.0.0.0/8"),
    Target("private", "172.16.0.1", "RFC 1918 172.16.0.0/12"),
    Target("private", "172.31.255.254", "RFC 1918, end of 172.16.0.0/12"),
    Target("private", "192.168.0.1", "RFC 1918 192.168.0.0/16"),
    Target("private", "192.168.255.254", "RFC 1918, end of 192.168.0.0/16"),
    Target("cgn", "100.64.0.1", "carrier-grade NAT shared space 100.64.0.0/10 (RFC 6598)"),
    Target("cgn", "100.127.255.254", "shared space, end of 100.64.0.0/10"),
    Target("metadata", "100.100.100.200", "cloud metadata service (Alibaba) inside 100.64.0.0/10"),
    Target("link-local", "169.254.0.1", "link-local 169.254.0.0/16"),
    Target("link-local", "169.254.255.254", "link-local, end of 169.254.0.0/16"),
    Target("metadata", "169.254.169.254", "cloud metadata service (AWS, GCP, Azure, OpenStack)"),
    Target("multicast", "224.0.0.1", "multicast all-hosts"),
    Target("multicast", "239.255.255.250", "multicast SSDP (UPnP discovery)"),
    Target("broadcast", "255.255.255.255", "limited broadcast"),
    Target("reserved", "192.0.0.1", "IETF protocol assignments 192.0.0.0/24"),
    Target("reserved", "198.18.0.1", "benchmarking 198.18.0.0/15, often used inside data centres"),
    Target("reserved", "240.0.0.1", "reserved 240.0.0.0/4"),
    Target("reserved", "192.88.99.1", "former 6to4 relay anycast 192.88.99.0/24 (RFC 7526)"),
    Target("documentation", "192.0.2.1", "documentation TEST-NET-1 192.0.2.0/24 (RFC 5737)"),
    Target("documentation", "198.51.100.1", "documentation TEST-NET-2 198.51.100.0/24"),
    Target("documentation", "203.0.113.1", "documentation TEST-NET-3 203.0.113.0/24"),
)

# The IPv4 addresses whose IPv6 spellings are tried: one per dangerous range.
EMBEDDED_IPV4 = ("0.0.0.0", "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1", "169.254.169.254")

IPV6_NATIVE: tuple[Target, ...] = (
    Target("unspecified", "::", "IPv6 unspecified"),
    Target("loopback", "::1", "IPv6 loopback"),
    Target("link-local", "fe80::1", "IPv6 link-local fe80::/10"),
    Target("private", "fc00::1", "unique local fc00::/7"),
    Target("private", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "unique local, end of fc00::/7"),
    Target("metadata", "fd00:ec2::254", "cloud metadata service over IPv6 (AWS)"),
    Target("private", "fec0::1", "site-local fec0::/10 (deprecated, still routed by some)"),
    Target("multicast", "ff02::1", "IPv6 multicast all-nodes"),
    Target("multicast", "ff05::c", "IPv6 multicast SSDP, site scope"),
    Target("documentation", "2001:db8::1", "documentation 2001:db8::/32 (RFC 3849)"),
    Target("documentation", "3fff::1", "documentation 3fff::/20 (RFC 9637)"),
    Target("reserved", "2001:2::1", "benchmarking 2001:2::/48 (RFC 5180), often used inside labs"),
    Target("reserved", "100::1", "discard-only 100::/64 (RFC 6666)"),
    Target("reserved", "5f00::1", "SRv6 segment identifiers 5f00::/16 (RFC 9602)"),
)


def _ipv4_category(ipv4: str) -> str:
    for target in IPV4_TARGETS:
        if target.address == ipv4:
            return target.category
    raise KeyError(ipv4)


def spellings(ipv4: str) -> list[tuple[str, str]]:
    """The IPv6 forms that carry ipv4, as (address, form name).

    IPv4-mapped ::ffff:a.b.c.d (RFC 4291 §2.5.5.2), IPv4-compatible
    ::a.b.c.d (§2.5.5.1), IPv4-translated ::ffff:0:a.b.c.d (RFC 2765),
    NAT64 64:ff9b::/96 (RFC 6052) and its local-use 64:ff9b:1::/48 (RFC
    8215), 6to4 2002:AABB:CCDD:: (RFC 3056) and Teredo 2001::/32 with the
    address as both server and (inverted) client (RFC 4380 §4).
    """
    value = int(ipaddress.IPv4Address(ipv4))
    sixtofour = ipaddress.IPv6Address(0x2002 << 112 | value << 80 | 1)
    teredo = ipaddress.IPv6Address(0x2001_0000 << 96 | value << 64 | (value ^ 0xFFFFFFFF))
    return [
        (f"::ffff:{ipv4}", "IPv4-mapped"),
        (f"::{ipv4}", "IPv4-compatible"),
        (f"::ffff:0:{ipv4}", "IPv4-translated"),
        (f"64:ff9b::{ipv4}", "NAT64"),
        (f"64:ff9b:1::{ipv4}", "local-use NAT64"),
        (str(sixtofour), "6to4"),
        (str(teredo), "Teredo"),
    ]


def _ipv6_embedded() -> tuple[Target, ...]:
    targets, seen = [], {ipaddress.ip_address(t.address) for t in IPV6_NATIVE}
    for ipv4 in EMBEDDED_IPV4:
        for address, form in spellings(ipv4):
            if ipaddress.ip_address(address) not in seen:
                seen.add(ipaddress.ip_address(address))
                targets.append(Target(_ipv4_category(ipv4), address, f"{form} {ipv4}"))
    return tuple(targets)


IPV6_TARGETS: tuple[Target, ...] = IPV6_NATIVE + _ipv6_embedded()
TARGETS: tuple[Target, ...] = IPV4_TARGETS + IPV6_TARGETS
