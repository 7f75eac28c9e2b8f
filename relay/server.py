"""The TURN server core (RFC 8656), over an injected clock and relay ports.

``TurnServer.handle`` takes a decoded request, the client's five-tuple and a
callable that sends to the client, and returns the response bytes. It
checks the request's credentials (``relay.server_auth``, RFC 8489 §9.2.4)
and hands it to its method's handler, which walks the numbered steps of its
RFC section: ``relay.server_allocate`` (Allocate, Refresh; RFC 8656 §7, §8,
RFC 6062 §5.1), ``relay.server_permissions`` (CreatePermission, ChannelBind;
RFC 8656 §10, §12) and ``relay.server_tcp`` (Connect, ConnectionBind; RFC
6062 §5.2, §5.4). The handlers are functions over this core; it keeps the
allocations, their operator-facing records and the helpers they share.

The relay sockets come from an injected ``RelayPorts``-like object (its
``open`` binds a relayed transport address, or raises ``NoRelayPort``), so
this module does no I/O of its own and runs on ``task.Clock`` in tests.
"""

from collections import Counter
from dataclasses import dataclass, field

from rendezvous.stun import Attr, Class, CodecError, Error, Message, Method
from rendezvous.stun.addresses import Address, address_text
from rendezvous.stun.replies import error_response, unknown_required

from .allocation import Allocation, family_of
from .allocation_log import AllocationLog
from .credentials import Credentials
from .limits import RateLimiter
from .nonces import Nonces
from .peer_policy import PeerPolicy, Reach
from .quotas import AllocationCounts, SharedAllocationCounts
from .server_allocate import NoRelayPort, allocate, refresh
from .server_auth import Auth, authenticate
from .server_permissions import Refused, channel_bind, create_permission
from .server_tcp import connect, connection_bind

__all__ = ["NoRelayPort", "RelayPolicy", "TurnServer"]

_AUTH_ATTRS = {
    Attr.USERNAME, Attr.USERHASH, Attr.REALM, Attr.NONCE, Attr.MESSAGE_INTEGRITY,
    Attr.MESSAGE_INTEGRITY_SHA256, Attr.PASSWORD_ALGORITHM,
}
_UNDERSTOOD = {
    Method.ALLOCATE: _AUTH_ATTRS | {
        Attr.REQUESTED_TRANSPORT, Attr.LIFETIME, Attr.REQUESTED_ADDRESS_FAMILY,
        Attr.EVEN_PORT, Attr.RESERVATION_TOKEN, Attr.DONT_FRAGMENT,
    },
    Method.REFRESH: _AUTH_ATTRS | {Attr.LIFETIME, Attr.REQUESTED_ADDRESS_FAMILY},
    Method.CREATE_PERMISSION: _AUTH_ATTRS | {Attr.XOR_PEER_ADDRESS},
    Method.CHANNEL_BIND: _AUTH_ATTRS | {Attr.XOR_PEER_ADDRESS, Attr.CHANNEL_NUMBER},
    Method.CONNECT: _AUTH_ATTRS | {Attr.XOR_PEER_ADDRESS},
    Method.CONNECTION_BIND: _AUTH_ATTRS | {Attr.CONNECTION_ID},
}
_HANDLERS = {  # method -> handler(server, msg, five_tuple, send or leg, auth, now)
    Method.ALLOCATE: allocate,
    Method.REFRESH: refresh,
    Method.CREATE_PERMISSION: create_permission,
    Method.CHANNEL_BIND: channel_bind,
    Method.CONNECT: connect,
    Method.CONNECTION_BIND: connection_bind,
}


@dataclass
class RelayPolicy:
    """What the operator allows: lifetimes, quotas and limits."""

    realm: str = "txrendezvous"
    default_lifetime_seconds: int = 600
    max_lifetime_seconds: int = 3600
    nonce_lifetime_seconds: int = 600
    user_quota: int = 0  # allocations per user; 0 = unlimited
    total_quota: int = 0  # allocations in all; 0 = unlimited
    max_permissions: int = 1000  # per allocation
    max_channels: int = 1000  # per allocation (of 4096 numbers)
    max_bps: int = 0  # bytes/s per allocation; 0 = unlimited
    expire_with_credential: bool = False
    unauthorized_burst: int = 100  # 401 answers per source before limiting
    unauthorized_per_second: float = 20.0
    allocation_log_rate: int = 20  # allocation made/ended lines a second, one by one; 0 = all (relay.allocation_log)
    families: frozenset = field(default_factory=lambda: frozenset({4}))


