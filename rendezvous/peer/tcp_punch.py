"""TCP hole punching: simultaneous open with a low-TTL first SYN, and an accept socket on the same port.

A NAT lets a TCP SYN in only as part of a connection an inside host opened
(RFC 5382 §4-5: endpoint-independent mapping keeps one public port for one
inside port, whoever the peer). So both peers, each knowing the other's
public (ip, port) and sharing a start instant from the super node, do this
from the local port whose mapping ``tcp_mapped_address`` learned:

1. Listen on that port (SO_REUSEADDR + SO_REUSEPORT, so connecting sockets
   may bind it too).
2. At the start instant, connect to the peer from that port with a small IP
   TTL. The SYN crosses our NAT, which creates the mapping and a conntrack
   entry expecting the peer, and dies a hop or two later, before the peer's
   NAT. Sent with a full TTL it could reach the peer's NAT before the peer's
   own SYN has left, and a Linux NAT answers a SYN it has no mapping for
   with a RST from its own stack (nothing listens there), which ends our
   attempt (we retry 0.2 s later).
3. Restore the TTL. Both NATs now expect the other side, so the next SYN
   (the kernel's retransmission, or our retry) goes through the peer's NAT
   as a reply to its own outbound SYN. It meets either the peer's connecting
   socket in SYN-SENT (simultaneous open, RFC 9293 §3.5, Figure 8: both
   sides answer SYN with SYN-ACK) — technique ``simultaneous-open`` — or,
   when the low-TTL SYN's ICMP Time Exceeded already ended the peer's
   attempt, the peer's listening socket, which accepts it — ``accept``.

Attempts are retried from the same port, a bounded number of times, until
``timeout_seconds``; the first connection wins and every other socket
(listener, attempts, later arrivals) is closed, on success or failure.
Field results (Guha and Francis, IMC 2005; the TUM NAT study): ~42% of NAT
pairs with the low-TTL technique, ~35% without.

Observed in the NAT lab (tests/natlab/test_tcp_punch.py, Linux 6.18
nftables NATs whose routers drop unsolicited packets to themselves): with
full TTL the punch succeeds every run (the first SYN is dropped at the
peer's NAT, the peer's own SYN then finds our mapping). The low-TTL SYN
needs a routed hop between the NATs that does not answer with ICMP Time
Exceeded: Linux drops a SYN-SENT socket on that ICMP (RFC 1122 §4.2.3.9
notwithstanding), and the retry's SYN, with a new sequence number, is
INVALID to our own NAT. With such a hop (``Lab.add_site(hop=True)``) it
succeeds every run, by simultaneous open about 1 s after the start (the
kernel's full-TTL resend).
"""

import socket

from twisted.internet import error, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from relay.client import tls_options

from rendezvous.peer.nat_check import binding_request, mapped_address
from rendezvous.peer.tcp_binding import ReusePortConnector, StreamProbe, StreamProbeFactory, reuse_port

RETRY_SECONDS = 0.2            # between attempts to one peer after a refusal or a lost SYN
ATTEMPT_SECONDS = 2.0          # an attempt's connect timeout (the kernel retransmits the SYN at 1 s)
TTL_RESTORE_SECONDS = 0.05     # the low-TTL SYN has left by then; retransmissions go out at full TTL
MAX_ATTEMPTS_PER_PEER = 50
MAX_PEERS = 16


class TcpPunchFailed(Exception):
    """No TCP connection to any peer within the time; ``errors`` per peer."""

    def __init__(self, errors: dict) -> None:
        detail = "; ".join(f"{ip}:{port}: {e}" for (ip, port), e in errors.items()) or "no peer"
        super().__init__(f"TCP hole punching failed ({detail})")
        self.errors = errors


