"""UDP socket helpers for the relay data path: buffers, senders, a lean read loop, one poller.

The relay's UDP sockets (client-facing and relayed) carry every relayed
packet, so the per-datagram work of reading and writing them is kept to the
socket calls themselves, and the relay sockets share one reader of the
reactor (``DatagramPoller``). ``bench/relay_datapath.py`` times it.
"""

import os
import select
import socket

from twisted.internet import udp
from twisted.logger import Logger

from rendezvous.stun.addresses import Address

log = Logger()

# Room for a whole UDP datagram (RFC 8656 §12.4 ChannelData up to 65535 bytes
# of data; an IPv4 UDP payload is at most 65507): nothing is truncated.
MAX_DATAGRAM_BYTES = 65536
# Datagrams read per wakeup before other sockets get their turn.
MAX_READS_PER_WAKEUP = 256


def set_buffers(sock: socket.socket, size: int) -> None:
    """Enlarge a UDP socket's buffers, forcing past rmem_max when privileged."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def udp_sender(sock: socket.socket, addr: Address):
    """A function sending datagrams to addr with the socket's own sendto.

    The relay data path calls it per packet, so it skips Twisted's address
    checks; UDP may drop, so a send error is not raised.
    """
    sendto = sock.sendto

    def send(data: bytes) -> None:
        try:
            sendto(data, addr)
        except OSError:
            pass

    return send


def udp_writer(sock: socket.socket):
    """A function sending one datagram to an address with sock, dropping it on a send error."""
    sendto = sock.sendto

    def write(data: bytes, addr: Address) -> None:
        try:
            sendto(data, addr)
        except OSError:
            pass  # an ICMP error or a full buffer: UDP may drop

    return write


def read_loop(port, handler) -> None:
    """Make a listening ``twisted.internet.udp.Port`` hand datagrams straight to handler(data, addr).

    It replaces the port's ``doRead`` with a loop doing what Twisted's does
    (read until the socket is empty, at most MAX_READS_PER_WAKEUP datagrams;
    ignore EAGAIN, EINTR and ECONNREFUSED; log an exception from the handler
    and go on) with the socket's and the handler's methods bound once, and
    addresses reduced to (host, port) only on IPv6.
    """
    recvfrom = port.socket.recvfrom
    ipv6 = port.addressFamily == socket.AF_INET6
    reads = range(MAX_READS_PER_WAKEUP)

    def doRead() -> None:
        for _ in reads:
            try:
                data, addr = recvfrom(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                return
            if ipv6:
                addr = addr[:2]
            try:
                handler(data, addr)
            except Exception:
                log.failure("handling a datagram from {addr}", addr=addr)

    port.doRead = doRead


class DatagramPoller:
    """Many UDP ports behind one reader of the reactor: an epoll of their own (Linux).

    The reactor dispatches each ready descriptor through
    ``log.callWithLogger``, about 2 µs a time here; with the relay sockets
    behind one epoll, a wakeup pays that once however many of them are
    ready, plus one ``epoll_wait`` that does not block.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._epoll = select.epoll()
        self._ports: dict[int, udp.Port] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "relay sockets"

    def add(self, port: udp.Port) -> None:
        fd = port.fileno()
        if fd in self._ports:
            return
        self._ports[fd] = port
        self._epoll.register(fd, select.EPOLLIN)
        if len(self._ports) == 1:
            self.reactor.addReader(self)

    def descriptors(self) -> list[int]:
        """The file descriptors of the sockets it reads."""
        return list(self._ports)

    def remove(self, port: udp.Port) -> None:
        for fd, known in list(self._ports.items()):
            if known is port:
                del self._ports[fd]
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # already closed: the kernel dropped it
                if not self._ports:
                    self.reactor.removeReader(self)
                return

    def doRead(self) -> None:
        ports = self._ports
        for fd, _ in self._epoll.poll(0):
            port = ports.get(fd)
            if port is None:
                continue
            try:
                port.doRead()
            except Exception:
                # Twisted would close a port whose read failed; stop reading it.
                log.failure("reading {port}", port=port)
                self.remove(port)

    def connectionLost(self, reason) -> None:
        self._ports.clear()


class PolledPort(udp.Port):
    """A UDP port read through a DatagramPoller instead of its own reader in the reactor."""

    def __init__(self, port: int, protocol, interface: str, reactor, poller: DatagramPoller) -> None:
        super().__init__(port, protocol, interface, MAX_DATAGRAM_BYTES, reactor)
        self.poller = poller

    def startReading(self) -> None:
        self.poller.add(self)

    def stopReading(self) -> None:
        self.poller.remove(self)


def listen_udp(reactor, port: int, protocol, interface: str, poller: DatagramPoller | None) -> udp.Port:
    """``reactor.listenUDP``, read through poller when there is one."""
    if poller is None:
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=MAX_DATAGRAM_BYTES)
    listening = PolledPort(port, protocol, interface, reactor, poller)
    listening.startListening()
    return listening


def receive_drops(reactor) -> int:
    """Datagrams the kernel dropped, since each socket opened, on the UDP sockets this process reads.

    The ``drops`` column of /proc/self/net/udp and udp6 (full receive
    buffers, mostly), summed over the sockets the reactor or a
    ``DatagramPoller`` reads; 0 where /proc is missing.
    """
    fds = []
    for reader in reactor.getReaders():
        if isinstance(reader, udp.Port):
            fds.append(reader.fileno())
        elif isinstance(reader, DatagramPoller):
            fds.extend(reader.descriptors())
    inodes = set()
    for fd in fds:
        try:
            inodes.add(str(os.fstat(fd).st_ino))
        except OSError:
            pass
    drops = 0
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] in inodes:
                        drops += int(fields[12])
        except OSError:
            continue
    return drops
