"""Which peers a relay may send to: deny by default, operator ranges override.

RFC 8656 §21.2.3 and §19 (security: a relay must not be turned against the
operator's own network). Denied by default: unspecified, loopback,
link-local (169.254.0.0/16, fe80::/10), private (RFC 1918, ULA fc00::/7,
site-local fec0::/10), shared/CGN (100.64.0.0/10), multicast, broadcast,
documentation (RFC 5737, 2001:db8::/32, 3fff::/20), benchmarking, discard
(100::/64) and reserved ranges, the local-use NAT64 prefix 64:ff9b:1::/48
(RFC 8215: where its IPv4 address sits is the operator's choice), the
relay's own addresses (except its relayed addresses while a live allocation
holds them, so two allocations on one relay can reach each other), and
every IPv6 form that embeds one of these IPv4 addresses: IPv4-mapped
(::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (the well-known
64:ff9b::/96 and each ``--nat64-prefix`` of the operator, RFC 6052 §2.2),
6to4 (2002::/16) and Teredo (2001::/32). An address under a NAT64 prefix is
judged by the IPv4 address it carries: a public one is a peer, through the
NAT64.

Operator rules (``--allow-peer`` / ``--deny-peer``) win over the defaults;
among operator rules the longest matching prefix wins, deny on a tie. They
never open the relay's own endpoints: its listening ports (a wildcard
listener's on every local address), metrics, admin and echo ports, in every
spelling of their address. A host of the relay's own (``Reach.OWN``,
``Reach.RELAYED``) gets a permission of its own kind: the allocation decides
each transport address once (``relay.allocation``), so the data path still
asks only whether a key is present.
"""

import enum
import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

V4_DENIED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
]
# Named here rather than left to ipaddress.is_global, whose tables differ between Python versions.
V6_DENIED = [
    ipaddress.ip_network(n)
    for n in (
        "64:ff9b:1::/48", "100::/64", "2001:2::/48", "2001:db8::/32", "3fff::/20", "5f00::/16",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
]
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 6052 §2.2: the prefix lengths an IPv4-embedded IPv6 address may have.
NAT64_PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)
_COMPATIBLE = ipaddress.ip_network("::/96")


def nat64_ipv4(address: ipaddress.IPv6Address, prefix: ipaddress.IPv6Network) -> ipaddress.IPv4Address:
    """The IPv4 address embedded after prefix (RFC 6052 §2.2): bits 64-71 (the "u" octet) are skipped."""
    packed = address.packed
    if prefix.prefixlen == 96:
        return ipaddress.IPv4Address(packed[12:])
    without_u = packed[:8] + packed[9:]
    start = prefix.prefixlen // 8
    return ipaddress.IPv4Address(without_u[start:start + 4])


def embedded_ipv4(address: ipaddress.IPv6Address,
                  nat64: Sequence[ipaddress.IPv6Network] = ()) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the common forms or under a NAT64 prefix."""
    for prefix in (*nat64, NAT64_WELL_KNOWN):
        if address in prefix:
            return nat64_ipv4(address, prefix)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def denied_by_default(address: IPAddress, nat64: Sequence[ipaddress.IPv6Network] = ()) -> bool:
    """True for addresses a relay must not reach unless the operator allows it.

    nat64 are the operator's NAT64 prefixes (longest first), each judged by
    the IPv4 address it carries even inside a range denied otherwise.
    """
    if address.version == 4:
        return any(address in network for network in V4_DENIED)
    inner = embedded_ipv4(address, nat64)
    if inner is not None:
        return True if address.teredo is not None else denied_by_default(inner)
    return (
        any(address in network for network in V6_DENIED)
        or not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_link_local
        or address.is_site_local
    )


def nat64_prefixes(prefixes: Iterable[str]) -> tuple[ipaddress.IPv6Network, ...]:
    """The operator's NAT64 prefixes as networks, longest first (a more specific one decides)."""
    networks = {ipaddress.IPv6Network(p) for p in prefixes}
    return tuple(sorted(networks, key=lambda n: n.prefixlen, reverse=True))


class Reach(enum.Enum):
    """What a peer transport address is to the relay."""

    DENIED = "denied"  # 403; never sent to
    HOST = "host"  # an ordinary peer: a permission covers its IP, any port (RFC 8656 §9)
    OWN = "own"  # at a host of the relay's own that the operator allows, not one of its endpoints
    RELAYED = "relayed"  # at the relay's relayed IP: a peer only where a live allocation holds the port


