"""Twisted adapters for signaling: one connection, and the first-byte port demultiplexer.

``SignalingProtocol`` moves frames between a stream and ``SignalingNode``.
``DemuxFactory`` shares a TCP or TLS port between STUN/TURN, signaling and
HTTP: the first byte of a connection picks the protocol, which then owns
the connection.
"""

from twisted.application import service
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from rendezvous.node.signaling import Session, SignalingNode
from rendezvous.wire.streams import IDLE_TIMEOUT_SECONDS, PING_SECONDS, BoundedWrites, send_at_once
from rendezvous.wire.frames import FrameError, FrameReader, encode, is_signaling

log = Logger()

LOGIN_TIMEOUT_SECONDS = 30


class SignalingService(service.Service):
    """Pings every session each 30 s: keepalive, half-open detection and RTT."""

    def __init__(self, node: SignalingNode, clock) -> None:
        self.node = node
        self._loop = LoopingCall(self.ping_all)
        self._loop.clock = clock

    def ping_all(self) -> None:
        for session in list(self.node.sessions.values()):
            self.node.send_ping(session)

    def startService(self) -> None:
        super().startService()
        self._loop.start(PING_SECONDS, now=False)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        return super().stopService()


class SignalingProtocol(BoundedWrites, Protocol, TimeoutMixin):
    """One signaling connection.

    It registers as the transport's producer, so it learns when a client
    stops reading: a client that lets more than MAX_FRAMES_WHILE_PAUSED
    frames pile up is disconnected, which bounds what the node buffers.
    """

    def __init__(self, node: SignalingNode) -> None:
        self.node = node
        self.reader = FrameReader()
        self.session: Session | None = None
        self.closing = False
        self.given_up = False  # a bad frame header: nothing after it is read

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(send=self.send, close=self.close, address=(peer.host, peer.port))
        self.transport.registerProducer(self, True)
        send_at_once(self.transport)
        self.setTimeout(LOGIN_TIMEOUT_SECONDS)

    def close(self) -> None:
        self.closing = True
        # Over TLS, loseConnection waits for a registered producer to go
        # before it sends close_notify: without this a replaced or failing
        # session would stay open until the client hung up.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def send(self, message: dict) -> None:
        self.write_frame(encode(message), f"session {self.session.id}")

    def dataReceived(self, data: bytes) -> None:
        # Every whole frame before bad bytes is applied, whatever the TCP
        # segments were (the core answers them in order, even those that wait
        # for the account store); then bad-frame, and the stream is given up.
        for message in self.reader.feed(data):
            if self.closing or self.given_up:
                return
            self.given_up = isinstance(message, FrameError) and message.fatal
            self.node.receive(self.session, message)
        if self.session.user is not None and self.timeOut != IDLE_TIMEOUT_SECONDS:
            self.setTimeout(IDLE_TIMEOUT_SECONDS)  # logged in: from the login timeout to the idle one
        self.resetTimeout()

    def timeoutConnection(self) -> None:
        log.info("session {session} timed out", session=self.session.id)
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if self.session is not None:
            self.node.closed(self.session)


class SignalingFactory(Factory):
    noisy = False

    def __init__(self, node: SignalingNode) -> None:
        self.node = node

    def buildProtocol(self, addr) -> SignalingProtocol:
        return SignalingProtocol(self.node)


class _Demux(Protocol, TimeoutMixin):
    """Waits for the first byte, then hands the connection to the right protocol."""

    def __init__(self, factory: "DemuxFactory", addr) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: Protocol | None = None

    def connectionMade(self) -> None:
        self.setTimeout(LOGIN_TIMEOUT_SECONDS)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is None:
            self.setTimeout(None)
            self.inner = self.factory.choose(data[0]).buildProtocol(self.addr)
            self.inner.makeConnection(self.transport)
        self.inner.dataReceived(data)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DemuxFactory(Factory):
    """Serves STUN/TURN, signaling and (optionally) HTTP on one TCP or TLS port.

    STUN starts with 0b00, signaling with 0xF5, an HTTP request with an
    upper-case method name; a TURN client never opens with ChannelData.
    """

    noisy = False

    def __init__(self, stun: Factory, signaling: Factory, http: Factory | None = None) -> None:
        self.stun = stun
        self.signaling = signaling
        self.http = http

    def choose(self, first_byte: int) -> Factory:
        if is_signaling(first_byte):
            return self.signaling
        if self.http is not None and 0x41 <= first_byte <= 0x5A:
            return self.http
        return self.stun

    def buildProtocol(self, addr) -> _Demux:
        return _Demux(self, addr)
