"""TCP sockets that share one local port, and a STUN Binding over TCP from such a socket.

RFC 5382 §5 tests a NAT's TCP mapping by connecting from one local port to
several servers, and TCP hole punching (``tcp_punch``) connects and listens
on the port whose mapping it learned; both need every socket on that port
bound with SO_REUSEADDR and SO_REUSEPORT (Linux refuses a second bind to a
port with a listener unless both set SO_REUSEPORT). ``ReusePortConnector``
makes such client sockets, optionally with a small IP TTL for their SYN;
``StreamProbe`` sends one Binding request over the connection (RFC 8489
§6.2.2) and fires with the response.
"""

import socket
import struct

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol

from rendezvous.stun import CodecError, Message


def reuse_port(sock: socket.socket) -> None:
    """Let several sockets bind the same local port (a listener among them)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class ReusePortClient(tcp.Client):
    """A TCP client socket sharing its local port; the connector's ``ttl`` sets IP_TTL
    before the SYN (``default_ttl`` keeps the one to restore)."""

    default_ttl: int | None = None

    def createInternetSocket(self):
        s = super().createInternetSocket()
        reuse_port(s)
        if self.connector.ttl is not None:
            self.default_ttl = s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.connector.ttl)
        return s


class ReusePortConnector(tcp.Connector):
    """A connector whose sockets share the local port of ``bindAddress``."""

    def __init__(self, host, port, factory, timeout, bindAddress, reactor, ttl: int | None = None) -> None:
        super().__init__(host, port, factory, timeout, bindAddress, reactor)
        self.ttl = ttl

    def _makeTransport(self):
        return ReusePortClient(self.host, self.port, self.bindAddress, self, self.reactor)


class StreamProbe(Protocol):
    """Sends one Binding request over TCP and fires ``answered`` with the response."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.answered: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 20 and not self.answered.called:
            length = struct.unpack_from("!H", self.buffer, 2)[0]
            if len(self.buffer) >= 20 + length:
                try:
                    self.answered.callback(Message.decode(self.buffer[: 20 + length]))
                except CodecError as e:
                    self.answered.errback(e)
                self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.answered.called:
            self.answered.errback(reason)


class StreamProbeFactory(ClientFactory):
    def __init__(self, probe: StreamProbe) -> None:
        self.probe = probe

    def buildProtocol(self, addr):
        return self.probe

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.probe.answered.called:
            self.probe.answered.errback(reason)
