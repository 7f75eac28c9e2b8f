"""Twisted adapters between sockets and the STUN server core.

Thin by design: decode and policy live in ``rendezvous.binding``; these
classes move bytes. UDP endpoints know each other so a reply can leave from
the endpoint the core names (RFC 5780 CHANGE-REQUEST). Streams are cut into
frames by ``StreamFramer``; a malformed stream closes only its connection.
"""

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from .binding import BindingServer
from .stun import CodecError
from .stun.addresses import Address
from .stun.framing import StreamFramer

log = Logger()

IDLE_TIMEOUT_SECONDS = 300


class UdpEndpoints:
    """The server's UDP sockets by local address, so any can send a reply."""

    def __init__(self, server: BindingServer) -> None:
        self.server = server
        self.by_address: dict[Address, "StunDatagramProtocol"] = {}

    def protocol(self, local: Address) -> "StunDatagramProtocol":
        protocol = StunDatagramProtocol(self, local)
        self.by_address[local] = protocol
        return protocol


class StunDatagramProtocol(DatagramProtocol):
    """One UDP socket of the server."""

    noisy = False

    def __init__(self, endpoints: UdpEndpoints, local: Address) -> None:
        self.endpoints = endpoints
        self.local = local

    def datagramReceived(self, data: bytes, addr) -> None:
        reply = self.endpoints.server.handle_datagram(data, addr[:2], self.local)
        if reply is None:
            return
        sender = self.endpoints.by_address.get(reply.source)
        if sender is None or sender.transport is None:
            log.warn("no socket bound for {source}", source=reply.source)
            return
        try:
            sender.transport.write(reply.data, reply.destination)
        except OSError as e:
            # An ICMP-induced error on a connectionless socket must not
            # stop the server.
            log.debug("send to {destination} failed: {error}", destination=reply.destination, error=e)


class StunStreamProtocol(Protocol, TimeoutMixin):
    """One TCP or TLS connection carrying STUN messages."""

    def __init__(self, server: BindingServer, local: Address) -> None:
        self.server = server
        self.local = local
        self.framer = StreamFramer()

    def connectionMade(self) -> None:
        self.setTimeout(IDLE_TIMEOUT_SECONDS)
        peer = self.transport.getPeer()
        self.peer = (peer.host, peer.port)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        try:
            frames = self.framer.feed(data)
        except CodecError as e:
            self.server.counters["malformed_streams"] += 1
            log.debug("closing {peer}: {error}", peer=self.peer, error=e)
            self.transport.loseConnection()
            return
        for frame in frames:
            response = self.server.handle_stream_message(frame, self.peer, self.local)
            if response is not None:
                self.transport.write(response)

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()


class StunStreamFactory(Factory):
    """Makes a StunStreamProtocol per connection on one local endpoint."""

    noisy = False

    def __init__(self, server: BindingServer, local: Address) -> None:
        self.server = server
        self.local = local

    def buildProtocol(self, addr) -> StunStreamProtocol:
        protocol = StunStreamProtocol(self.server, self.local)
        protocol.factory = self
        return protocol
