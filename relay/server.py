"""The TURN server core (RFC 8656), over an injected clock and relay ports.

``TurnServer.handle`` takes a decoded request, the client's five-tuple and a
callable that sends to the client, and returns the response bytes. Each
handler walks the numbered steps of its RFC section. Long-term credential
checks follow RFC 8489 §9.2.4; nonces are stateless (``relay.nonces``) and
401 answers are rate limited per source so a spoofed flood costs neither
memory nor much bandwidth.

The relay sockets come from an injected ``RelayPorts``-like object (its
``open`` binds a relayed transport address), so this module does no I/O of
its own and runs on ``task.Clock`` in tests.
"""

import secrets
from collections import Counter
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rendezvous.stun import Attr, Class, CodecError, Error, Message, Method, PasswordAlgorithm
from rendezvous.stun.addresses import Address, address_text
from rendezvous.stun.attributes import (
    decode_address_family,
    decode_even_port,
    decode_password_algorithm,
    decode_password_algorithms,
    decode_requested_transport,
    decode_reservation_token,
    decode_text,
    decode_uint16,
    decode_uint32,
    encode_address_error_code,
    encode_password_algorithms,
    encode_uint32,
    USERNAME_MAX_BYTES,
)
from rendezvous.stun.constants import AddressFamily
from rendezvous.stun.framing import CHANNEL_MAX, CHANNEL_MIN
from rendezvous.stun.replies import error_response, success_response, unknown_required

from .allocation import Allocation, TokenBucket, family_of
from .credentials import Credentials, Keys
from .limits import RateLimiter
from .nonces import Nonces
from .peer_policy import PeerPolicy
from .quotas import AllocationCounts, SharedAllocationCounts

log = Logger()

UDP = 17
TCP = 6
PASSWORD_ALGORITHMS = [(PasswordAlgorithm.MD5, b""), (PasswordAlgorithm.SHA256, b"")]
_PASSWORD_ALGORITHMS_VALUE = encode_password_algorithms(PASSWORD_ALGORITHMS)

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


class NoRelayPort(Exception):
    """No relayed transport address could be bound (answered with 508)."""


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
    families: frozenset = field(default_factory=lambda: frozenset({4}))


