"""UDP socket helpers for the relay data path: buffers, senders and a lean read loop.

The relay's UDP sockets (client-facing and relayed) carry every relayed
packet, so the per-datagram work of reading and writing them is kept to the
socket calls themselves. ``bench/relay_datapath.py`` times it.
"""

import socket

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
