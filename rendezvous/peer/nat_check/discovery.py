"""What the check asks beyond STUN: the NAT64 prefix through DNS64 (RFC 7050
§3, an AAAA query for ipv4only.arpa to the system's resolvers, read from
/etc/resolv.conf, with Twisted's own DNS client), and who answers along the
first hops of the IPv4 path (ICMP Time Exceeded, read from the socket's
error queue, IP_RECVERR: no raw socket, no root), which shows an AFTR.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from twisted.internet import defer, error, task
from twisted.names import client as dns_client
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSServerError, ResolverError

from rendezvous.peer.nat_check.probes import binding_request
from rendezvous.peer.nat_check.transition import WELL_KNOWN_NAME, nat64_prefixes
from rendezvous.stun.addresses import Address

RESOLV_CONF = Path("/etc/resolv.conf")
DNS_TIMEOUTS_SECONDS = (1, 2)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # Linux
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SO_EE_ORIGIN_ICMP = 2
ICMP_TIME_EXCEEDED = 11
# struct sock_extended_err: errno, origin, type, code, pad, info, data
_EXTENDED_ERR = struct.Struct("=IBBBBII")
HOPS_POLL_SECONDS = 0.05


def system_nameservers(path: Path = RESOLV_CONF) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of resolv.conf(5), as (address, 53)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    servers = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append((fields[1].partition("%")[0], dns.PORT))
    return servers


async def dns64_prefixes(reactor, servers: list[tuple[str, int]] | None = None) -> tuple[list[str], str | None]:
    """RFC 7050 §3: ask for ipv4only.arpa's AAAA records; (NAT64 prefixes, why none).

    A resolver without DNS64 answers with no AAAA record (the name has none),
    so an empty list with a reason is the usual answer off a NAT64 network.
    """
    servers = system_nameservers() if servers is None else servers
    if not servers:
        return [], "no DNS resolver configured"
    resolver = dns_client.Resolver(servers=servers, reactor=reactor)
    try:
        answers, _, _ = await resolver.lookupIPV6Address(WELL_KNOWN_NAME, timeout=DNS_TIMEOUTS_SECONDS)
    except DNSNameError:
        return [], f"{WELL_KNOWN_NAME} does not exist for the resolver"
    except (error.DNSLookupError, DNSServerError, DNSQueryRefusedError, ResolverError, error.TimeoutError,
            defer.TimeoutError, OSError) as e:
        return [], f"the DNS resolver gave no answer ({type(e).__name__})"
    aaaa = [socket.inet_ntop(socket.AF_INET6, a.payload.address) for a in answers if a.type == dns.AAAA]
    if not aaaa:
        return [], f"no AAAA record for {WELL_KNOWN_NAME}: no DNS64"
    prefixes = nat64_prefixes(aaaa)
    return prefixes, None if prefixes else f"AAAA records for {WELL_KNOWN_NAME} hold no well-known address"


async def ipv4_hops(reactor, server: Address, max_ttl: int = 3, wait_seconds: float = 1.0) -> list[str | None]:
    """Who sends ICMP Time Exceeded for a Binding request to server with TTL 1..max_ttl
    (None where nobody did within wait_seconds). One socket per TTL, so an error one
    probe earns (reported on the socket's next send) never stops another. Linux only
    (IP_RECVERR); [] elsewhere."""
    sockets = []
    hops: list[str | None] = [None] * max_ttl
    try:
        for ttl in range(1, max_ttl + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            except OSError:
                return []
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            try:
                sock.sendto(binding_request().encode(), server)
            except OSError:  # no route: no hop to learn
                pass
        deadline = reactor.seconds() + wait_seconds
        while True:
            for index, sock in enumerate(sockets):
                hops[index] = hops[index] or _time_exceeded_by(sock)
            if None not in hops or reactor.seconds() >= deadline:
                return hops
            await task.deferLater(reactor, HOPS_POLL_SECONDS, lambda: None)
    finally:
        for sock in sockets:
            sock.close()


def _time_exceeded_by(sock: socket.socket) -> str | None:
    """The sender (offender) of an ICMP Time Exceeded in the socket's error queue, if any."""
    while True:
        try:
            _, ancillary, _, _ = sock.recvmsg(512, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:  # nothing (more) queued
            return None
        for level, kind, value in ancillary:
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(value) < _EXTENDED_ERR.size + 8:
                continue
            _, origin, icmp_type, _, _, _, _ = _EXTENDED_ERR.unpack_from(value)
            if origin == SO_EE_ORIGIN_ICMP and icmp_type == ICMP_TIME_EXCEEDED:
                offender = value[_EXTENDED_ERR.size:]  # struct sockaddr_in
                return socket.inet_ntoa(offender[4:8])
