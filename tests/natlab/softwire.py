"""A userspace IPv4-in-IPv6 softwire end (RFC 2473, as DS-Lite uses it, RFC 6333 §5).

The kernels the lab runs on have no ``ip6tnl`` device, so each end of the
lab's DS-Lite tunnel (the B4 in the home router, the AFTR) runs this script
in its namespace::

    python softwire.py TUN LOCAL_IPV6 REMOTE_IPV6

It opens a TUN device named TUN (no packet information header, so a read
is one bare IPv4 packet) and a raw IPv6 socket for next header 4 (IPv4),
bound to LOCAL_IPV6. An IPv4 packet read from the TUN device is sent to
REMOTE_IPV6 as the payload of an IPv6 packet with next header 4, which is
RFC 2473's encapsulation on the wire; an IPv6 packet with next header 4
from REMOTE_IPV6 has its payload (the kernel strips the IPv6 header on raw
IPv6 sockets) written to the TUN device, where the kernel routes it like
any IPv4 packet. Packets from other IPv6 sources are dropped.

It prints ``ready`` once the device exists; the lab then gives the device
its addresses, routes and an MTU 40 bytes (the IPv6 header) below the link's. The device goes away when the process ends (it
is not persistent), so the lab only has to end the process, by its pid.
"""

import fcntl
import os
import select
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IPPROTO_IPIP = 4


def open_tun(name: str) -> int:
    """A file descriptor on a new TUN device called name (IFF_TUN | IFF_NO_PI)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    name, local, remote = argv
    tun = open_tun(name)
    raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_IPIP)
    raw.bind((local, 0))
    remote = socket.inet_pton(socket.AF_INET6, remote)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([tun, raw], [], [])
        if tun in readable:
            packet = os.read(tun, 65535)
            if packet[:1] and packet[0] >> 4 == 4:
                try:
                    raw.sendto(packet, (socket.inet_ntop(socket.AF_INET6, remote), 0))
                except OSError as e:  # too big, no route: dropped, as a router would
                    print(f"send: {e}", file=sys.stderr, flush=True)
        if raw in readable:
            packet, source = raw.recvfrom(65535)
            if socket.inet_pton(socket.AF_INET6, source[0]) == remote and packet[:1] and packet[0] >> 4 == 4:
                os.write(tun, packet)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
