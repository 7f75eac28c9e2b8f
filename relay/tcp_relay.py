"""TURN relaying of TCP to peers (RFC 6062).

A TCP allocation owns a listening socket on its relayed transport address
(§5.1). Connect (§5.2) opens a TCP connection from that same address to a
peer; a peer connecting in is announced with a ConnectionAttempt indication
(§5.3). Either way the connection waits, not read from, for the client to
open a data connection and send ConnectionBind with its CONNECTION-ID (§5.4);
from then on the two connections are spliced byte for byte. A connection
not bound within 30 s is closed (§5.3).

The relayed listening socket and outgoing sockets share the address with
SO_REUSEADDR and SO_REUSEPORT, so peers see connections from the address
they were told about. With several workers, a CONNECTION-ID names the
worker that holds its peer connection, and a ConnectionBind reaching another
worker is handed over (``relay.handoff``).
"""

import os
import random
import socket

from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.attributes import encode_uint32

from .handoff import OWNER_SHIFT, TlsProxy, give_up_connection, hand_off, owner_of

log = Logger()

CONNECTION_TIMEOUT_SECONDS = 30
_ATTEMPTS = 64


def _socket(family: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def connection_attempt(peer: Address, connection_id: int) -> bytes:
    """A ConnectionAttempt indication (RFC 6062 §5.3)."""
    msg = Message(Method.CONNECTION_ATTEMPT, Class.INDICATION)
    msg.add_address(Attr.XOR_PEER_ADDRESS, peer)
    msg.add(Attr.CONNECTION_ID, encode_uint32(connection_id))
    return msg.encode()


class PeerConnection(Protocol):
    """Our side of one TCP connection with a peer."""

    def __init__(self, relay: "TcpRelay", endpoint: "TcpRelayEndpoint", peer: Address, incoming: bool) -> None:
        self.relay = relay
        self.endpoint = endpoint
        self.peer = peer
        self.incoming = incoming
        self.connection_id: int | None = None
        self.partner = None  # the client's data connection once bound
        self.timer = None

    def connectionMade(self) -> None:
        # Nothing is read until the client binds a data connection.
        self.transport.pauseProducing()
        self.connection_id = self.relay.register(self)
        self.timer = self.relay.clock.callLater(CONNECTION_TIMEOUT_SECONDS, self._unbound_timeout)
        self.endpoint.connections[self.connection_id] = self
        allocation = self.endpoint.allocation
        if self.incoming and allocation is not None:
            allocation.send(connection_attempt(self.peer, self.connection_id))

    def _unbound_timeout(self) -> None:
        self.timer = None
        log.debug("connection {id} to {peer} not bound in time", id=self.connection_id, peer=self.peer)
        self.transport.abortConnection()

    def bind(self, partner) -> None:
        """Splice with the client's data connection and start reading."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.partner = partner
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.partner is not None:
            self.partner.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.relay.unregister(self.connection_id)
        self.endpoint.connections.pop(self.connection_id, None)
        if self.partner is not None:
            self.partner.transport.loseConnection()


class _IncomingFactory(Factory):
    """Accepts peers connecting to a relayed address, if they have a permission."""

    noisy = False

    def __init__(self, relay: "TcpRelay", endpoint: "TcpRelayEndpoint") -> None:
        self.relay = relay
        self.endpoint = endpoint

    def buildProtocol(self, addr):
        allocation = self.endpoint.allocation
        if allocation is None or not allocation.admits(addr.host):
            return None  # refused: the connection is closed at once
        return PeerConnection(self.relay, self.endpoint, (addr.host, addr.port), incoming=True)


class _OutgoingFactory(Factory):
    """Builds the one PeerConnection of a Connect request and keeps it."""

    noisy = False

    def __init__(self, relay: "TcpRelay", endpoint: "TcpRelayEndpoint", peer: Address) -> None:
        self.relay, self.endpoint, self.peer = relay, endpoint, peer
        self.connection: PeerConnection | None = None

    def buildProtocol(self, addr):
        self.connection = PeerConnection(self.relay, self.endpoint, self.peer, incoming=False)
        return self.connection


class _Built(Factory):
    """A factory handing out one protocol already made."""

    noisy = False

    def __init__(self, protocol) -> None:
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol


class TcpRelayEndpoint:
    """A TCP relayed transport address and its peer connections."""

    def __init__(self, relay: "TcpRelay", bound: Address, address: Address) -> None:
        self.relay = relay
        self.bound = bound
        self.address = address
        self.allocation = None
        self.port = None
        self.connections: dict[int, PeerConnection] = {}

    def write(self, data: bytes, peer: Address) -> None:
        """UDP-style relaying does not apply to a TCP allocation."""

    def close(self) -> None:
        self.allocation = None
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        for connection in list(self.connections.values()):
            connection.transport.loseConnection()


class TcpRelay:
    """Opens TCP relayed addresses and connections, and matches CONNECTION-IDs."""

    def __init__(self, reactor, ips: dict[int, str], low: int, high: int,
                 advertise: dict[int, str] | None = None) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.ips = ips
        self.low, self.high = low, high
        self.advertise = advertise or {}
        self.pending: dict[int, PeerConnection] = {}
        self.worker_index = 0  # the top byte of the CONNECTION-IDs made here
        self.handoff_paths: dict = {}  # other workers' handoff sockets by index (relay.handoff)
        self.listeners: dict = {}  # (ip, port) -> plain TCP client factory, for handed-off connections

    def open(self, family: int) -> TcpRelayEndpoint:
        """Listen on a free port of the range; raises OSError when none is free."""
        ip = self.ips[family]
        for _ in range(_ATTEMPTS):
            port = random.randint(self.low, self.high)
            sock = _socket(family)
            try:
                sock.bind((ip, port))
                sock.listen(64)
                sock.setblocking(False)
            except OSError:
                sock.close()
                continue
            endpoint = TcpRelayEndpoint(self, (ip, port), (self.advertise.get(family, ip), port))
            endpoint.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, _IncomingFactory(self, endpoint))
            sock.close()
            return endpoint
        raise OSError("no free TCP relay port")

    def connect(self, endpoint: TcpRelayEndpoint, peer: Address):
        """Connect from the relayed address to peer; fires with the CONNECTION-ID.

        The blocking connect runs in the reactor's thread pool, bounded by
        the RFC's 30 s; the connected socket is then handed to the reactor.
        """
        family = 6 if ":" in peer[0] else 4

        def blocking_connect() -> socket.socket:
            sock = _socket(family)
            try:
                sock.settimeout(CONNECTION_TIMEOUT_SECONDS)
                sock.bind(endpoint.bound)
                sock.connect(peer)
                sock.setblocking(False)
                return sock
            except OSError:
                sock.close()
                raise

        def connected(sock: socket.socket) -> int:
            factory = _OutgoingFactory(self, endpoint, peer)
            try:
                if endpoint.allocation is None:
                    raise OSError("allocation gone")
                self.reactor.adoptStreamConnection(sock.fileno(), sock.family, factory)
            finally:
                sock.close()
            # adoptStreamConnection has called connectionMade already.
            if factory.connection is None or factory.connection.connection_id is None:
                raise OSError("connection lost at once")
            return factory.connection.connection_id

        return threads.deferToThread(blocking_connect).addCallback(connected)

    def register(self, connection: PeerConnection) -> int:
        while True:
            connection_id = self.worker_index << OWNER_SHIFT | int.from_bytes(os.urandom(3), "big")
            if connection_id and connection_id not in self.pending:
                self.pending[connection_id] = connection
                return connection_id

    def unregister(self, connection_id: int | None) -> None:
        self.pending.pop(connection_id, None)

    def owner_elsewhere(self, connection_id: int) -> int | None:
        """The index of the other worker holding this CONNECTION-ID, or None if it is ours."""
        owner = owner_of(connection_id)
        return owner if owner != self.worker_index else None

    def pass_connection(self, owner: int, leg, raw: bytes) -> bool:
        """Hand leg, a plain TCP client connection, with raw (its ConnectionBind) to worker owner.

        False if it cannot move (TLS, an unknown worker, the owner not taking it).
        """
        path = self.handoff_paths.get(owner)
        if path is None:
            return False
        if leg.factory.transport_name == "tls":
            return self._pass_tls(path, owner, leg, raw)
        transport = leg.transport
        try:
            hand_off(path, transport.getHandle(), leg.factory.local, raw + leg.rest())
        except OSError as e:
            log.warn("cannot hand a ConnectionBind to worker {owner}: {error}", owner=owner, error=str(e))
            return False
        leg.moved = True
        # The owner holds the connection now: close only this process's descriptor.
        give_up_connection(transport)
        return True

    def _pass_tls(self, path, owner: int, leg, raw: bytes) -> bool:
        """Keep the TLS session here; the owner gets a unix socket pair's end and the plain bytes."""
        ours, theirs = socket.socketpair()
        try:
            hand_off(path, theirs, leg.factory.local, raw + leg.rest(), leg.five_tuple[1])
        except OSError as e:
            ours.close()
            log.warn("cannot hand a ConnectionBind to worker {owner}: {error}", owner=owner, error=str(e))
            return False
        finally:
            theirs.close()
        ours.setblocking(False)
        proxy = TlsProxy(leg)
        try:
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _Built(proxy))
        finally:
            ours.close()
        leg.pipe = proxy  # what the client sends from now on goes to the owner
        leg.setTimeout(None)
        return True

    def take(self, connection_id: int) -> PeerConnection | None:
        """The unbound connection with this id, once."""
        connection = self.pending.get(connection_id)
        if connection is None or connection.partner is not None:
            return None
        return connection