def tcp_mapped_address(reactor, local_port: int, stun_server: tuple[str, int], tls: bool = False,
                       timeout_seconds: float = 5.0, bind_ip: str = "0.0.0.0") -> Deferred:
    """The (ip, port) a STUN server sees for a TCP connection from ``local_port``.

    The socket is bound with SO_REUSEADDR + SO_REUSEPORT, so ``punch_tcp``
    can then reuse the port and its NAT mapping. With ``tls`` the Binding
    goes over TLS (a super node's 443 behind a firewall that allows only
    that); the certificate is not checked, as a mapped address is no
    secret. Fails with ConnectError, TimeoutError, or CodecError for an
    answer that is not STUN.
    """
    return Deferred.fromCoroutine(_mapped(reactor, local_port, tuple(stun_server), tls, timeout_seconds, bind_ip))


async def _mapped(reactor, local_port, server, tls, timeout_seconds, bind_ip):
    probe = StreamProbe(binding_request().encode())
    factory = StreamProbeFactory(probe)
    if tls:
        factory = TLSMemoryBIOFactory(tls_options(server[0], verify=False), True, factory)
    connector = ReusePortConnector(server[0], server[1], factory, timeout_seconds, (bind_ip, local_port), reactor)
    connector.connect()
    try:
        response = await probe.answered.addTimeout(timeout_seconds, reactor)
    finally:
        connector.disconnect()
    mapped = mapped_address(response)
    if mapped is None:
        raise error.ConnectError(string="the STUN response has no mapped address")
    return mapped[0], mapped[1]


def punch_tcp(reactor, local_port: int, peers: list[tuple[str, int]], start_at: float, timeout_seconds: float,
              protocol_factory: Factory, low_ttl: int | None = 2, bind_ip: str = "0.0.0.0") -> Deferred:
    """Open a TCP connection to one of ``peers`` from ``local_port`` through both NATs.

    ``start_at`` is a ``reactor.seconds()`` instant both sides share;
    ``low_ttl`` the TTL of each peer's first SYN (None: full TTL). Fires
    with (protocol, (ip, port), technique), the protocol built by
    ``protocol_factory`` and already connected, technique
    ``"simultaneous-open"`` or ``"accept"``; fails with TcpPunchFailed
    ``timeout_seconds`` after ``start_at``, or at once with OSError when
    the port cannot be bound. Every socket it opened is closed by then,
    but the winning one. Cancelling stops it the same way.
    """
    peers = [(str(ip), int(port)) for ip, port in peers][:MAX_PEERS]
    return _Punch(reactor, local_port, peers, start_at, timeout_seconds, protocol_factory, low_ttl, bind_ip).start()


