"""Handing an RFC 6062 data connection to the worker that owns its CONNECTION-ID.

With ``--workers N`` the kernel gives a new TCP connection to any worker,
but the peer connection a ConnectionBind names (RFC 6062 §5.4) lives on one
worker: the top byte of a CONNECTION-ID is its owner's index. A worker that
receives someone else's ConnectionBind passes the client's socket over a
unix socket with SCM_RIGHTS (``STATE_DIR/run/relay-PID-I.fd.sock``), with the
bytes it has read from it (the ConnectionBind itself and anything after);
the owner adopts the socket into its own listener's factory and replays the
bytes, so it answers the ConnectionBind and splices as if it had accepted
the connection. A TLS connection keeps its session state in the process
that accepted it, so it cannot move: that worker passes one end of a unix
socket pair instead and copies the decrypted bytes between the two, and the
owner treats that end as the client's connection (``TlsProxy``).

The same socket carries RESERVATION-TOKENs (RFC 8656 §7.2) across workers:
a token's first byte is its owner's index too, and a worker given a token
it does not hold asks the owner (``request_reservation``), which sends the
reserved relay socket back with SCM_RIGHTS and forgets it.

Once a plain TCP connection has moved, the accepting worker must close its
own descriptor without the shutdown() Twisted does on an orderly close (that
would end the connection for the owner too): it stops watching the socket
and puts an unconnected socket in place of the descriptor (``os.dup2``), so
Twisted's close acts on that. Replies Twisted had not yet written to the
connection when the ConnectionBind arrived are lost with it; a data
connection begins with its ConnectionBind (RFC 6062 §5.4), so there are none.

Each exchange on the socket starts with a JSON header line:
``{"local": [ip, port], "client": [ip, port] | null}`` before a handed-off
connection's bytes (sent with its descriptor, then the connection is
closed), or ``{"reservation": HEX}``, answered with the relay socket's
descriptor and ``{"address": [ip, port]}``, or by closing at once.
"""

import json
import os
import socket
from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

log = Logger()

OWNER_SHIFT = 24  # CONNECTION-ID = owner index << 24 | 24 random bits
MAX_WORKERS = 256
MAX_HANDOFF_BYTES = 70_000  # a header and at most one read's worth of client bytes
SEND_TIMEOUT_SECONDS = 1.0


def owner_of(connection_id: int) -> int:
    """The worker index a CONNECTION-ID names."""
    return connection_id >> OWNER_SHIFT


def token_owner(token: bytes) -> int:
    """The worker index a RESERVATION-TOKEN names (its first byte)."""
    return token[0]


def give_up_connection(transport) -> None:
    """Close this process's descriptor of a TCP transport whose socket another process now holds."""
    transport.stopReading()
    transport.stopWriting()
    handle = transport.getHandle()
    with socket.socket(handle.family, socket.SOCK_STREAM) as placeholder:
        os.dup2(placeholder.fileno(), handle.fileno())
    transport.loseConnection()


