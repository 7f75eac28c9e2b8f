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
"""

import json
import os
import socket
from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
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
    """One handed-off connection: a descriptor, then a header line and the bytes to replay."""

    def __init__(self, factory: "HandoffFactory") -> None:
        self.factory = factory
        self.fds: list[int] = []
        self.data = bytearray()

    def fileDescriptorReceived(self, fd: int) -> None:
        self.fds.append(fd)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_HANDOFF_BYTES:
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        fds, self.fds = self.fds, []
        try:
            if len(fds) == 1 and len(self.data) <= MAX_HANDOFF_BYTES:
                self.factory.adopt(fds[0], bytes(self.data))
            elif fds:
                log.warn("dropped a handed-off connection with {count} descriptors", count=len(fds))
        finally:
            for fd in fds:
                os.close(fd)


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

    def __init__(self, reactor, listeners: dict) -> None:
        self.reactor = reactor
        self.listeners = listeners  # (ip, port) -> the plain TCP ServerStreamFactory

    def buildProtocol(self, addr) -> _Receiver:
        return _Receiver(self)

    def adopt(self, fd: int, data: bytes) -> None:
        header, _, replay = data.partition(b"\n")
        try:
            fields = json.loads(header)
            local = tuple(fields["local"])
            client = tuple(fields["client"]) if fields["client"] else None
        except (ValueError, KeyError, TypeError):
            log.warn("dropped a handed-off connection with a bad header")
            return
        factory = self.listeners.get(local)
        if factory is None:
            log.warn("no TCP listener {local} for a handed-off connection", local=local)
            return
        family = _family(fd)
        adopting = _Adopting(factory if client is None else _AsClientFactory(factory, client))
        self.reactor.adoptStreamConnection(fd, family, adopting)
        log.info("took over a ConnectionBind connection from another worker")
        if adopting.protocol is not None and replay:
            adopting.protocol.dataReceived(replay)


def _family(fd: int) -> int:
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return probe.family
    finally:
        probe.close()