def is_local_address(address: IPAddress) -> bool:
    """Whether address is one of this host's (a socket can be bound to it): what a wildcard listener hears on."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def _addresses(host: str) -> list[IPAddress]:
    """host's addresses: itself if it is one, else what it resolves to (a --metrics name such as localhost)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].partition("%")[0]) for info in found]


# Hosts whose parsed form and rule verdicts PeerPolicy remembers (a few hundred bytes each).
HOSTS_REMEMBERED = 1024


class PeerPolicy:
    """Decides whether a peer address may be given a permission or channel.

    What the rules say of a host alone is worked out once per host (parsing
    it and walking the ranges cost tens of µs) and remembered for the last
    ``HOSTS_REMEMBERED`` hosts, with whether it is one of the relay's own
    hosts and endpoints its configuration names; whether it is a local
    address (where wildcard listeners hear) is asked each time, since local
    addresses come and go. A reload makes a new PeerPolicy.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        own_addresses: Iterable[str] = (),
        relayed_addresses: Iterable[str] = (),
        relay_ports: tuple[int, int] | None = None,
        own_endpoints: Iterable[tuple[str, int]] = (),
        is_local: Callable[[IPAddress], bool] = is_local_address,
        nat64: Iterable[str] = (),
    ) -> None:
        self.rules: list[tuple[Network, bool]] = [
            (ipaddress.ip_network(n, strict=False), True) for n in allow
        ] + [(ipaddress.ip_network(n, strict=False), False) for n in deny]
        self.own = {ipaddress.ip_address(a) for a in own_addresses}
        self.relayed = {ipaddress.ip_address(a) for a in relayed_addresses} if relay_ports else set()
        self.relay_ports = relay_ports
        self.own_endpoints = frozenset((str(host), port) for host, port in own_endpoints)
        specific = {(address, port) for host, port in self.own_endpoints for address in _addresses(host)}
        # Ports listened on at a wildcard address: on every local address.
        self.wildcard_ports = {port for address, port in specific if address.is_unspecified}
        self.specific = {(address, port) for address, port in specific if not address.is_unspecified}
        self.own_hosts = self.own | self.relayed | {address for address, _ in self.specific}
        self.is_local = is_local
        self.nat64 = nat64_prefixes(nat64)
        self._host_facts = functools.lru_cache(maxsize=HOSTS_REMEMBERED)(self._facts)

    def reach(self, host: str, port: int) -> Reach:
        """What a permission towards host:port may cover, or DENIED."""
        facts = self._host_facts(host)
        if facts is None:
            return Reach.DENIED  # not an IP address, or 0.0.0.0 or :: (the kernel sends there as to loopback)
        forms, verdict, relayed, denied, own_host, listened = facts
        if not own_host and self.wildcard_ports:
            own_host = any(self.is_local(a) for a in forms)
        if port in listened or (own_host and port in self.wildcard_ports):
            return Reach.DENIED  # one of the relay's own endpoints, whatever --allow-peer says
        if verdict is not None:
            return Reach.DENIED if not verdict else Reach.OWN if own_host else Reach.HOST
        if relayed:
            return Reach.RELAYED
        if own_host or denied:
            return Reach.DENIED
        return Reach.HOST

    def _facts(self, host: str) -> tuple[tuple[IPAddress, ...], bool | None, bool, bool, bool, frozenset] | None:
        """What the rules say of host alone: its forms (itself and any IPv4 address it carries), the
        operator's verdict, whether it is a relayed address, whether it is denied by default, whether a
        form is one of the relay's own hosts named in its configuration, and the ports its listeners hear
        on at a form; None when it is no IP address or an unspecified one. Whether a form is a local
        address (what wildcard listeners hear on) changes, so reach asks that each time."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        inner = embedded_ipv4(address, self.nat64) if address.version == 6 else None
        forms = (address,) if inner is None else (address, inner)
        if any(a.is_unspecified for a in forms):
            return None
        listened = frozenset(port for a, port in self.specific if a in forms)
        return (forms, self._operator_verdict(address), address in self.relayed, denied_by_default(address, self.nat64),
                any(a in self.own_hosts for a in forms), listened)

    def _operator_verdict(self, address: IPAddress) -> bool | None:
        """What --allow-peer / --deny-peer say of address (longest prefix, deny on a tie), or None."""
        best: tuple[int, bool] | None = None
        for network, verdict in self.rules:
            if address.version == network.version and address in network:
                key = (network.prefixlen, not verdict)
                if best is None or key > best:
                    best = key
        return None if best is None else not best[1]