def hand_off(path: Path, stream_socket: socket.socket, local: tuple, replay: bytes, client=None) -> None:
    """Send stream_socket (by SCM_RIGHTS), its listener's address and replay bytes; raises OSError.

    client, the TLS client's address, goes with one end of a TlsProxy's pair.
    """
    header = json.dumps({"local": list(local), "client": list(client) if client else None}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(SEND_TIMEOUT_SECONDS)
        channel.connect(str(path))
        data = header + replay
        sent = socket.send_fds(channel, [data], [stream_socket.fileno()])
        channel.sendall(data[sent:])


@implementer(IFileDescriptorReceiver)
class _Receiver(Protocol):
    """One exchange: a handed-off connection (descriptor, header, bytes) or a reservation request."""

    def __init__(self, factory: "HandoffFactory") -> None:
        self.factory = factory
        self.fds: list[int] = []
        self.data = bytearray()
        self.header = None
        self.sending: int | None = None  # a relay socket's descriptor on its way out

    def fileDescriptorReceived(self, fd: int) -> None:
        self.fds.append(fd)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_HANDOFF_BYTES:
            self.transport.abortConnection()
            return
        if self.header is None and b"\n" in self.data:
            line, _, rest = bytes(self.data).partition(b"\n")
            self.header, self.data = _header(line), bytearray(rest)
            if self.header is None:
                log.warn("dropped a worker handoff with a bad header")
                self.transport.abortConnection()
            elif "reservation" in self.header:
                self.factory.give_reservation(self, self.header["reservation"])

    def connectionLost(self, reason=None) -> None:
        fds, self.fds = self.fds, []
        if self.sending is not None:
            os.close(self.sending)
            self.sending = None
        try:
            if self.header is None or "reservation" in self.header:
                if fds:
                    log.warn("dropped {count} descriptors sent without a header", count=len(fds))
            elif len(fds) == 1 and len(self.data) <= MAX_HANDOFF_BYTES:
                self.factory.adopt(fds[0], self.header, bytes(self.data))
            else:
                log.warn("dropped a handed-off connection with {count} descriptors", count=len(fds))
        finally:
            for fd in fds:
                os.close(fd)


def _header(line: bytes) -> dict | None:
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


@implementer(IFileDescriptorReceiver)
class _ReservationRequest(Protocol):
    """Asks the owner worker for a reserved relay socket; fires done with (fd, address) or None."""

    def __init__(self, reactor, token: bytes, done: Deferred) -> None:
        self.reactor = reactor
        self.token = token
        self.done = done
        self.fds: list[int] = []
        self.data = bytearray()
        self.timer = None

    def connectionMade(self) -> None:
        self.timer = self.reactor.callLater(SEND_TIMEOUT_SECONDS, self.transport.abortConnection)
        self.transport.write(json.dumps({"reservation": self.token.hex()}).encode() + b"\n")

    def fileDescriptorReceived(self, fd: int) -> None:
        self.fds.append(fd)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_HANDOFF_BYTES:
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        fds, self.fds = self.fds, []
        header = _header(bytes(self.data).partition(b"\n")[0]) or {}
        try:
            address = tuple(header["address"])
            host, port = address
            valid = isinstance(host, str) and isinstance(port, int)
        except (KeyError, TypeError, ValueError):
            valid = False
        if len(fds) == 1 and valid:
            self.done.callback((fds[0], address))
            return
        for fd in fds:
            os.close(fd)
        self.done.callback(None)


class _RequestFactory(ClientFactory):
    noisy = False

    def __init__(self, reactor, token: bytes) -> None:
        self.reactor = reactor
        self.token = token
        self.done = Deferred()

    def buildProtocol(self, addr) -> _ReservationRequest:
        return _ReservationRequest(self.reactor, self.token, self.done)

    def clientConnectionFailed(self, connector, reason) -> None:
        log.warn("cannot ask another worker for a reservation: {error}", error=reason.getErrorMessage())
        self.done.callback(None)


def request_reservation(reactor, path: Path, token: bytes) -> Deferred:
    """Ask the worker listening on path for the relay socket held for token.

    Fires with (fd, relayed address) — the descriptor is the caller's to
    close — or None when the owner does not hold the token (expired, used,
    unknown) or does not answer within SEND_TIMEOUT_SECONDS. Never fails.
    """
    factory = _RequestFactory(reactor, token)
    reactor.connectUNIX(str(path), factory, timeout=SEND_TIMEOUT_SECONDS)
    return factory.done


class TlsProxy(Protocol):
    """Our end of the pair standing in for a TLS client connection on its owner worker."""

    def __init__(self, leg) -> None:
        self.leg = leg

    def dataReceived(self, data: bytes) -> None:
        self.leg.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.leg.transport.loseConnection()


class _AsClient(ProtocolWrapper):
    """Gives the adopted end of a TlsProxy pair the TLS client's address."""

    def getPeer(self):
        host, port = self.factory.client
        return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class _AsClientFactory(WrappingFactory):
    protocol = _AsClient

    def __init__(self, wrapped, client) -> None:
        super().__init__(wrapped)
        self.client = client


class _Adopting(Factory):
    """Builds the adopted connection's protocol with the listener's factory and keeps it."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.protocol = None

    def buildProtocol(self, addr):
        self.protocol = self.factory.buildProtocol(addr)
        return self.protocol


class HandoffFactory(Factory):
    """The owner's side: adopts handed-off client connections into its listeners."""

    noisy = False

    def __init__(self, reactor, listeners: dict, ports=None) -> None:
        self.reactor = reactor
        self.listeners = listeners  # (ip, port) -> the plain TCP ServerStreamFactory
        self.ports = ports  # the relay.relay_ports.RelayPorts holding reservations

    def buildProtocol(self, addr) -> _Receiver:
        return _Receiver(self)

    def give_reservation(self, receiver: _Receiver, token_hex) -> None:
        """Send the relay socket held for the token and forget it; close at once if there is none."""
        try:
            token = bytes.fromhex(token_hex)
        except (TypeError, ValueError):
            token = b""
        relay = self.ports.take_held(token) if self.ports is not None and token else None
        if relay is not None:
            receiver.sending = os.dup(relay.fileno())
            address = relay.address
            relay.close()
            receiver.transport.sendFileDescriptor(receiver.sending)
            receiver.transport.write(json.dumps({"address": list(address)}).encode() + b"\n")
            log.info("gave reserved relay port {port} to another worker", port=address[1])
        receiver.transport.loseConnection()

    def adopt(self, fd: int, fields: dict, replay: bytes) -> None:
        try:
            local = tuple(fields["local"])
            client = tuple(fields["client"]) if fields["client"] else None
        except (KeyError, TypeError):
            log.warn("dropped a handed-off connection with a bad header")
            return
        factory = self.listeners.get(local)
        if factory is None:
            log.warn("no TCP listener {local} for a handed-off connection", local=local)
            return
        family = descriptor_family(fd)
        adopting = _Adopting(factory if client is None else _AsClientFactory(factory, client))
        self.reactor.adoptStreamConnection(fd, family, adopting)
        log.info("took over a ConnectionBind connection from another worker")
        if adopting.protocol is not None and replay:
            adopting.protocol.dataReceived(replay)


def descriptor_family(fd: int) -> int:
    """The address family of a socket descriptor."""
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return probe.family
    finally:
        probe.close()
