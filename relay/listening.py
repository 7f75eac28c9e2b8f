"""Listening sockets, one per address and family, as coturn binds them.

A wildcard ``::`` socket on Linux hears IPv4 too (net.ipv6.bindv6only is 0
by default) and would hand an IPv4 client an IPv4-mapped IPv6 address
(RFC 4291 §2.5.5.2) where RFC 8489 clients expect IPv4, and would take the
port from the ``0.0.0.0`` socket beside it. So every IPv6 listening socket
is made here with IPV6_V6ONLY (RFC 3493 §5.3) before it is bound, and the
reactor adopts it: Twisted's ``listenUDP``/``listenTCP`` offer no way to set
an option between socket() and bind(). By default a server listens on
``relay.config.DUAL_STACK``, the IPv4 and the IPv6 wildcard; on a host
without IPv6 it says so once and listens on IPv4.
"""

import errno
import socket

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from .datagrams import MAX_DATAGRAM_BYTES

log = Logger()

# socket() or bind() failing with these means the host has no IPv6 (or not that address).
NO_IPV6_ERRORS = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def family_of_ip(ip: str) -> int:
    """socket.AF_INET6 or socket.AF_INET."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def bind_socket(kind: str, ip: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A UDP ("udp") or TCP ("tcp") socket bound to ip:port, IPv6-only when ip is IPv6; raises OSError.

    TCP sockets get SO_REUSEADDR (as Twisted's own), UDP ones only with
    reuse_port, so a busy UDP port still fails the start.
    """
    family = family_of_ip(ip)
    sock = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == "tcp" or reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def ipv6_available() -> OSError | None:
    """None when this host can bind an IPv6 socket; else the error that says why not."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::", 0))
    except OSError as e:
        return e
    return None


def listening_ips(ips: tuple[str, ...], probe=ipv6_available) -> tuple[str, ...]:
    """ips, less the IPv6 wildcard of the dual-stack default on a host without IPv6 (logged once)."""
    if "::" not in ips or len(ips) == 1:
        return ips
    error = probe()
    if error is None or error.errno not in NO_IPV6_ERRORS:
        return ips
    log.warn("no IPv6 on this host ({error}): listening on IPv4 only", error=error.strerror or str(error))
    return tuple(ip for ip in ips if ip != "::")


class ListeningPort(service.Service):
    """A listening UDP or TCP (optionally TLS) socket made by ``bind_socket``.

    With reuse_port it joins an SO_REUSEPORT group (``relay.workers``); a
    worker may be handed the socket its first process bound for it
    (``inherited_fd``).
    """

    def __init__(self, reactor, kind: str, ip: str, port: int, target, tls_options=None,
                 reuse_port: bool = False) -> None:
        self.reactor = reactor
        self.kind = kind
        self.ip, self.port_number = ip, port
        self.target = target  # a DatagramProtocol for UDP, a Factory for TCP
        self.tls_options = tls_options
        self.reuse_port = reuse_port
        self.port = None
        self.inherited_fd: int | None = None  # the socket the first process bound for this worker

    @property
    def key(self) -> tuple[str, str, int]:
        return self.kind, self.ip, self.port_number

    def bind(self) -> socket.socket:
        """A new socket bound to this service's address; raises OSError."""
        return bind_socket(self.kind, self.ip, self.port_number, self.reuse_port)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.inherited_fd is not None:
            sock, self.inherited_fd = socket.socket(fileno=self.inherited_fd), None
        else:
            try:
                sock = self.bind()
            except OSError as e:
                raise CannotListenError(self.ip, self.port_number, e) from None
        family = sock.family
        try:
            sock.setblocking(False)
            if self.kind == "udp":
                self.port = self.reactor.adoptDatagramPort(sock.fileno(), family, self.target, MAX_DATAGRAM_BYTES)
            else:
                sock.listen(1024)
                factory = self.target
                if self.tls_options is not None:
                    factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
                self.port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        finally:
            sock.close()  # the reactor holds its own duplicate

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
