"""Opening a TurnClient's socket or connection: ``connect``, ``tls_options`` and the adapters.

``connect`` (re-exported by ``relay.client``, the front door) binds a UDP
socket or opens a TCP or TLS connection (RFC 8656 §3.1; TLS offers ALPN
"stun.turn", RFC 7443) and puts an adapter between it and a new
``TurnClient``. The adapter hands the client a write and a disconnect
callable (``_attach``), feeds it every datagram or stream frame from the
server (``_packet``) and tells it when the socket or connection is gone
(``_connection_lost``). Over TCP and TLS, messages and ChannelData are
framed by their own lengths (RFC 8489 §6.2.2, RFC 8656 §12.5).
"""

import ipaddress
import socket
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from rendezvous.stun import CodecError
from rendezvous.stun.addresses import Address
from rendezvous.stun.framing import StreamFramer
from rendezvous.wire.streams import send_at_once

from .datagrams import read_loop

log = Logger()  # twisted.logger: .warn, not .warning (hence the G010 noqa marks)

TRANSPORTS = ("udp", "tcp", "tls")
CLOSE_TIMEOUT_SECONDS = 3.0
ALPN_STUN_TURN = b"stun.turn"  # RFC 7443 §5


def connect(
    reactor: Any,
    server: Address,
    transport: str = "udp",
    *,
    username: str,
    password: str,
    realm: str | None = None,
    tls_verify: bool = True,
    tls_ca_file: str | None = None,
    tls_hostname: str | None = None,
    endpoint: Any = None,
    bind_ip: str | None = None,
    connect_timeout_seconds: float = 10.0,
    socket_buffer_bytes: int | None = None,
    **options: Any,
) -> Deferred:
    """Open a socket or connection to a TURN server; fires with a TurnClient.

    ``server`` is (host, port); a host name is resolved first. ``transport``
    is "udp", "tcp" or "tls" (TURN over TLS, RFC 8656 §3.1). For UDP a local
    socket is bound (to ``bind_ip``, default all addresses of the server's
    family, port 0) and connected to the server, so only its datagrams are
    read. For TCP and TLS an ``endpoint`` may be passed instead of letting
    this build one; TLS verification is described in :func:`tls_options`.
    ``socket_buffer_bytes`` sets SO_RCVBUF and SO_SNDBUF of the UDP socket
    (the kernel caps it at net.core.rmem_max / wmem_max), for high rates.
    ``realm``, when given, pins the realm: a different one in the server's
    401 fails the first request with RealmMismatch. Other keyword
    ``options`` go to :class:`TurnClient` (software, rto_seconds, rc, rm,
    keep_alive).

    Fails with DNSLookupError, ConnectError (refused, timed out) or an
    SSL error for a TLS handshake that fails verification.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    return Deferred.fromCoroutine(
        _connect(reactor, tuple(server), transport, username, password, realm, tls_verify, tls_ca_file,
                 tls_hostname, endpoint, bind_ip, connect_timeout_seconds, socket_buffer_bytes, options)
    )


async def _connect(reactor, server, transport, username, password, realm, tls_verify, tls_ca_file,
                   tls_hostname, endpoint, bind_ip, connect_timeout_seconds, socket_buffer_bytes,
                   options) -> Any:
    from .client import TurnClient  # not at the top: relay.client imports this module for connect()

    host, port = server
    if transport == "udp":
        ip = str(ipaddress.ip_address(host if _is_ip(host) else await reactor.resolve(host)))
        client = TurnClient(reactor, (ip, port), transport, username, password, realm, **options)
        adapter = _DatagramAdapter(client)
        if bind_ip is None:
            bind_ip = "::" if ipaddress.ip_address(ip).version == 6 else "0.0.0.0"
        port = reactor.listenUDP(0, adapter, interface=bind_ip, maxPacketSize=65536)
        if socket_buffer_bytes:
            set_socket_buffers(port.getHandle(), socket_buffer_bytes)
        return client
    client = TurnClient(reactor, (host, port), transport, username, password, realm, **options)
    if endpoint is None:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout_seconds,
                                    bindAddress=(bind_ip, 0) if bind_ip else None)
        if transport == "tls":
            endpoint = wrapClientTLS(tls_options(tls_hostname or host, tls_verify, tls_ca_file), endpoint)
    adapter = _StreamAdapter(client, tls=transport == "tls")
    await connectProtocol(endpoint, adapter)
    if transport == "tls":
        # Wait for the handshake so a certificate that fails verification
        # fails connect() rather than the first request.
        await adapter.handshake
    return client


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tls_options(
    hostname: str,
    verify: bool = True,
    ca_file: str | None = None,
) -> Any:
    """Client TLS options offering ALPN "stun.turn" (RFC 7443).

    With ``verify`` (the default) the server certificate must chain to the
    platform's trust store, or to ``ca_file`` (PEM) when given, and match
    ``hostname`` (a DNS name or an IP address). ``verify=False`` accepts any
    certificate: for self-signed development servers only.
    """
    if not verify:
        return ssl.CertificateOptions(verify=False, acceptableProtocols=[ALPN_STUN_TURN])
    trust_root = None
    if ca_file is not None:
        with open(ca_file, "rb") as f:
            trust_root = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, acceptableProtocols=[ALPN_STUN_TURN])


def set_socket_buffers(sock: socket.socket, size_bytes: int) -> None:
    """Ask for SO_RCVBUF and SO_SNDBUF of size_bytes; the kernel may grant less."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size_bytes)
        except OSError as e:
            log.debug("could not set socket buffer: {error}", error=e)


