"""Relayed transport addresses: UDP sockets bound in the relay port range.

RFC 8656 §7.2 (choosing a relayed transport address; EVEN-PORT and
RESERVATION-TOKEN reserve the next port for ``RESERVATION_SECONDS``, and the
reservation counts against its user's quota until taken or expired; with
several workers a token's first byte names the worker holding the port, and
another worker asks it for the socket, ``relay.handoff``) and §14 (DONT-FRAGMENT,
honoured with IP_PMTUDISC_DO). Each relay socket hands datagrams from peers
to its allocation's data path and sends through an ``Outbox``
(``relay.datagrams``, batched per read pass): the relay data path is the hot loop of the whole suite.
"""

import os
import select
import socket
from random import random
from typing import Callable

from twisted.logger import Logger

from rendezvous.stun.addresses import Address

from .datagrams import DatagramPoller, Outbox, read_loop, set_buffers
from .handoff import request_reservation, token_owner
from .server import NoRelayPort

try:
    from . import _sockets
except ImportError:  # not built (setup.py builds it on Linux)
    _sockets = None

log = Logger()

# How long a reserved port (EVEN-PORT R) is held for its RESERVATION-TOKEN (RFC 8656 §7.2: "approximately 30 s").
RESERVATION_SECONDS = 30
# Room for a burst from a peer; the kernel default (~208 KiB) drops under load.
RELAY_BUFFER_BYTES = 1024 * 1024
_ATTEMPTS = 64
_IP_PMTUDISC_DO = 2
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
# Non-blocking from the start where the flag exists: no ioctl per allocation.
_DATAGRAM = socket.SOCK_DGRAM | _NONBLOCK
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


class RelaySocket:
    """One relayed transport address: a UDP socket the relay binds (or another worker hands over) and
    reads itself.

    No Twisted port stands between: the socket is registered with the
    relay's ``DatagramPoller`` once (one ``epoll_ctl``), or with the reactor
    as a reader where there is no epoll, and closed by ``close`` (a Twisted
    port logged two lines and scheduled a call per socket). Datagrams from
    peers go from the read loop straight to the owning allocation's
    ``from_peer`` (``handler``; the poller's C pass relays most of them
    itself, relay/_route.c): setting ``allocation`` rebinds the loop.
    """

    def __init__(self, address: Address, owner: "RelayPorts | None", sock: socket.socket,
                 family: int | None = None) -> None:
        self.address = address
        self.owner = owner
        self.socket = sock
        self.fileno = sock.fileno  # the poller asks on add and remove: no Python frame
        self.addressFamily = sock.family if family is None else _FAMILIES[family]  # 4 or 6: no enum made
        self.write = Outbox(sock).write
        self._allocation = None
        self.handler = self.datagramReceived

    @property
    def allocation(self):
        return self._allocation

    @allocation.setter
    def allocation(self, allocation) -> None:
        self._allocation = allocation
        self.handler = self.datagramReceived if allocation is None else allocation.from_peer
        self.__dict__.pop("doRead", None)  # the read loop of the handler before

    def doRead(self) -> None:
        """Read as read_loop does, for the handler of now (the poller's C pass reads ``handler`` itself): the
        loop is made on the first read, not for every socket and allocation."""
        read_loop(self, self.handler)  # it sets this instance's own doRead
        self.doRead()

    def logPrefix(self) -> str:
        return "relay socket"

    def datagramReceived(self, data: bytes, addr) -> None:
        """Without an allocation (a reserved port), datagrams are dropped."""

    def connectionLost(self, reason=None) -> None:
        """The reactor gave up reading it (a failed read): close it."""
        self.close()

    def close(self) -> None:
        self._allocation = None
        if self.socket.fileno() < 0:
            return
        if self.owner is not None:
            self.owner.forget(self)
        self.socket.close()


