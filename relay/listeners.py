"""Twisted adapters for the client-facing STUN/TURN ports (UDP, TCP, TLS).

Thin by design: the Binding core (``rendezvous.stun.binding``) and the TURN
core (``relay.server``) decide; these classes move bytes. On every port the
first byte tells ChannelData (first bits 01, RFC 8656 §12) from STUN; STUN
Binding goes to the Binding core, every other method to TURN. UDP endpoints
know each other so a reply can leave from the endpoint the Binding core names
(RFC 5780 CHANGE-REQUEST). A malformed stream closes only its connection.
"""

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from rendezvous.stun import CodecError, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.binding import BindingServer
from rendezvous.stun.framing import StreamFramer
from rendezvous.wire.streams import send_at_once

from .datagrams import Outbox, StreamOutbox, read_loop, read_pass, set_buffers
from .server import TurnServer
from .server_fast import answer as answer_fast

log = Logger()

IDLE_TIMEOUT_SECONDS = 300
# Room for bursts on the client-facing UDP sockets (the kernel default of
# ~208 KiB holds only a few hundred datagrams); capped by net.core.rmem_max
# unless the process may force it.
UDP_BUFFER_BYTES = 4 * 1024 * 1024
_SEND_INDICATION = 0x00  # first byte of a Send indication (type 0x0016)


class UdpEndpoints:
    """The server's client-facing UDP sockets by local address."""

    def __init__(self, binding: BindingServer, turn: TurnServer | None) -> None:
        self.binding = binding
        self.turn = turn
        self.by_address: dict[Address, "ServerDatagramProtocol"] = {}

    def protocol(self, local: Address) -> "ServerDatagramProtocol":
        protocol = ServerDatagramProtocol(self, local)
        self.by_address[local] = protocol
        return protocol


class ServerDatagramProtocol(DatagramProtocol):
    """One client-facing UDP socket.

    The data path (ChannelData and Send indications from clients with an
    allocation) finds the allocation by the client's address in ``routes``,
    filled on a client's first packet and emptied by ``Allocation.close``,
    and never decodes a STUN message.
    """

    noisy = False

    def __init__(self, endpoints: UdpEndpoints, local: Address) -> None:
        self.endpoints = endpoints
        self.local = local
        self.turn = endpoints.turn
        self.routes: dict = {}  # client address -> Allocation

    def startProtocol(self) -> None:
        set_buffers(self.transport.socket, UDP_BUFFER_BYTES)
        self.outbox = Outbox(self.transport.socket)
        binding = self.endpoints.binding
        # Plain Binding requests are answered, and routed ChannelData relayed, in C within the read pass
        # (relay/_binding.c, relay/_route.c).
        # TURN requests are handed to answer from C, their responses sent from C (relay/_mmsg.c).
        turn = self.turn is not None
        read_loop(self.transport, self.datagramReceived, binding.plain_answer_tail(self.local),
                  binding.count_fast_answers, self.routes if turn else None, self.answer if turn else None)

    def datagramReceived(self, data: bytes, addr) -> None:
        if data and self.turn is not None:
            first = data[0]
            if 0x40 <= first < 0x80 or (first == _SEND_INDICATION and data[1:2] == b"\x16"):
                allocation = self.routes.get(addr)
                if allocation is None:
                    allocation = self.turn.allocations.get(("udp", addr[:2], self.local))
                    if allocation is None:
                        return
                    allocation.route(self.routes, addr)
                if first:
                    allocation.channel_to_peer(data)
                else:
                    allocation.send_indication(data)
                return
        self._control(data, addr[:2])

    def answer(self, data: bytes, addr: Address) -> bytes | None:
        """The response to a TURN request that relay.server_fast answers (b"": none), or None: the request
        goes on to the TURN core. Read in C, the request is asked here first and the response sent from C
        (``read_loop``); an exception is logged, and the request not answered, as the read pass would."""
        try:
            return answer_fast(self.turn, data, ("udp", addr, self.local), self.outbox.sender)
        except Exception:
            log.failure("answering {addr}", addr=addr)
            return b""

    def _control(self, data: bytes, addr: Address) -> None:
        """A STUN message: TURN requests to the TURN core (a live allocation's common ones answered by
        relay.server_fast), the rest to the Binding core."""
        turn = self.turn
        if turn is not None:
            response = self.answer(data, addr)
            if response is not None:
                if response:  # b"": no answer (a rate-limited 401)
                    self.outbox.write(response, addr)
                return
        binding = self.endpoints.binding
        request = binding.decode(data)
        if request is None:
            return
        if turn is not None and request.method != Method.BINDING:
            response = turn.handle(request, ("udp", addr, self.local), self.outbox.sender(addr))
            if response is not None:
                self.outbox.write(response, addr)
            return
        reply = binding.answer(request, addr, self.local, datagram=True)
        if reply is None:
            return
        sender = self.endpoints.by_address.get(reply.source)
        if sender is None or sender.transport is None:
            log.warn("no socket bound for {source}", source=reply.source)
            return
        sender._write(reply.data, reply.destination)

    def _write(self, data: bytes, destination: Address) -> None:
        """Answer through the socket's ``Outbox``: within a read pass it leaves with the pass's
        sendmmsg; an ICMP-induced error on a connectionless socket is dropped, as UDP may."""
        self.outbox.write(data, destination)


