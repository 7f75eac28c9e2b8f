"""A TURN allocation on the node (RFC 8656), its transports raced (RFC 8305's racing, applied to TURN).

UDP and the transport and port signaling got through on (TLS on 443
behind a web-only firewall) start at once, the rest RELAY_STAGGER_SECONDS
apart; the first allocation wins and the others are closed as they come.
Each allocation is a dual one (RFC 8656 §7.1): the IPv4 relayed address,
which an IPv4-only peer reaches whichever family the allocation was made
over, and an IPv6 one beside it. A session's gathering runs the race, and
so does a logged-in client's spare allocation (``spare_relay``).
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred

from relay import client as turn_client
from rendezvous.peer.nat64 import Nat64, has_route
from rendezvous.stun.addresses import Address
from rendezvous.stun.constants import AddressFamily

RELAY_TRANSPORTS = ("udp", "tcp", "tls")
RELAY_TIMEOUT_SECONDS = 3.0
RELAY_STAGGER_SECONDS = 0.1  # between the starts of the TURN transports raced
RTO_SECONDS = 0.2

# attempt(technique, started, outcome, detail): how a transport that lost went (a session records it)
Attempt = Callable[[str, float, str, str], None]


def race(reactor, signaling, turn: dict, transports: tuple, tls: bool, tls_verify: bool, nat64: Nat64 | None,
         attempt: Attempt) -> Deferred:
    """Fires with (TurnClient, transport, relayed address) of the first allocation, or None."""
    targets = reachable(relay_targets(signaling, turn, transports, tls), has_route, nat64)
    won: Deferred = Deferred()
    left = [len(targets)]

    def start(transport: str, server: Address) -> None:
        if won.called:
            left[0] -= 1
            return
        Deferred.fromCoroutine(allocate(reactor, transport, server, turn, tls_verify, attempt)).addCallback(arrived)

    def arrived(result) -> None:
        left[0] -= 1
        if result is not None and won.called:
            result[0].close()  # a slower transport: the race is already won
        elif result is not None:
            won.callback(result)
        if not left[0] and not won.called:
            won.callback(None)

    own = ("tls" if tls else "tcp", tuple(signaling.server))
    delay = 0.0
    for transport, server in targets:
        reactor.callLater(delay, start, transport, server)
        if transport != "udp" or own not in targets:  # UDP and signaling's own way start together
            delay += RELAY_STAGGER_SECONDS
    if not targets:
        won.callback(None)
    return won


async def allocate(reactor, transport: str, server: Address, turn: dict, tls_verify: bool, attempt: Attempt):
    """(client, transport, relayed address) from one TURN server, or None (told to ``attempt``)."""
    started = reactor.seconds()
    try:
        client = await turn_client.connect(
            reactor, server, transport, username=turn["username"], password=turn["password"],
            realm=turn.get("realm"), tls_verify=tls_verify,
            connect_timeout_seconds=RELAY_TIMEOUT_SECONDS, rto_seconds=RTO_SECONDS, rc=3, rm=4,
        ).addTimeout(RELAY_TIMEOUT_SECONDS, reactor)
    except Exception as e:
        attempt(f"turn-{transport}", started, "failed", f"allocation: {e}")
        return None
    try:
        relayed = await client.allocate(additional_family=AddressFamily.IPV6).addTimeout(
            RELAY_TIMEOUT_SECONDS + 1, reactor)
    except Exception as e:
        client.close()
        attempt(f"turn-{transport}", started, "failed", f"allocation: {e}")
        return None
    return client, transport, relayed


def parse_turn_url(url: str) -> tuple[str, Address, str]:
    """RFC 7065: turn:host:port?transport=udp -> ("turn", (host, port), "udp")."""
    scheme, _, rest = url.partition(":")
    parts = urlsplit("//" + rest)
    transport = parse_qs(parts.query).get("transport", ["udp"])[0]
    port = parts.port or (5349 if scheme == "turns" else 3478)
    return scheme, (parts.hostname, port), "tls" if scheme == "turns" else transport


def reachable(targets: list[tuple[str, Address]], routable, nat64: Nat64 | None) -> list[tuple[str, Address]]:
    """The targets this host can reach (RFC 8305 §7.1): an IPv4 server without a route goes through
    ``nat64``, but only for a transport that has no server of a family reached natively (a dual-stack
    node's IPv6 address is better than a NAT64 in the way); without NAT64 it is left out."""
    native = {t for t, (host, _) in targets if ":" in host or routable(host)}
    found = []
    for transport, (host, port) in targets:
        if ":" in host or routable(host):
            found.append((transport, (host, port)))
        elif nat64 is not None and transport not in native:
            found.append((transport, nat64.to_ipv6((host, port))))
    return found


def relay_targets(signaling, turn: dict, transports: tuple, tls: bool) -> list[tuple[str, Address]]:
    """(transport, server) to race: UDP first, then the transport and port signaling reached,
    then TCP, then TLS."""
    targets = []
    for url in turn.get("urls") or []:
        try:
            _, server, transport = parse_turn_url(url)
        except ValueError:
            continue
        targets.append((transport, server))
    own = ("tls" if tls else "tcp", tuple(signaling.server))
    order = {"udp": 0, "own": 1, "tcp": 2, "tls": 3}
    ranked = sorted(set(targets) | {own}, key=lambda t: (order["own" if t == own else t[0]], t[1]))
    return [t for t in ranked if t[0] in transports]