class RelayPorts:
    """Binds relay sockets on the relay IPs within [low, high]."""

    def __init__(self, reactor, ips: dict[int, str], low: int, high: int,
                 advertise: dict[int, str] | None = None, clock=None) -> None:
        self.reactor = reactor
        self.ips = ips
        self.low, self.high = low, high
        self.advertise = advertise or {}
        self.clock = clock or reactor
        # token -> (the reserved socket, when it expires, what ends its quota count)
        self.reservations: dict[bytes, tuple[RelaySocket, float, Callable[[], None]]] = {}
        self.open_count = 0
        self.worker_index = 0  # the first byte of the RESERVATION-TOKENs made here
        self.handoff_paths: dict = {}  # other workers' handoff sockets by index (relay.handoff)
        # One reactor reader for every relay socket, where epoll exists.
        self.poller = DatagramPoller(reactor) if hasattr(select, "epoll") else None

    def _bind(self, family: int, port: int, dont_fragment: bool) -> RelaySocket | None:
        ip = self.ips[family]
        if _sockets is not None:
            # One call into C makes, binds and sets up the socket (relay/_sockets.c): no socket.socket, no
            # setsockopt round trips through Python. SocketType wraps the descriptor without a system call.
            fd = _sockets.bind_udp(family, ip, port, RELAY_BUFFER_BYTES, dont_fragment)
            if fd < 0:  # the port is taken
                return None
            sock = socket.SocketType(_FAMILIES[family], _DATAGRAM, 0, fd)
        else:
            sock = socket.SocketType(_FAMILIES[family], _DATAGRAM)
            if not _NONBLOCK:
                sock.setblocking(False)
            try:
                sock.bind((ip, port))
            except OSError:  # the port is taken
                sock.close()
                return None
            set_buffers(sock, RELAY_BUFFER_BYTES)
            if dont_fragment:
                level = socket.IPPROTO_IPV6 if family == 6 else socket.IPPROTO_IP
                option = getattr(socket, "IPV6_MTU_DISCOVER", 23) if family == 6 else getattr(socket, "IP_MTU_DISCOVER", 10)
                sock.setsockopt(level, option, _IP_PMTUDISC_DO)
        return self._read((self.advertise.get(family, ip), port), sock, family)

    def _read(self, address: Address, sock, family: int) -> RelaySocket:
        """A RelaySocket at address over non-blocking sock (its buffers set), read from now on (by the
        poller, else the reactor)."""
        relay = RelaySocket(address, self, sock, family)
        if self.poller is not None:
            self.poller.add(relay)
        else:
            self.reactor.addReader(relay)
        self.open_count += 1
        return relay

    def forget(self, relay: RelaySocket) -> None:
        """Stop reading relay, which is about to close."""
        if self.poller is not None:
            self.poller.remove(relay)
        else:
            self.reactor.removeReader(relay)
        self.open_count -= 1

    def open(self, family: int, even: bool = False, reserve_next: bool = False,
             dont_fragment: bool = False, release: Callable[[], None] = lambda: None,
             ) -> tuple[RelaySocket, bytes | None]:
        """Bind a relay socket; with reserve_next also hold port+1 (RFC 8656 §7.2) until its token is
        taken or expires, then call release."""
        if family not in self.ips:
            raise NoRelayPort(f"no relay address of family {family}")
        for _ in range(_ATTEMPTS):
            # random() is one call into C where randint is four Python ones (53 random bits for 16 of port).
            port = self.low + int(random() * (self.high - self.low + (0 if reserve_next else 1)))
            if even:
                port &= ~1
                if port < self.low:
                    continue
            relay = self._bind(family, port, dont_fragment)
            if relay is None:
                continue
            if not reserve_next:
                return relay, None
            held = self._bind(family, port + 1, dont_fragment)
            if held is None:
                relay.close()
                continue
            token = bytes([self.worker_index]) + os.urandom(7)
            self.reservations[token] = (held, self.clock.seconds() + RESERVATION_SECONDS, release)
            return relay, token
        raise NoRelayPort("relay port range exhausted")

    def take_reserved(self, token: bytes):
        """The socket held for a RESERVATION-TOKEN, once: a RelaySocket, None, or, when
        another worker holds it, a Deferred firing with one (or None) from that worker."""
        owner = token_owner(token)
        path = self.handoff_paths.get(owner) if owner != self.worker_index else None
        if path is None:
            return self.take_held(token)
        return request_reservation(self.reactor, path, token).addCallback(self._adopt)

    def take_held(self, token: bytes) -> RelaySocket | None:
        """The socket this process holds for an unexpired token, once."""
        relay, until, release = self.reservations.pop(token, (None, 0.0, None))
        if relay is None:
            return None
        release()
        if until <= self.clock.seconds():
            relay.close()
            return None
        return relay

    def _adopt(self, given) -> RelaySocket | None:
        """A relay socket another worker sent: (fd, address), the descriptor ours to close."""
        if given is None:
            return None
        fd, address = given
        try:
            sock = socket.socket(fileno=fd)  # its family and type read from the descriptor
        except OSError as e:
            os.close(fd)
            log.warn("cannot adopt a reserved relay socket: {error}", error=str(e))
            return None
        sock.setblocking(False)
        set_buffers(sock, RELAY_BUFFER_BYTES)
        return self._read(address, sock, 6 if sock.family == socket.AF_INET6 else 4)

    def expire(self, now: float) -> None:
        for token in [t for t, (_, until, _) in self.reservations.items() if until <= now]:
            relay, _, release = self.reservations.pop(token)
            relay.close()
            release()
        if self.poller is not None:
            self.poller.idle()

    def stop(self) -> None:
        for relay, _, release in self.reservations.values():
            relay.close()
            release()
        self.reservations.clear()
        if self.poller is not None:
            self.poller.idle()