@dataclass
class _Auth:
    username: str
    keys: Keys
    algorithm: int
    sha256_mac: bool

    def sign(self, response: Message) -> bytes:
        key = self.keys.for_algorithm(self.algorithm)
        if self.sha256_mac:
            return response.encode(integrity_sha256_key=key)
        return response.encode(integrity_key=key)


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
        self._handlers = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
            Method.CONNECT: self._connect,
            Method.CONNECTION_BIND: self._connection_bind,
        }

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
        handler = self._handlers.get(msg.method)
        if handler is None:
            return self._error(msg, Error.BAD_REQUEST, "Unsupported method")
        unknown = unknown_required(msg, _UNDERSTOOD[msg.method])
        if unknown:
            return self._error(msg, Error.UNKNOWN_ATTRIBUTE, unknown=unknown)
        now = self.clock.seconds()
        auth = self._authenticate(msg, five_tuple, now)
        if not isinstance(auth, _Auth):
            return auth
        try:
            if handler == self._connection_bind:
                return handler(msg, five_tuple, leg, auth, now)
            return handler(msg, five_tuple, send, auth, now)
        except CodecError as e:
            return self._error(msg, Error.BAD_REQUEST, str(e), auth)

    def connection_lost(self, five_tuple: tuple) -> None:
        """A TCP/TLS client connection closed: its allocation goes with it."""
        self.pending.pop(five_tuple, None)
        allocation = self.allocations.get(five_tuple)
        if allocation is not None:
            self._delete(allocation, "connection closed")

    def expire(self, now: float) -> None:
        """Remove expired allocations, permissions and channels (call each second)."""
        for allocation in list(self.allocations.values()):
            if allocation.expires_at <= now:
                self._delete(allocation, "expired")
            else:
                allocation.expire(now)
        self.ports.expire(now)

    def stop(self) -> None:
        for allocation in list(self.allocations.values()):
            self._delete(allocation, "stopped")

    # -- authentication (RFC 8489 §9.2.4) ---------------------------------

    def _challenge(self, msg: Message, code: int, client_ip: str, now: float) -> bytes:
        response = error_response(msg, code)
        response.add(Attr.REALM, self.policy.realm.encode("utf-8"))
        response.add(Attr.NONCE, self.nonces.issue(client_ip, now).encode("ascii"))
        response.add(Attr.PASSWORD_ALGORITHMS, _PASSWORD_ALGORITHMS_VALUE)
        return self._encode(response)

    def _authenticate(self, msg: Message, five_tuple: tuple, now: float):
        client_ip = five_tuple[1][0]
        has_mac = Attr.MESSAGE_INTEGRITY in msg or Attr.MESSAGE_INTEGRITY_SHA256 in msg
        if not has_mac:
            return self._unauthorized(msg, client_ip, now)
        username_value, userhash, realm, nonce = (
            msg.get(Attr.USERNAME), msg.get(Attr.USERHASH), msg.get(Attr.REALM), msg.get(Attr.NONCE)
        )
        if (username_value is None and userhash is None) or realm is None or nonce is None:
            return self._error(msg, Error.BAD_REQUEST, "USERNAME, REALM and NONCE are required")
        try:
            nonce_text = decode_text(nonce)
            realm_text = decode_text(realm)
            username = (
                decode_text(username_value, USERNAME_MAX_BYTES)
                if username_value is not None
                else self.credentials.username_for_hash(userhash)
            )
            algorithm = self._algorithm(msg)
        except CodecError as e:
            return self._error(msg, Error.BAD_REQUEST, str(e))
        if self.nonces.check(nonce_text, client_ip, now) != "valid":
            self.counters["stale_nonce"] += 1
            return self._challenge(msg, Error.STALE_NONCE, client_ip, now)
        if algorithm is None:
            return self._error(msg, Error.BAD_REQUEST, "PASSWORD-ALGORITHM does not match")
        if username is None or realm_text != self.policy.realm:
            return self._unauthorized(msg, client_ip, now)
        for keys in self.credentials.candidates(username, realm_text, now):
            if msg.check_integrity(keys.for_algorithm(algorithm)):
                return _Auth(username, keys, algorithm, Attr.MESSAGE_INTEGRITY_SHA256 in msg)
        return self._unauthorized(msg, client_ip, now)

    def _algorithm(self, msg: Message) -> int | None:
        """The password algorithm the request uses (RFC 8489 §9.2.4 downgrade checks)."""
        offered, chosen = msg.get(Attr.PASSWORD_ALGORITHMS), msg.get(Attr.PASSWORD_ALGORITHM)
        if offered is None and chosen is None:
            return PasswordAlgorithm.MD5
        if offered is None or chosen is None:
            return None
        if decode_password_algorithms(offered) != PASSWORD_ALGORITHMS:
            return None
        algorithm, _ = decode_password_algorithm(chosen)
        return algorithm if (algorithm, b"") in PASSWORD_ALGORITHMS else None

    def _unauthorized(self, msg: Message, client_ip: str, now: float) -> bytes | None:
        if not self._limiter.allow(client_ip, now):
            self.counters["unauthorized_limited"] += 1
            return None
        self.counters["unauthorized"] += 1
        return self._challenge(msg, Error.UNAUTHENTICATED, client_ip, now)

    # -- Allocate (RFC 8656 §7.2) -----------------------------------------

    def _draining(self, msg, auth: _Auth) -> bytes:
        """300 Try Alternate with ALTERNATE-SERVER (RFC 8489 §10), or 508 without one."""
        if self.alternate is None:
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "Draining", auth)
        response = error_response(msg, Error.TRY_ALTERNATE)
        response.add_address(Attr.ALTERNATE_SERVER, self.alternate)
        return self._sign(response, auth)

    def _allocate(self, msg, five_tuple, send, auth: _Auth, now) -> bytes:
        policy = self.policy
        if five_tuple in self.pending:
            # Its reserved relay socket is on its way from another worker:
            # the answer goes out when it arrives; a retransmission waits.
            return None
        existing = self.allocations.get(five_tuple)
        if self.draining and existing is None:
            return self._draining(msg, auth)
        # 2. An existing allocation on this five-tuple: a retransmission
        #    gets the cached success response, anything else 437.
        if existing is not None:
            if existing.transaction_id == msg.transaction_id and existing.response:
                return existing.response
            return self._error(msg, Error.ALLOCATION_MISMATCH, auth=auth)
        # 3. REQUESTED-TRANSPORT must be present and UDP.
        transport = msg.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            return self._error(msg, Error.BAD_REQUEST, "REQUESTED-TRANSPORT missing", auth)
        protocol = decode_requested_transport(transport)
        if protocol == TCP and self.tcp is not None and five_tuple[0] != "udp":
            return self._allocate_tcp(msg, five_tuple, send, auth, now)
        if protocol != UDP:
            return self._error(msg, Error.UNSUPPORTED_TRANSPORT_PROTOCOL, auth=auth)
        # 4. DONT-FRAGMENT is honoured by the relay sockets (IP_PMTUDISC_DO).
        dont_fragment = Attr.DONT_FRAGMENT in msg
        # 5-7. RESERVATION-TOKEN, EVEN-PORT and the address families.
        token = msg.get(Attr.RESERVATION_TOKEN)
        even = msg.get(Attr.EVEN_PORT)
        requested = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if token is not None and (even is not None or requested is not None or additional is not None):
            return self._error(msg, Error.BAD_REQUEST, "RESERVATION-TOKEN with EVEN-PORT or a family", auth)
        if requested is not None and additional is not None:
            return self._error(msg, Error.BAD_REQUEST, "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY", auth)
        if even is not None and additional is not None:
            return self._error(msg, Error.BAD_REQUEST, "EVEN-PORT with ADDITIONAL-ADDRESS-FAMILY", auth)
        family = 6 if requested is not None and decode_address_family(requested) == AddressFamily.IPV6 else 4
        want = [family]
        if additional is not None:
            if decode_address_family(additional) != AddressFamily.IPV6:
                return self._error(msg, Error.BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6", auth)
            want = [4, 6]
        if family not in policy.families:
            return self._error(msg, Error.ADDRESS_FAMILY_NOT_SUPPORTED, auth=auth)
        # 8. Quotas: the allocation is counted now, and uncounted if it is not made.
        refused = self._quota(msg, auth)
        if refused:
            return refused
        # 9. Relayed transport addresses.
        relays = {}
        reservation = None
        try:
            if token is not None:
                relay = self.ports.take_reserved(decode_reservation_token(token))
                if isinstance(relay, Deferred):
                    self.pending[five_tuple] = msg.transaction_id
                    relay.addCallback(self._reserved_arrived, msg, five_tuple, send, auth)
                    return None
                if relay is None:
                    self.counts.release(auth.username)
                    return self._error(msg, Error.INSUFFICIENT_CAPACITY, "Unknown RESERVATION-TOKEN", auth)
                relays[family_of(relay.address[0])] = relay
            else:
                reserve_next = decode_even_port(even) if even is not None else False
                relay, reservation = self.ports.open(
                    family, even=even is not None, reserve_next=reserve_next, dont_fragment=dont_fragment
                )
                relays[family] = relay
            for extra in want[1:]:
                if extra in policy.families:
                    relays[extra], _ = self.ports.open(extra, dont_fragment=dont_fragment)
        except NoRelayPort:
            for relay in relays.values():
                relay.close()
            self.counts.release(auth.username)
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "No relay port available", auth)
        return self._allocated(msg, five_tuple, send, auth, now, relays, want, reservation)

    def _reserved_arrived(self, relay, msg, five_tuple, send, auth: _Auth) -> None:
        """Finish an Allocate whose RESERVATION-TOKEN another worker held (relay None: it had none)."""
        connected = self.pending.pop(five_tuple, None) is not None  # not, if the client left meanwhile
        refused = None
        if relay is None:
            refused = self._error(msg, Error.INSUFFICIENT_CAPACITY, "Unknown RESERVATION-TOKEN", auth)
        elif self.draining:
            refused = self._draining(msg, auth)
        if refused is not None or not connected:
            self.counts.release(auth.username)  # counted at step 8, never made
            if relay is not None:
                relay.close()
            if connected:
                send(refused)
            return
        family = family_of(relay.address[0])
        send(self._allocated(msg, five_tuple, send, auth, self.clock.seconds(), {family: relay}, [family], None))

    def _allocated(self, msg, five_tuple, send, auth: _Auth, now, relays: dict, want: list,
                   reservation: bytes | None) -> bytes:
        """Install the allocation over relays and sign the success response (RFC 8656 §7.2 step 11)."""
        allocation, lifetime = self._install(msg, five_tuple, send, auth, now, relays)
        response = success_response(msg)
        for relay_family in want:
            if relay_family in relays:
                response.add_address(Attr.XOR_RELAYED_ADDRESS, relays[relay_family].address)
            else:
                response.add(
                    Attr.ADDRESS_ERROR_CODE,
                    encode_address_error_code(AddressFamily.IPV6, Error.ADDRESS_FAMILY_NOT_SUPPORTED,
                                              "Address Family not Supported"),
                )
        response.add(Attr.LIFETIME, encode_uint32(lifetime))
        if reservation is not None:
            response.add(Attr.RESERVATION_TOKEN, reservation)
        response.add_address(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
        allocation.response = self._sign(response, auth)
        return allocation.response

    def _quota(self, msg: Message, auth: _Auth) -> bytes | None:
        """Count the allocation, or 486 past the per-user quota, 508 past the total (RFC 8656 §7.2 step 8)."""
        refused = self.counts.claim(auth.username, self.policy.user_quota, self.policy.total_quota)
        if refused == Error.ALLOCATION_QUOTA_REACHED:
            return self._error(msg, Error.ALLOCATION_QUOTA_REACHED, auth=auth)
        if refused is not None:
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "Server at capacity", auth)
        return None

    def _install(self, msg, five_tuple, send, auth: _Auth, now, relays) -> tuple[Allocation, int]:
        """Create and register an allocation over relays; returns it and its lifetime."""
        lifetime = self._lifetime(msg, auth, now)
        bucket = TokenBucket(self.policy.max_bps, self.clock) if self.policy.max_bps else None
        allocation = Allocation(
            five_tuple, msg.transaction_id, auth.username, auth.keys, auth.algorithm, relays,
            now + lifetime, send, auth.keys.expires_at, bucket, self._peer_allowed,
        )
        for relay in relays.values():
            relay.allocation = allocation
        self.allocations[five_tuple] = allocation
        self.counters["allocations"] += 1
        allocation_id = f"{self.id_prefix}-{secrets.token_hex(6)}"
        self.records[five_tuple] = (allocation_id, now)
        self.by_id[allocation_id] = five_tuple
        log.info("allocation {allocation} for {user} from {client} over {transport}, relayed {relayed}, "
                 "{lifetime} s", allocation=allocation_id, user=auth.username, client=address_text(five_tuple[1]),
                 transport=five_tuple[0], relayed=[address_text(r.address) for r in relays.values()],
                 lifetime=lifetime)
        return allocation, lifetime

    # -- RFC 6062 TCP relaying ----------------------------------------------

    def _allocate_tcp(self, msg, five_tuple, send, auth: _Auth, now) -> bytes:
        """Allocate with REQUESTED-TRANSPORT TCP over a TCP/TLS control connection (RFC 6062 §5.1)."""
        for attr_type in (Attr.DONT_FRAGMENT, Attr.RESERVATION_TOKEN, Attr.EVEN_PORT, Attr.ADDITIONAL_ADDRESS_FAMILY):
            if attr_type in msg:
                return self._error(msg, Error.BAD_REQUEST, f"{Attr(attr_type).name} with a TCP allocation", auth)
        requested = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        family = 6 if requested is not None and decode_address_family(requested) == AddressFamily.IPV6 else 4
        if family not in self.policy.families:
            return self._error(msg, Error.ADDRESS_FAMILY_NOT_SUPPORTED, auth=auth)
        refused = self._quota(msg, auth)
        if refused:
            return refused
        try:
            endpoint = self.tcp.open(family)
        except OSError:
            self.counts.release(auth.username)
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "No relay port available", auth)
        allocation, lifetime = self._install(msg, five_tuple, send, auth, now, {family: endpoint})
        allocation.tcp = True
        response = success_response(msg)
        response.add_address(Attr.XOR_RELAYED_ADDRESS, endpoint.address)
        response.add(Attr.LIFETIME, encode_uint32(lifetime))
        response.add_address(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
        allocation.response = self._sign(response, auth)
        return allocation.response

    def _connect(self, msg, five_tuple, send, auth: _Auth, now) -> bytes | None:
        """Connect (RFC 6062 §5.2): open a TCP connection to the peer; answer when it is up."""
        allocation = self._owned(msg, five_tuple, auth)
        if isinstance(allocation, bytes):
            return allocation
        if not allocation.tcp:
            return self._error(msg, Error.BAD_REQUEST, "Connect needs a TCP allocation", auth)
        peers = msg.addresses(Attr.XOR_PEER_ADDRESS)
        if len(peers) != 1:
            return self._error(msg, Error.BAD_REQUEST, "one XOR-PEER-ADDRESS required", auth)
        peer = peers[0]
        refused = self._check_peers(msg, allocation, peers, auth)
        if refused:
            return refused
        endpoint = next(iter(allocation.relays.values()))
        if any(c.peer == peer for c in endpoint.connections.values()):
            return self._error(msg, Error.CONNECTION_ALREADY_EXISTS, auth=auth)
        allocation.permit(peer[0], now)

        def connected(connection_id: int) -> None:
            response = success_response(msg)
            response.add(Attr.CONNECTION_ID, encode_uint32(connection_id))
            send(self._sign(response, auth))

        def failed(reason) -> None:
            send(self._error(msg, Error.CONNECTION_TIMEOUT_OR_FAILURE, auth=auth))

        self.tcp.connect(endpoint, peer).addCallbacks(connected, failed)
        return None

    def _connection_bind(self, msg, five_tuple, leg, auth: _Auth, now) -> bytes:
        """ConnectionBind (RFC 6062 §5.4): make this new connection the data leg of a peer connection."""
        if five_tuple in self.allocations or leg is None or self.tcp is None:
            return self._error(msg, Error.BAD_REQUEST, "ConnectionBind needs a fresh TCP connection", auth)
        value = msg.get(Attr.CONNECTION_ID)
        if value is None:
            return self._error(msg, Error.BAD_REQUEST, "CONNECTION-ID missing", auth)
        connection_id = decode_uint32(value)
        owner = self.tcp.owner_elsewhere(connection_id)
        if owner is not None:
            # Another worker holds the peer connection: it answers instead.
            if self.tcp.pass_connection(owner, leg, msg.raw):
                return None
            return self._error(msg, Error.BAD_REQUEST, "Unknown CONNECTION-ID", auth)
        connection = self.tcp.take(connection_id)
        allocation = connection.endpoint.allocation if connection else None
        if allocation is None:
            return self._error(msg, Error.BAD_REQUEST, "Unknown CONNECTION-ID", auth)
        if allocation.username != auth.username:
            return self._error(msg, Error.WRONG_CREDENTIALS, auth=auth)
        response = self._sign(success_response(msg), auth)
        allocation_id, _ = self.records.get(allocation.five_tuple, ("?", now))
        log.info("connection {connection} to {peer} of allocation {allocation} bound from {client}",
                 connection=connection.connection_id, peer=address_text(connection.peer),
                 allocation=allocation_id, client=address_text(five_tuple[1]))
        leg.splice(connection, response)
        return None

    def _lifetime(self, msg: Message, auth: _Auth, now: float) -> int:
        """RFC 8656 §7.2 step 10 / §8: requested, clamped to [default, max]."""
        policy = self.policy
        requested = msg.get(Attr.LIFETIME)
        lifetime = policy.default_lifetime_seconds
        if requested is not None:
            lifetime = max(policy.default_lifetime_seconds, min(decode_uint32(requested), policy.max_lifetime_seconds))
        if policy.expire_with_credential and auth.keys.expires_at is not None:
            lifetime = min(lifetime, max(0, int(auth.keys.expires_at - now)))
        return lifetime

    # -- Refresh (RFC 8656 §8) --------------------------------------------

    def _refresh(self, msg, five_tuple, send, auth: _Auth, now) -> bytes:
        allocation = self._owned(msg, five_tuple, auth)
        if isinstance(allocation, bytes):
            return allocation
        requested_family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if requested_family is not None:
            family = 6 if decode_address_family(requested_family) == AddressFamily.IPV6 else 4
            if family not in allocation.relays:
                return self._error(msg, Error.PEER_ADDRESS_FAMILY_MISMATCH, auth=auth)
        requested = msg.get(Attr.LIFETIME)
        if requested is not None and decode_uint32(requested) == 0:
            self._delete(allocation, "refreshed to 0")
            lifetime = 0
        else:
            lifetime = self._lifetime(msg, auth, now)
            allocation.expires_at = now + lifetime
        response = success_response(msg)
        response.add(Attr.LIFETIME, encode_uint32(lifetime))
        return self._sign(response, auth)

    # -- CreatePermission (RFC 8656 §10) -----------------------------------

    def _create_permission(self, msg, five_tuple, send, auth: _Auth, now) -> bytes:
        allocation = self._owned(msg, five_tuple, auth)
        if isinstance(allocation, bytes):
            return allocation
        peers = msg.addresses(Attr.XOR_PEER_ADDRESS)
        if not peers:
            return self._error(msg, Error.BAD_REQUEST, "XOR-PEER-ADDRESS missing", auth)
        refused = self._check_peers(msg, allocation, peers, auth)
        if refused:
            return refused
        new = {host for host, _ in peers if host not in allocation.permissions}
        if len(allocation.permissions) + len(new) > self.policy.max_permissions:
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many permissions", auth)
        for host, _ in peers:
            allocation.permit(host, now)
        return self._sign(success_response(msg), auth)

    # -- ChannelBind (RFC 8656 §12.1) --------------------------------------

    def _channel_bind(self, msg, five_tuple, send, auth: _Auth, now) -> bytes:
        allocation = self._owned(msg, five_tuple, auth)
        if isinstance(allocation, bytes):
            return allocation
        if allocation.tcp:
            return self._error(msg, Error.BAD_REQUEST, "no channels on a TCP allocation", auth)
        number_value, peers = msg.get(Attr.CHANNEL_NUMBER), msg.addresses(Attr.XOR_PEER_ADDRESS)
        if number_value is None or len(peers) != 1:
            return self._error(msg, Error.BAD_REQUEST, "CHANNEL-NUMBER and one XOR-PEER-ADDRESS required", auth)
        number = decode_uint16(number_value)
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            return self._error(msg, Error.BAD_REQUEST, "channel number out of range", auth)
        refused = self._check_peers(msg, allocation, peers, auth)
        if refused:
            return refused
        if number not in allocation.channels and len(allocation.channels) >= self.policy.max_channels:
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many channels", auth)
        if peers[0][0] not in allocation.permissions and len(allocation.permissions) >= self.policy.max_permissions:
            return self._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many permissions", auth)
        reason = allocation.bind_channel(number, peers[0], now)
        if reason:
            return self._error(msg, Error.BAD_REQUEST, reason, auth)
        return self._sign(success_response(msg), auth)

    # -- helpers ----------------------------------------------------------

    def _owned(self, msg, five_tuple, auth: _Auth) -> Allocation | bytes:
        """The five-tuple's allocation, or the 437/441 error response."""
        allocation = self.allocations.get(five_tuple)
        if allocation is None:
            return self._error(msg, Error.ALLOCATION_MISMATCH, auth=auth)
        if allocation.username != auth.username:
            return self._error(msg, Error.WRONG_CREDENTIALS, auth=auth)
        return allocation

    def _peer_allowed(self, peer: Address) -> bool:
        """The data path's check of a Send to one of the relay's own addresses (its port)."""
        return peer[0] not in self.peers.port_checked or self.peers.relayed_peer_allowed(*peer)

    def _check_peers(self, msg, allocation: Allocation, peers: list[Address], auth) -> bytes | None:
        """403 for a denied peer, 443 for a family mismatch."""
        for host, port in peers:
            if family_of(host) not in allocation.relays:
                return self._error(msg, Error.PEER_ADDRESS_FAMILY_MISMATCH, auth=auth)
            if not self.peers.allowed(host, port):
                self.counters["forbidden_peer"] += 1
                return self._error(msg, Error.FORBIDDEN, f"Peer {host} not allowed", auth)
        return None

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
            "permissions": len(allocation.permissions),
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
        log.info("allocation {allocation} of {user} from {client} ended: {reason}", allocation=allocation_id,
                 user=allocation.username, client=address_text(allocation.five_tuple[1]), reason=reason)
        closed = self._relayed_closed
        closed[0] += allocation.packets_out
        closed[1] += allocation.bytes_out
        closed[2] += allocation.packets_in
        closed[3] += allocation.bytes_in
        self.counts.release(allocation.username)
        allocation.close()

    def _error(self, msg: Message, code: int, reason: str | None = None, auth: _Auth | None = None,
               unknown: list[int] | None = None) -> bytes:
        self.counters[f"error_{code}"] += 1
        response = error_response(msg, code, reason, unknown)
        return self._sign(response, auth) if auth else self._encode(response)

    def _sign(self, response: Message, auth: _Auth) -> bytes:
        if self.software:
            response.add(Attr.SOFTWARE, self.software)
        return auth.sign(response)

    def _encode(self, response: Message) -> bytes:
        if self.software:
            response.add(Attr.SOFTWARE, self.software)
        return response.encode()