class _DatagramAdapter(DatagramProtocol):
    """Moves datagrams between a UDP socket and a TurnClient; only the server's are read."""

    noisy = False

    def __init__(self, client) -> None:
        self.client = client
        self.server = client.server

    def startProtocol(self) -> None:
        # The socket is deliberately not connect()ed: an ICMP error on a
        # connected socket makes the epoll reactor close the port. Writes go
        # straight to sendto, skipping the per-datagram address checks of
        # Twisted's Port.write; a full socket buffer raises BlockingIOError.
        sendto = self.transport.getHandle().sendto
        server = self.server

        def write(data: bytes) -> None:
            sendto(data, server)

        self.client._attach(write, self.transport.stopListening)
        read_loop(self.transport, self.datagramReceived)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if addr == self.server:
            self.client._packet(data)
        else:
            self.client.dropped += 1

    def stopProtocol(self) -> None:
        self.client._connection_lost()


@implementer(IHandshakeListener, IPushProducer)
class _StreamAdapter(Protocol):
    """Moves frames between a TCP/TLS connection and a TurnClient (RFC 8489 §6.2.2).

    It registers itself as the connection's producer, so the client's
    ``write_paused`` follows the transport's send buffer.
    """

    def __init__(self, client, tls: bool = False) -> None:
        self.client = client
        self.framer = StreamFramer()
        self.handshake: Deferred | None = Deferred() if tls else None
        self._abort = None

    def handshakeCompleted(self) -> None:
        if self.handshake is not None and not self.handshake.called:
            self.handshake.callback(None)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        send_at_once(self.transport)
        self.client._attach(self.transport.write, self.disconnect)

    def disconnect(self) -> None:
        """Close the connection, aborting it when the server has not closed it within CLOSE_TIMEOUT_SECONDS.

        The producer goes first: over TLS, loseConnection waits for a
        registered producer to be unregistered before it sends close_notify.
        """
        if self._abort is not None or self.transport is None:
            return
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abort = self.client.clock.callLater(CLOSE_TIMEOUT_SECONDS, self.transport.abortConnection)

    def pauseProducing(self) -> None:
        self.client.write_paused = True

    def resumeProducing(self) -> None:
        self.client.write_paused = False

    def stopProducing(self) -> None:
        self.client.write_paused = True

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except CodecError as e:
            log.warn("closing the stream to {server}: {error}", server=self.client.server, error=e)  # noqa: G010
            self.client.dropped += 1
            self.disconnect()
            return
        packet = self.client._packet
        for frame in frames:
            packet(frame)

    def connectionLost(self, reason: Any = None) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self.handshake is not None and not self.handshake.called:
            self.handshake.errback(reason)
        self.client._connection_lost(reason.value if reason is not None else None)