class _Punch:
    """The state of one punch: a listener, attempts per peer, timers; finished once."""

    def __init__(self, reactor, local_port, peers, start_at, timeout_seconds, protocol_factory, low_ttl, bind_ip):
        self.reactor = reactor
        self.local_port = local_port
        self.peers = peers
        self.start_at = start_at
        self.timeout_seconds = timeout_seconds
        self.protocol_factory = protocol_factory
        self.low_ttl = low_ttl
        self.bind_ip = bind_ip
        self.attempts = {peer: 0 for peer in peers}
        self.errors: dict = {}
        self.connectors: list = []
        self.timers: list = []
        self.listener = None
        self.listener_closed: Deferred = succeed(None)
        self.finished = False
        self.done = Deferred(lambda _: self._finish())

    def start(self) -> Deferred:
        self.listener = _ReusePortListener(self.local_port, _AcceptFactory(self), 50, self.bind_ip, self.reactor)
        try:
            self.listener.startListening()
        except error.CannotListenError as e:
            self.listener = None
            self.finished = True
            self.done.errback(e.socketError if isinstance(e.socketError, OSError) else e)
            return self.done
        now = self.reactor.seconds()
        self.timers.append(self.reactor.callLater(max(0.0, self.start_at + self.timeout_seconds - now), self._expire))
        for peer in self.peers:
            self._later(max(0.0, self.start_at - now), self._attempt, peer)
        return self.done

    def _later(self, seconds, f, *args) -> None:
        self.timers = [t for t in self.timers if t.active()]
        self.timers.append(self.reactor.callLater(seconds, f, *args))

    def _attempt(self, peer) -> None:
        if self.finished:
            return
        self.attempts[peer] += 1
        ttl = self.low_ttl if self.attempts[peer] == 1 else None
        remaining = self.start_at + self.timeout_seconds - self.reactor.seconds()
        connector = ReusePortConnector(peer[0], peer[1], _AttemptFactory(self, peer), min(ATTEMPT_SECONDS, remaining),
                                       (self.bind_ip, self.local_port), self.reactor, ttl=ttl)
        self.connectors.append(connector)
        connector.connect()
        if ttl is not None:
            self._later(TTL_RESTORE_SECONDS, _restore_ttl, connector)

    def attempt_failed(self, connector, peer, reason) -> None:
        self.connectors.remove(connector)
        if self.finished:
            return
        self.errors[peer] = reason.getErrorMessage()
        if self.attempts[peer] < MAX_ATTEMPTS_PER_PEER:
            self._later(RETRY_SECONDS, self._attempt, peer)

    def accepts(self, address) -> bool:
        return not self.finished and any(address[0] == ip for ip, _ in self.peers)

    def won(self, transport):
        """The first connection: the caller's protocol for it, or None when another won first."""
        if self.finished:
            return None
        inner = self.protocol_factory.buildProtocol(transport.getPeer())
        if inner is not None:
            self._finish(keep=transport)
            _restore_ttl_of(transport)
        return inner

    def announce(self, result) -> None:
        """Fire with the winner once the listener's socket is closed too; a punch cancelled meanwhile
        drops the winner instead."""
        def fire(_) -> None:
            if self.done.called:
                result[0].transport.abortConnection()
            else:
                self.done.callback(result)

        self.listener_closed.addCallback(fire)

    def _expire(self) -> None:
        if not self.finished:
            self._finish()
            failure = TcpPunchFailed(self.errors or {peer: "no answer" for peer in self.peers})
            self.listener_closed.addCallback(lambda _: self.done.called or self.done.errback(failure))

    def _finish(self, keep=None) -> None:
        self.finished = True
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers = []
        if self.listener is not None:
            self.listener_closed = self.listener.stopListening() or succeed(None)
            self.listener = None
        for connector in list(self.connectors):
            if connector.transport is not keep:
                connector.disconnect()


class _ReusePortListener(tcp.Port):
    def createInternetSocket(self):
        s = super().createInternetSocket()
        reuse_port(s)
        return s


class _Handover(Protocol):
    """Stands in until the connection is known to be the winner, then passes everything to the caller's protocol."""

    def __init__(self, punch: _Punch, peer, technique: str) -> None:
        self.punch, self.peer, self.technique = punch, peer, technique
        self.inner = None

    def connectionMade(self) -> None:
        self.inner = self.punch.won(self.transport)
        if self.inner is None:
            self.transport.abortConnection()
            return
        self.inner.makeConnection(self.transport)
        address = self.transport.getPeer()
        self.punch.announce((self.inner, self.peer or (address.host, address.port), self.technique))

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


class _AttemptFactory(ClientFactory):
    noisy = False

    def __init__(self, punch: _Punch, peer) -> None:
        self.punch, self.peer = punch, peer

    def buildProtocol(self, addr):
        return _Handover(self.punch, self.peer, "simultaneous-open")

    def clientConnectionFailed(self, connector, reason) -> None:
        self.punch.attempt_failed(connector, self.peer, reason)


class _AcceptFactory(Factory):
    noisy = False

    def __init__(self, punch: _Punch) -> None:
        self.punch = punch

    def buildProtocol(self, addr):
        if not self.punch.accepts((addr.host, addr.port)):
            return None  # a stranger, or too late: Twisted closes the socket
        return _Handover(self.punch, None, "accept")


def _restore_ttl(connector) -> None:
    if connector.transport is not None:
        _restore_ttl_of(connector.transport)


def _restore_ttl_of(transport) -> None:
    handle = transport.getHandle()
    default = getattr(transport, "default_ttl", None)
    if default is not None:
        try:
            handle.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, default)
        except OSError:
            pass  # the socket has already gone
