"""Reaching IPv4 addresses from an IPv6-only host through the network's NAT64 (RFC 6146).

A super node, a STUN or TURN server or a peer may be known only by an IPv4
address (a literal in the bootstrap list, a host cache entry, a candidate).
On a host with no IPv4 route, RFC 8305 §7.1 has the client find the
network's NAT64 prefix (RFC 7050 §3: the AAAA records DNS64 makes for
``ipv4only.arpa``) and put the IPv4 address under it (RFC 6052 §2.2), which
the NAT64 translates back. ``Nat64`` is that translation for one prefix:
``to_ipv6`` on the way out, ``to_ipv4`` for sources under the prefix on the
way in, so the layers above (ICE, STUN, TURN) keep seeing IPv4 addresses.
``discover`` decides whether an IPv4 address needs it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from relay.peer_policy import nat64_ipv4
from rendezvous.peer.nat_check.discovery import dns64_prefixes
from rendezvous.peer.nat_check.probes import local_ip_toward
from rendezvous.peer.nat_check.transition import synthesize
from rendezvous.stun.addresses import Address


@dataclass(frozen=True)
class Nat64:
    """The translation through one NAT64 prefix (``prefix/length``, an RFC 6052 length)."""

    prefix: str

    def __post_init__(self) -> None:
        synthesize(self.prefix, "192.0.0.170")  # ValueError for a length RFC 6052 does not allow

    def to_ipv6(self, address: Address) -> Address:
        """An IPv4 (ip, port) under the prefix; an IPv6 one as it is."""
        ip, port = address[:2]
        return (ip, port) if ":" in ip else (synthesize(self.prefix, ip), port)

    def to_ipv4(self, address: Address) -> Address:
        """An (ip, port) under the prefix as the IPv4 one it stands for; any other as it is."""
        ip, port = address[:2]
        if ":" not in ip:
            return ip, port
        network = ipaddress.IPv6Network(self.prefix)
        parsed = ipaddress.IPv6Address(ip.partition("%")[0])
        return (str(nat64_ipv4(parsed, network)), port) if parsed in network else (ip, port)


def has_route(ip: str) -> bool:
    """Whether the kernel routes to ip from here (no packet is sent)."""
    try:
        local_ip_toward((ip, 9))
    except OSError:
        return False
    return True


async def discover(reactor, ipv4: str, servers: list[tuple[str, int]] | None = None) -> Nat64 | None:
    """The NAT64 to reach ``ipv4`` through: None when this host routes IPv4 there itself, or when
    its DNS resolvers (``servers``, default resolv.conf's) know no NAT64 prefix (RFC 7050 §3; the
    first prefix found is used, as §3 allows)."""
    if has_route(ipv4):
        return None
    prefixes, _ = await dns64_prefixes(reactor, servers)
    return Nat64(prefixes[0]) if prefixes else None
