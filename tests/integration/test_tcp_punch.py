"""TCP hole punching and the TCP mapped address on loopback (two sides on 127.0.0.1 and 127.0.0.2)."""

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from rendezvous.peer.tcp_punch import TcpPunchFailed, punch_tcp, tcp_mapped_address
from tests.conftest import ALT_IP, PRIMARY_IP, free_port

pytestmark = pytest.mark.integration


class Echo(Protocol):
    """Keeps what arrives first: ``received`` fires with those bytes."""

    def __init__(self):
        self.received = Deferred()

    def dataReceived(self, data):
        if not self.received.called:
            self.received.callback(data)


TCP_STATES = {"01": "established", "02": "syn-sent", "0A": "listen"}


def our_sockets(port: int) -> list[str]:
    """States of this process's open TCP sockets bound to local port (from /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    states = []
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[9] in inodes:
                states.append(TCP_STATES.get(fields[3], fields[3]))
    return states


@pytest_twisted.ensureDeferred
async def test_tcp_mapped_address_from_a_shared_port(node):
    """The STUN server sees the chosen local port, and a listener may share that port meanwhile."""
    port = free_port(ips=(PRIMARY_IP,))
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((PRIMARY_IP, port))
        listener.listen()
        mapped = await tcp_mapped_address(reactor, port, (node.ip, node.port), bind_ip=PRIMARY_IP)
    assert mapped == (PRIMARY_IP, port)
    assert await tcp_mapped_address(reactor, port, (node.ip, node.tls_port), tls=True, bind_ip=PRIMARY_IP) == mapped


@pytest.mark.parametrize("low_ttl", [2, None], ids=["low-ttl", "full-ttl"])
@pytest_twisted.ensureDeferred
async def test_two_sides_punch_at_the_same_instant(low_ttl):
    """Both sides punching at one instant get one connection and exchange bytes both ways."""
    port_a = free_port(ips=(PRIMARY_IP,))
    port_b = free_port(ips=(ALT_IP,), exclude={port_a})
    start = reactor.seconds() + 0.2
    a = punch_tcp(reactor, port_a, [(ALT_IP, port_b)], start, 5, Factory.forProtocol(Echo), low_ttl, PRIMARY_IP)
    b = punch_tcp(reactor, port_b, [(PRIMARY_IP, port_a)], start, 5, Factory.forProtocol(Echo), low_ttl, ALT_IP)
    (proto_a, peer_a, how_a), (proto_b, peer_b, how_b) = await a, await b
    assert (peer_a, peer_b) == ((ALT_IP, port_b), (PRIMARY_IP, port_a))
    assert {how_a, how_b} <= {"simultaneous-open", "accept"}
    proto_a.transport.write(b"from a")
    proto_b.transport.write(b"from b")
    assert await proto_b.received == b"from a" and await proto_a.received == b"from b"
    assert proto_a.transport.getHandle().getsockopt(socket.IPPROTO_IP, socket.IP_TTL) > 2  # restored
    # The one connection is all that is left on either port: listeners and spare attempts are closed.
    assert our_sockets(port_a) == our_sockets(port_b) == ["established"]
    proto_a.transport.loseConnection()
    proto_b.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_no_peer_times_out_and_closes_everything():
    """Against a peer that never punches, it fails after the timeout with every socket closed."""
    port = free_port(ips=(PRIMARY_IP,))
    silent = (ALT_IP, free_port(ips=(ALT_IP,), exclude={port}))
    start = reactor.seconds()
    with pytest.raises(TcpPunchFailed) as failed:
        await punch_tcp(reactor, port, [silent], start, 1.0, Factory.forProtocol(Echo), bind_ip=PRIMARY_IP)
    assert reactor.seconds() - start < 3
    assert silent in failed.value.errors and "refused" in failed.value.errors[silent].lower()
    assert our_sockets(port) == []


@pytest_twisted.ensureDeferred
async def test_strangers_are_not_accepted():
    """A connection from an address that is not a peer is closed, and the punch goes on."""
    port = free_port(ips=(PRIMARY_IP,))
    peer = (ALT_IP, free_port(ips=(ALT_IP,), exclude={port}))
    punch = punch_tcp(reactor, port, [peer], reactor.seconds() + 5, 1.0, Factory.forProtocol(Echo), bind_ip=PRIMARY_IP)
    punch.addErrback(lambda f: f.trap(CancelledError))

    def stranger():  # from 127.0.0.1, not the peer; in a thread, as the reactor must accept meanwhile
        with socket.create_connection((PRIMARY_IP, port), timeout=2) as s:
            return s.recv(10)

    assert await deferToThread(stranger) == b""
    assert not punch.called and our_sockets(port) == ["listen"]
    punch.cancel()
    await deferLater(reactor, 0, lambda: None)  # the listener closes on the next turn
    assert our_sockets(port) == []
