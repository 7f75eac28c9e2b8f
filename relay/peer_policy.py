"""Which peers a relay may send to: deny by default, operator ranges override.

RFC 8656 §21.2.3 and §19 (security: a relay must not be turned against the
operator's own network). Denied by default: unspecified, loopback,
link-local, private (RFC 1918, ULA), shared/CGN (100.64.0.0/10), multicast,
broadcast, documentation, benchmarking and reserved ranges, the relay's own
addresses (except its relayed addresses at ports of the relay range, so two
allocations on one relay can reach each other), and every IPv6 form that embeds one of these IPv4 addresses:
IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64
(64:ff9b::/96), 6to4 (2002::/16) and Teredo (2001::/32).

Operator rules (``--allow-peer`` / ``--deny-peer``) win over the defaults;
among operator rules the longest matching prefix wins, deny on a tie.
"""

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_DENIED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the common forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def denied_by_default(address: IPAddress) -> bool:
    """True for addresses a relay must not reach unless the operator allows it."""
    if address.version == 4:
        return any(address in network for network in _V4_DENIED)
    inner = embedded_ipv4(address)
    if inner is not None:
        return True if address.teredo is not None else denied_by_default(inner)
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_link_local
        or address.is_site_local
    )


class PeerPolicy:
    """Decides whether a peer address may be given a permission or channel."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        own_addresses: Iterable[str] = (),
        relayed_addresses: Iterable[str] = (),
        relay_ports: tuple[int, int] | None = None,
    ) -> None:
        self.rules: list[tuple[Network, bool]] = [
            (ipaddress.ip_network(n, strict=False), True) for n in allow
        ] + [(ipaddress.ip_network(n, strict=False), False) for n in deny]
        self.own = {ipaddress.ip_address(a) for a in own_addresses}
        self.relayed = {ipaddress.ip_address(a) for a in relayed_addresses} if relay_ports else set()
        self.relay_ports = relay_ports
        # The data path asks about these hosts' ports (strings, as peers arrive): each
        # maps to the operator rules' verdict on it, or None when the port decides.
        self.port_checked = {str(a): self._operator_verdict(a) for a in self.relayed}

    def allowed(self, host: str, port: int | None = None) -> bool:
        """Whether host (at port, when the request names one) may be a peer.

        The relay's own relayed addresses are peers only at relay-range ports:
        a permission to one is asked for with the peer's full address, and
        the data path checks each Send's port.
        """
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        verdict = self._operator_verdict(address)
        if verdict is not None:
            return verdict
        if address in self.relayed:
            low, high = self.relay_ports
            return port is not None and low <= port <= high
        if address in self.own:
            return False
        if address.version == 6 and (inner := embedded_ipv4(address)) is not None and inner in self.own:
            return False
        return not denied_by_default(address)

    def relayed_peer_allowed(self, host: str, port: int) -> bool:
        """``allowed(host, port)`` for a host in ``port_checked``, without parsing it: the data path's check."""
        verdict = self.port_checked[host]
        if verdict is not None:
            return verdict
        low, high = self.relay_ports
        return low <= port <= high

    def _operator_verdict(self, address: IPAddress) -> bool | None:
        """What --allow-peer / --deny-peer say of address (longest prefix, deny on a tie), or None."""
        best: tuple[int, bool] | None = None
        for network, verdict in self.rules:
            if address.version == network.version and address in network:
                key = (network.prefixlen, not verdict)
                if best is None or key > best:
                    best = key
        return None if best is None else not best[1]