class TurnServer:
    """Allocations of one relay process and the requests that change them."""

    def __init__(
        self,
        policy: RelayPolicy,
        credentials: Credentials,
        peers: PeerPolicy,
        ports,
        clock,
        nonces: Nonces | None = None,
        software: bytes | None = None,
        tcp=None,
    ) -> None:
        self.policy = policy
        self.credentials = credentials
        self.peers = peers
        self.ports = ports
        self.clock = clock
        self.nonces = nonces or Nonces(policy.nonce_lifetime_seconds)
        self.software = software
        self.tcp = tcp  # a relay.tcp_relay.TcpRelay for RFC 6062, or None
        self.draining = False  # set by relay.drain: no new allocations
        self.alternate: Address | None = None  # ALTERNATE-SERVER while draining
        self.allocations: dict[tuple, Allocation] = {}
        # Allocates waiting for a reserved relay socket from another worker: five-tuple -> transaction id.
        self.pending: dict[tuple, bytes] = {}
        # Operator-facing identity of each allocation: five-tuple -> (id, created at).
        self.id_prefix = "0"  # the worker index, so an id names its process
        self.records: dict[tuple, tuple[str, float]] = {}
        self.by_id: dict[str, tuple] = {}
        # Live allocations for the quotas; rendezvous.node.relay_tap shares them across workers.
        self.counts: AllocationCounts | SharedAllocationCounts = AllocationCounts()
        self.counters: Counter[str] = Counter()
        # Relayed traffic of deleted allocations; live ones keep their own.
        self._relayed_closed = [0, 0, 0, 0]
        self._limiter = RateLimiter(policy.unauthorized_burst, policy.unauthorized_per_second)
        self.allocation_log = AllocationLog(policy.allocation_log_rate, clock)

    # -- entry points ----------------------------------------------------

    def handle(self, msg: Message, five_tuple: tuple, send, leg=None) -> bytes | None:
        """Process one STUN message from a client; the response bytes or None.

        send writes to the client; leg is the TCP/TLS connection object (for
        RFC 6062 ConnectionBind, which turns it into a data connection). An
        Allocate whose RESERVATION-TOKEN another worker holds is answered
        later, through send, when the relay socket arrives.
        """
        if msg.cls != Class.REQUEST:  # Send indications take the data path (Allocation.send_indication)
            return None
        self.counters["requests"] += 1
        handler = _HANDLERS.get(msg.method)
        if handler is None:
            return self._error(msg, Error.BAD_REQUEST, "Unsupported method")
        unknown = unknown_required(msg, _UNDERSTOOD[msg.method])
        if unknown:
            return self._error(msg, Error.UNKNOWN_ATTRIBUTE, unknown=unknown)
        now = self.clock.seconds()
        auth = authenticate(self, msg, five_tuple, now)
        if not isinstance(auth, Auth):
            return auth
        try:
            if handler is connection_bind:
                return handler(self, msg, five_tuple, leg, auth, now)
            return handler(self, msg, five_tuple, send, auth, now)
        except CodecError as e:
            return self._error(msg, Error.BAD_REQUEST, str(e), auth)
        except Refused as e:
            return self._error(msg, e.code, e.reason, auth)

    def connection_lost(self, five_tuple: tuple) -> None:
        """A TCP/TLS client connection closed: its allocation goes with it."""
        self.pending.pop(five_tuple, None)
        allocation = self.allocations.get(five_tuple)
        if allocation is not None:
            self._delete(allocation, "connection closed")

    def expire(self, now: float) -> None:
        """Remove expired allocations, permissions and channels (call each second)."""
        counts = self.counts
        for allocation in list(self.allocations.values()):
            if allocation.expires_at <= now:
                self._delete(allocation, "expired")
                continue
            allocation.expire(now)
            for peer in [p for p in allocation.relayed_peers
                         if not counts.relayed_live(family_of(p[0]), p[1], allocation.tcp)]:
                allocation.revoke(peer)
        self.ports.expire(now)
        self.allocation_log.summarize(now, len(self.allocations))

    def stop(self) -> None:
        for allocation in list(self.allocations.values()):
            self._delete(allocation, "stopped")
        self.allocation_log.summarize(self.clock.seconds(), 0, at_once=True)

    # -- shared by the handlers (relay.server_allocate, _permissions, _tcp) --

    def _owned(self, msg, five_tuple, auth: Auth) -> Allocation | bytes:
        """The five-tuple's allocation, or the 437/441 error response."""
        allocation = self.allocations.get(five_tuple)
        if allocation is None:
            return self._error(msg, Error.ALLOCATION_MISMATCH, auth=auth)
        if allocation.username != auth.username:
            return self._error(msg, Error.WRONG_CREDENTIALS, auth=auth)
        allocation.auth = auth
        return allocation

    def _reach(self, allocation: Allocation, peers: list[Address], endpoint: bool = False) -> list[Reach]:
        """What each peer is to the relay, or raise Refused: 403 (a denied peer) or 443 (family).

        With endpoint (ChannelBind, Connect: the request is for that transport
        address), a relayed address of this relay must be held by a live
        allocation, of any worker, for the allocation's transport.
        """
        reaches = []
        for peer in peers:
            if family_of(peer[0]) not in allocation.relays:
                raise Refused(Error.PEER_ADDRESS_FAMILY_MISMATCH)
            reach = self._endpoint_reach(peer, allocation.tcp) if endpoint else self.peers.reach(*peer)
            if reach is Reach.DENIED:
                self.counters["forbidden_peer"] += 1
                raise Refused(Error.FORBIDDEN, f"Peer {peer[0]} not allowed")
            reaches.append(reach)
        return reaches

    def _endpoint_reach(self, peer: Address, tcp: bool) -> Reach:
        """What one transport address is to the relay, a relayed one DENIED unless a live allocation holds it."""
        reach = self.peers.reach(*peer)
        if reach is Reach.RELAYED and not self.counts.relayed_live(family_of(peer[0]), peer[1], tcp):
            return Reach.DENIED
        return reach

    @staticmethod
    def _permit(allocation: Allocation, peer: Address, reach: Reach, now: float, endpoint: bool = False) -> None:
        """Install the permission for peer that _reach decided on (RFC 8656 §9), with endpoint also
        for its transport address at a host of the relay's own."""
        if reach is Reach.HOST:
            allocation.permit(peer[0], now)
            return
        allocation.permit_own(peer[0], now, peer[1] if endpoint else None)
        if endpoint and reach is Reach.RELAYED:
            allocation.relayed_peers.add(peer)

    def _hold_relayed(self, allocation: Allocation, held: bool) -> None:
        """Mark the allocation's relayed addresses live (or no longer) for every worker's _reach."""
        for family, relay in allocation.relays.items():
            self.counts.hold_relayed(family, relay.address[1], allocation.tcp, held)

    def relayed_totals(self) -> tuple[int, int, int, int]:
        """(packets, bytes) to peers, then (packets, bytes) to clients, since start."""
        totals = list(self._relayed_closed)
        for a in self.allocations.values():
            totals[0] += a.packets_out
            totals[1] += a.bytes_out
            totals[2] += a.packets_in
            totals[3] += a.bytes_in
        return tuple(totals)

    # -- the operator's view (relay.admin) ---------------------------------

    def describe(self, allocation: Allocation, now: float) -> dict:
        """What an operator sees of one allocation (no keys, no credentials)."""
        allocation_id, created = self.records.get(allocation.five_tuple, ("?", now))
        transport, client, _ = allocation.five_tuple
        return {
            "id": allocation_id,
            "user": allocation.username,
            "client": address_text(client),
            "transport": transport,
            "tcp_relay": allocation.tcp,
            "relayed": [address_text(r.address) for r in allocation.relays.values()],
            "age_seconds": round(now - created, 1),
            "lifetime_left_seconds": round(max(0.0, allocation.expires_at - now), 1),
            "permissions": allocation.permitted_hosts(),
            "channels": len(allocation.channels),
            "bytes_to_peer": allocation.bytes_out,
            "bytes_to_client": allocation.bytes_in,
            "packets_to_peer": allocation.packets_out,
            "packets_to_client": allocation.packets_in,
        }

    def end(self, allocation_id: str) -> bool:
        """Free the allocation with this id (an operator's call); False if there is none."""
        allocation = self.allocations.get(self.by_id.get(allocation_id))
        if allocation is None:
            return False
        self._delete(allocation, "ended by an operator")
        return True

    def _delete(self, allocation: Allocation, reason: str) -> None:
        if self.allocations.pop(allocation.five_tuple, None) is None:
            return
        allocation_id, _ = self.records.pop(allocation.five_tuple, ("?", 0))
        self.by_id.pop(allocation_id, None)
        self.allocation_log.ended(allocation_id, allocation, reason)
        closed = self._relayed_closed
        closed[0] += allocation.packets_out
        closed[1] += allocation.bytes_out
        closed[2] += allocation.packets_in
        closed[3] += allocation.bytes_in
        self.counts.release(allocation.username)
        self._hold_relayed(allocation, False)
        allocation.close()

    def _error(self, msg: Message, code: int, reason: str | None = None, auth: Auth | None = None,
               unknown: list[int] | None = None) -> bytes:
        self.counters[f"error_{code}"] += 1
        response = error_response(msg, code, reason, unknown)
        return self._sign(response, auth) if auth else self._encode(response)

    def _sign(self, response: Message, auth: Auth) -> bytes:
        if self.software:
            response.add(Attr.SOFTWARE, self.software)
        return auth.sign(response)

    def _encode(self, response: Message) -> bytes:
        if self.software:
            response.add(Attr.SOFTWARE, self.software)
        return response.encode()