class ServerStreamProtocol(Protocol, TimeoutMixin):
    """One TCP or TLS client connection carrying STUN, TURN and ChannelData."""

    def __init__(self, factory: "ServerStreamFactory") -> None:
        self.factory = factory
        self.framer = StreamFramer()
        self.pipe = None  # the peer connection this data connection is spliced to (RFC 6062)
        self.moved = False  # handed to another worker with its ConnectionBind (relay.handoff)
        self.later: list[bytes] = []  # complete frames read after the request being handled
        self.allocation = None  # this connection's, once the data path has looked it up

    def connectionMade(self) -> None:
        self.setTimeout(IDLE_TIMEOUT_SECONDS)
        peer = self.transport.getPeer()
        self.five_tuple = (self.factory.transport_name, (peer.host, peer.port), self.factory.local)
        self.outbox = StreamOutbox(self.transport)  # its allocation's way to the client
        send_at_once(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.transport.write(data)
            return
        # A read pass: what the frames relay to peers leaves in one sendmmsg per relay socket.
        read_pass(lambda: self._frames(data))

    def _frames(self, data: bytes) -> None:
        self.resetTimeout()
        factory = self.factory
        try:
            frames = self.framer.feed(data)
        except CodecError as e:
            factory.binding.counters["malformed_streams"] += 1
            log.debug("closing {peer}: {error}", peer=self.five_tuple[1], error=e)
            self.transport.loseConnection()
            return
        turn = factory.turn
        for index, frame in enumerate(frames):
            first = frame[0]
            if turn is not None and (first >= 0x40 or (first == _SEND_INDICATION and frame[1] == 0x16)):
                allocation = self.allocation
                if allocation is None or allocation.closed:
                    allocation = self.allocation = turn.allocations.get(self.five_tuple)
                if allocation is not None:
                    if first:
                        allocation.channel_to_peer(frame)
                    else:
                        allocation.send_indication(frame)
                continue
            if first >= 0x40:
                continue
            request = factory.binding.decode(frame)
            if request is None:
                continue
            if turn is not None and request.method != Method.BINDING:
                self.later = frames[index + 1:]
                response = turn.handle(request, self.five_tuple, self.outbox.write, self)
                if self.pipe is not None or self.moved:
                    # Spliced by ConnectionBind (or moved with it): what
                    # follows is the client's data, in the order it came.
                    rest = self.rest()
                    if rest and self.pipe is not None:
                        self.pipe.transport.write(rest)
                    return
                # An allocation's lifetime, not the idle timer, governs a
                # connection that carries one (RFC 8656 §3.1).
                self.setTimeout(None if self.five_tuple in turn.allocations else IDLE_TIMEOUT_SECONDS)
            else:
                reply = factory.binding.answer(request, self.five_tuple[1], factory.local, datagram=False)
                response = reply.data if reply else None
            if response is not None:
                self.transport.write(response)

    def splice(self, connection, response: bytes) -> None:
        """Answer ConnectionBind, then relay raw bytes with connection (RFC 6062 §5.4)."""
        self.transport.write(response)
        self.setTimeout(None)
        self.pipe = connection
        self.transport.registerProducer(connection.transport, True)
        connection.transport.registerProducer(self.transport, True)
        connection.bind(self)

    def rest(self) -> bytes:
        """What the client sent after the request being handled (frames and a partial one), once."""
        rest = b"".join(self.later) + self.framer.take()
        self.later = []
        return rest

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if self.pipe is not None:
            self.pipe.transport.loseConnection()
        if self.factory.turn is not None and hasattr(self, "five_tuple"):
            # RFC 8656 §3.1: an allocation over TCP/TLS lives as long as its
            # connection.
            self.factory.turn.connection_lost(self.five_tuple)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()


class ServerStreamFactory(Factory):
    """Makes a ServerStreamProtocol per connection on one local endpoint."""

    noisy = False

    def __init__(self, binding: BindingServer, turn: TurnServer | None, local: Address, transport_name: str) -> None:
        self.binding = binding
        self.turn = turn
        self.local = local
        self.transport_name = transport_name

    def buildProtocol(self, addr) -> ServerStreamProtocol:
        return ServerStreamProtocol(self)
