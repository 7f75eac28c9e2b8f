"""Routed datagrams relayed in C (relay/_route.c) against the Python data path they stand in for."""

import os
import socket
import struct
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from relay import datagrams
from relay.allocation import PERMISSION_LIFETIME_SECONDS, Allocation, TokenBucket
from relay.credentials import Credentials
from relay.datagrams import DatagramPoller, Outbox
from relay.listeners import UdpEndpoints
from relay.peer_policy import PeerPolicy
from relay.relay_ports import RelaySocket
from relay.server import RelayPolicy, TurnServer
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.binding import Addresses, BindingServer

_mmsg = datagrams._mmsg
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
CLIENT = ("127.0.0.1", 40001)
PEERS = [("198.51.100.7", 5000), ("198.51.100.8", 5001), ("2001:db8::9", 5002), ("203.0.113.5", 5003)]
NUMBERS = [0x4000, 0x4001, 0x4002, 0x7FFE]


def bound(family=socket.AF_INET, host="127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


class World:
    """One UDP allocation over real sockets, its channels and permissions as drawn; nothing is read."""

    def __init__(self, channels: dict[int, int], permitted: list[int], bucket_bytes: int | None) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.sockets = [bound(), bound(), bound(socket.AF_INET6, "::1")]
        self.client_outbox = Outbox(self.sockets[0])
        self.relays = {4: RelaySocket(self.sockets[1].getsockname()[:2], None, self.sockets[1]),
                       6: RelaySocket(self.sockets[2].getsockname()[:2], None, self.sockets[2])}
        bucket = None if bucket_bytes is None else TokenBucket(bucket_bytes, self.clock)
        self.allocation = Allocation(("udp", CLIENT, ("127.0.0.1", 3478)), os.urandom(12), "user", None,
                                     self.relays, 2000, self.client_outbox.sender(CLIENT), bucket=bucket)
        for number, peer in channels.items():
            self.allocation.bind_channel(number, PEERS[peer], self.clock.seconds())
        self.allocation.permissions.clear()
        for peer in permitted:
            self.allocation.permit(PEERS[peer][0], self.clock.seconds())
        for relay in self.relays.values():
            relay.allocation = self.allocation
        self.routes = {CLIENT: self.allocation}

    def counters(self) -> tuple:
        a = self.allocation
        return a.packets_out, a.bytes_out, a.packets_in, a.bytes_in

    def python_sends(self, act) -> list:
        """What act() writes through the Outboxes during a read pass, as (fd, data, addr); nothing leaves."""
        outboxes = [self.client_outbox] + [relay.write.__self__ for relay in self.relays.values()]
        datagrams._pass.dirty = []
        try:
            act()
        finally:
            datagrams._pass.dirty = None
        sends = []
        for outbox in outboxes:
            sends += [(outbox.socket.fileno(), data, addr) for data, addr in outbox.queue]
            outbox.queue = []
        return sends

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def same_datagram(c: bytes, python: bytes) -> bool:
    """Equal, or both Data indications carrying the same peer and data (their transaction ids differ)."""
    if c[:2] != b"\x00\x17":
        return c == python
    c_msg, py_msg = Message.decode(c), Message.decode(python)
    return (len(c), c[:8]) == (len(python), python[:8]) and all(
        c_msg.get(attr) is not None and
        (c_msg.address(attr) if attr == Attr.XOR_PEER_ADDRESS else c_msg.get(attr))
        == (py_msg.address(attr) if attr == Attr.XOR_PEER_ADDRESS else py_msg.get(attr))
        for attr in (Attr.XOR_PEER_ADDRESS, Attr.DATA))


WORLDS = st.tuples(st.dictionaries(st.sampled_from(NUMBERS), st.integers(0, 3), max_size=3, ).filter(
                       lambda d: len(set(d.values())) == len(d)),
                   st.lists(st.integers(0, 3), max_size=4),
                   st.none() | st.just(10_000))
PAYLOADS = st.binary(max_size=120)


def channel_datagram(number: int, length: int, payload: bytes) -> bytes:
    return struct.pack("!HH", number, length) + payload


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
@SETTINGS
@given(WORLDS, st.sampled_from(NUMBERS + [0x3FFF, 0x8000]), st.integers(0, 130), PAYLOADS, st.integers(0, 5))
def test_c_relays_client_channel_data_as_python_does(world_spec, number, length, payload, cut):
    """For any channels, permissions and ChannelData (short, overlong, unbound, unpermitted), C sends what
    Allocation.channel_to_peer sends and counts the same, or leaves the datagram to Python untouched."""
    data = channel_datagram(number, length, payload)[:max(0, 4 + len(payload) - cut) if cut else None]
    if client_datagram_agrees(world_spec, data) is None:
        _, _, bucket_bytes = world_spec
        assert not data or not 0x40 <= data[0] < 0x80 or bucket_bytes is not None


def client_datagram_agrees(world_spec, data: bytes) -> list | None:
    """C's sends for data from CLIENT in one world, after checking they and the counters match what Python
    does in a twin world (dispatching as ServerDatagramProtocol.datagramReceived does), or that C left the
    datagram to Python untouched (then None)."""
    python, c = World(*world_spec), World(*world_spec)
    try:
        before = c.counters()
        routed = _mmsg.route_client(c.routes, data, CLIENT)
        if routed is None:
            assert c.counters() == before
            return None
        a = python.allocation
        expected = python.python_sends(lambda: a.channel_to_peer(data) if data[0] else a.send_indication(data))
        fds = {python.sockets[i].fileno(): i for i in range(3)}
        c_fds = {c.sockets[i].fileno(): i for i in range(3)}
        assert [(c_fds[fd], d, a) for fd, d, a in routed] == [(fds[fd], d, a) for fd, d, a in expected]
        assert c.counters() == python.counters()
        return routed
    finally:
        python.close()
        c.close()


def send_indication(peer, payload: bytes, fingerprint: bool = False) -> bytes:
    msg = Message(Method.SEND, Class.INDICATION)
    msg.add_address(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, payload)
    return msg.encode(fingerprint=fingerprint)


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
@SETTINGS
@given(WORLDS, st.integers(0, 3), PAYLOADS, st.booleans(), st.none() | st.tuples(st.integers(0, 40), st.integers(0, 255)))
def test_c_relays_send_indications_as_python_does(world_spec, peer, payload, fingerprint, corrupt):
    """For any permissions and Send indications (IPv4 and IPv6 peers, with FINGERPRINT, corrupted), C sends
    what Allocation.send_indication sends and counts the same, or leaves the datagram to Python untouched."""
    data = send_indication(PEERS[peer], payload, fingerprint)
    if corrupt is not None and corrupt[0] < len(data):
        data = data[:corrupt[0]] + bytes([corrupt[1]]) + data[corrupt[0] + 1:]
    client_datagram_agrees(world_spec, data)


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
@SETTINGS
@given(WORLDS, st.integers(0, 3), st.integers(0, 65535), PAYLOADS)
def test_c_relays_peer_data_as_python_does(world_spec, peer, port, payload):
    """For any channels and permissions, a datagram from a peer goes to the client as Allocation.from_peer
    sends it (ChannelData, or a Data indication with the same peer and data) and is counted the same, or
    is left to Python untouched."""
    source = (PEERS[peer][0], port if port % 2 else PEERS[peer][1])
    python, c = World(*world_spec), World(*world_spec)
    try:
        before = c.counters()
        routed = _mmsg.route_peer(c.allocation, payload, source)
        if routed is None:
            assert c.counters() == before and c.allocation.bucket is not None
            return
        expected = python.python_sends(lambda: python.allocation.from_peer(payload, source))
        assert len(routed) == len(expected)
        for (fd, data, addr), (py_fd, py_data, py_addr) in zip(routed, expected):
            assert (fd, addr) == (c.sockets[0].fileno(), py_addr) and py_fd == python.sockets[0].fileno()
            assert same_datagram(data, py_data)
        assert c.counters() == python.counters()
    finally:
        python.close()
        c.close()


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
def test_c_leaves_what_it_does_not_know_to_python():
    """C relays a routed client's ChannelData and Send indication to an IPv4 peer; a Send to an IPv6 peer,
    peer data too large for a Data indication, a table entry C cannot read, a stream client's send, a write
    that is not an Outbox's, a scoped IPv6 peer and an object that is not an Allocation go to Python, with
    no counter moved."""
    world = World({0x4000: 0}, [0, 1], None)
    try:
        frame = channel_datagram(0x4000, 3, b"abc")
        assert _mmsg.route_client(world.routes, frame, CLIENT) == [(world.sockets[1].fileno(), b"abc", PEERS[0])]
        indication = send_indication(PEERS[1], b"defg", fingerprint=True)
        assert _mmsg.route_client(world.routes, indication, CLIENT) == [(world.sockets[1].fileno(), b"defg", PEERS[1])]
        assert _mmsg.route_client(world.routes, send_indication(PEERS[2], b"v6"), CLIENT) is None
        assert _mmsg.route_client({}, frame, CLIENT) is None
        assert _mmsg.route_client({CLIENT: object()}, frame, CLIENT) is None
        assert _mmsg.route_peer(object(), b"x", PEERS[0]) is None
        assert _mmsg.route_peer(world.allocation, b"x", ("fe80::1%1", 5)) is None
        peer, write, key = world.allocation.channels[0x4000]
        world.allocation.channels[0x4000] = ((peer[0], "not a port"), write, key)
        assert _mmsg.route_client(world.routes, frame, CLIENT) is None  # an error in C: Python's path meets it
        world.allocation.channels[0x4000] = (peer, lambda data, addr: None, key)
        assert _mmsg.route_client(world.routes, frame, CLIENT) is None
        large = b"x" * 65_520  # no channel: too large for a Data indication's 16-bit length (IPv6 peers)
        assert _mmsg.route_peer(world.allocation, large, PEERS[1]) is None
        world.allocation.send = lambda data: None
        assert _mmsg.route_peer(world.allocation, b"x", PEERS[0]) is None
        assert world.counters() == (2, 7, 0, 0)
    finally:
        world.close()


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
def test_c_takes_and_drops_a_datagram_for_a_closed_socket():
    """ChannelData for a relay socket that closed, and peer data for a client socket that closed, are counted
    and sent nowhere (a closed socket's descriptor reads -1), as Outbox.flush drops what a closed socket
    queued; the same datagrams go out again through open sockets."""
    world = World({0x4000: 0}, [0], None)
    try:
        frame = channel_datagram(0x4000, 3, b"abc")
        assert _mmsg.route_client(world.routes, frame, CLIENT) == [(world.sockets[1].fileno(), b"abc", PEERS[0])]
        assert _mmsg.route_peer(world.allocation, b"xy", PEERS[0]) == [
            (world.sockets[0].fileno(), channel_datagram(0x4000, 2, b"xy"), CLIENT)]
        world.sockets[1].close()
        world.sockets[0].close()
        assert _mmsg.route_client(world.routes, frame, CLIENT) == []
        assert _mmsg.route_peer(world.allocation, b"xy", PEERS[0]) == []
        assert world.counters() == (2, 6, 2, 4)
    finally:
        world.close()


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
def test_c_reads_the_attributes_python_would_read_when_a_class_changes():
    """C reads an Allocation's and a Sender's slots in place, yet what counts is what attribute lookup returns:
    a subclass's property hiding a slot, or one given to a class after C read its slots, is what C reads, and
    once it is gone the slot is read again."""
    world = World({0x4000: 0}, [0], None)
    frame = channel_datagram(0x4000, 3, b"abc")
    to_peer = [(world.sockets[1].fileno(), b"abc", PEERS[0])]
    to_client = [(world.sockets[0].fileno(), channel_datagram(0x4000, 2, b"xy"), CLIENT)]
    sender_addr = datagrams.Sender.__dict__["addr"]

    class Watched(Allocation):
        __slots__ = ()

    try:
        assert _mmsg.route_client(world.routes, frame, CLIENT) == to_peer
        world.allocation.__class__ = Watched
        assert _mmsg.route_client(world.routes, frame, CLIENT) == to_peer
        Watched.channels = property(lambda self: {})
        assert _mmsg.route_client(world.routes, frame, CLIENT) == []  # no such channel: dropped
        del Watched.channels
        assert _mmsg.route_client(world.routes, frame, CLIENT) == to_peer
        assert _mmsg.route_peer(world.allocation, b"xy", PEERS[0]) == to_client
        datagrams.Sender.addr = property(lambda self: ("127.0.0.1", 9))
        assert _mmsg.route_peer(world.allocation, b"xy", PEERS[0]) == [
            (world.sockets[0].fileno(), channel_datagram(0x4000, 2, b"xy"), ("127.0.0.1", 9))]
        datagrams.Sender.addr = sender_addr
        assert _mmsg.route_peer(world.allocation, b"xy", PEERS[0]) == to_client
        assert world.counters() == (3, 9, 3, 6)
    finally:
        datagrams.Sender.addr = sender_addr
        world.close()


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
def test_c_relays_a_send_to_an_allowed_endpoint_of_the_relays_own():
    """A Send indication to an endpoint on a host of the relay's own that Python has allowed (its (host, port)
    permission) is relayed in C as Allocation.send_to_peer relays it; one to another port there, not yet
    decided, goes to Python."""
    python, c = World({}, [], None), World({}, [], None)
    try:
        for world in (python, c):
            world.allocation.own_hosts[PEERS[0][0]] = 2000.0
            world.allocation.permissions[PEERS[0]] = 2000.0
        data = send_indication(PEERS[0], b"own")
        expected = python.python_sends(lambda: python.allocation.send_indication(data))
        assert [(fd, d, a) for fd, d, a in expected] == [(python.sockets[1].fileno(), b"own", PEERS[0])]
        assert _mmsg.route_client(c.routes, data, CLIENT) == [(c.sockets[1].fileno(), b"own", PEERS[0])]
        assert c.counters() == python.counters()
        other = (PEERS[0][0], PEERS[0][1] + 1)
        assert _mmsg.route_client(c.routes, send_indication(other, b"undecided"), CLIENT) is None
        assert c.counters() == python.counters()
    finally:
        python.close()
        c.close()


@pytest.fixture(params=[True, False], ids=["c", "python"])
def batched(request, monkeypatch):
    """The read passes with the extension (routing in C) and without it (all in Python)."""
    if not request.param:
        monkeypatch.setattr(datagrams, "_mmsg", None)
    elif _mmsg is None:
        if sys.platform.startswith("linux"):
            pytest.fail("relay._mmsg is missing: scripts/setup builds it")
        pytest.skip("relay._mmsg is built on Linux only")
    return request.param


class Relay:
    """A client-facing socket, one allocation's relay socket behind a DatagramPoller, a client and a peer,
    all real sockets on loopback, read by hand."""

    def __init__(self, max_bps: int = 0) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.poller = DatagramPoller(type("Reactor", (), {"addReader": lambda self, reader: None,
                                                       "removeReader": lambda self, reader: None})())
        ports = type("Ports", (), {"expire": lambda self, now: None})()
        self.turn = TurnServer(RelayPolicy(max_bps=max_bps), Credentials(), PeerPolicy(), ports, self.clock)
        self.listen, self.client, self.peer = bound(), bound(), bound()
        local = self.listen.getsockname()
        self.protocol = UdpEndpoints(BindingServer(Addresses(*local)), self.turn).protocol(local)
        self.protocol.transport = type("Port", (), {"socket": self.listen, "addressFamily": socket.AF_INET})()
        self.protocol.startProtocol()
        relay_sock = bound()
        self.relay = RelaySocket(relay_sock.getsockname(), None, relay_sock)
        five_tuple = ("udp", self.client.getsockname(), local)
        bucket = TokenBucket(max_bps, self.clock) if max_bps else None
        self.allocation = Allocation(five_tuple, os.urandom(12), "user", None, {4: self.relay}, 5000,
                                     self.protocol.outbox.sender(self.client.getsockname()), bucket=bucket)
        self.turn.allocations[five_tuple] = self.allocation
        self.relay.allocation = self.allocation
        self.poller.add(self.relay)

    def to_peer(self, frames: list[bytes]) -> list[bytes]:
        """Send frames from the client, run the listener's read pass; what the peer got."""
        for frame in frames:
            self.client.sendto(frame, self.listen.getsockname())
        time.sleep(0.02)
        self.protocol.transport.doRead()
        return drain(self.peer)

    def to_client(self, payloads: list[bytes], source=None) -> list[bytes]:
        """Send payloads from the peer (or source) to the relay socket, run the poller; what the client got."""
        for payload in payloads:
            (source or self.peer).sendto(payload, self.relay.address)
        time.sleep(0.02)
        self.poller.doRead()
        return drain(self.client)

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def counted(self) -> tuple:
        """The allocation's packets and bytes to the peer, then to the client."""
        a = self.allocation
        return a.packets_out, a.bytes_out, a.packets_in, a.bytes_in

    def close(self) -> None:
        self.allocation.close()
        for sock in (self.listen, self.client, self.peer):
            sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(70000))
        except BlockingIOError:
            if got:
                time.sleep(0.01)
                try:
                    got.append(sock.recv(70000))
                except BlockingIOError:
                    return got
            time.sleep(0.005)
    return got


def test_channels_relay_both_ways_and_count_exactly(batched):
    """ChannelData reaches the peer and the peer's data the client as ChannelData (a Data indication without
    a channel), with packets and bytes counted exactly, with and without the extension."""
    with Relay() as relay:
        peer = relay.peer.getsockname()
        relay.allocation.bind_channel(0x4001, peer, relay.clock.seconds())
        frames = [channel_datagram(0x4001, n, bytes([n % 251]) * n) for n in (0, 5, 100, 1000)]
        assert sorted(relay.to_peer(frames)) == sorted(bytes([n % 251]) * n for n in (0, 5, 100, 1000))
        assert relay.protocol.routes == {relay.client.getsockname(): relay.allocation}
        assert sorted(relay.to_client([b"ab", b"c" * 999])) == sorted(
            [channel_datagram(0x4001, 2, b"ab"), channel_datagram(0x4001, 999, b"c" * 999)])
        relay.allocation.permit("127.0.0.1", relay.clock.seconds())
        other = bound()
        try:
            [indication] = relay.to_client([b"xyz"], other)
            msg = Message.decode(indication)
            assert (msg.address(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)) == (other.getsockname(), b"xyz")
        finally:
            other.close()
        assert relay.counted() == (4, 1105, 3, 1004)
        assert relay.turn.relayed_totals() == (4, 1105, 3, 1004)


def test_passes_for_many_allocations_count_each_exactly(batched):
    """Poller passes that relay for more allocations than C keeps counts for at once (256) tell each
    allocation's counters exactly, with and without the extension."""
    with Relay() as relay:
        datagrams.set_buffers(relay.client, 1 << 22)
        local, client = relay.listen.getsockname(), relay.client.getsockname()
        allocations = []
        try:
            for i in range(300):
                sock = bound()
                port = RelaySocket(sock.getsockname(), None, sock)
                allocation = Allocation(("udp", ("127.0.0.1", 50000 + i), local), os.urandom(12), "user", None,
                                        {4: port}, 5000, relay.protocol.outbox.sender(client))
                port.allocation = allocation
                allocation.permit("127.0.0.1", relay.clock.seconds())
                relay.poller.add(port)
                allocations.append(allocation)
            for i, allocation in enumerate(allocations):
                relay.peer.sendto(b"x" * (i + 1), allocation.relays[4].address)
            time.sleep(0.02)
            relay.poller.doRead()
            relay.poller.doRead()  # a pass takes at most 256 ready sockets (relay/_route.c, POLL_EVENTS)
            assert len(drain(relay.client)) == 300
            assert [(a.packets_in, a.bytes_in) for a in allocations] == [(1, i + 1) for i in range(300)]
        finally:
            for allocation in allocations:
                allocation.close()


@pytest.mark.skipif(_mmsg is None, reason="relay._mmsg is built on Linux only")
def test_python_run_from_a_stay_reads_exact_counters():
    """What C relays during a stay is counted before any Python runs: a TURN request handed to Python after
    ChannelData in the same batch finds it counted, and so does the reactor once the stay ends."""
    import select

    with Relay() as relay:
        relay.allocation.bind_channel(0x4001, relay.peer.getsockname(), relay.clock.seconds())
        listen, fd = relay.listen.getsockname(), relay.listen.fileno()
        seen = []

        def answer(data, addr):
            seen.append(relay.counted())
            return b""

        for n in (1, 2, 3):
            relay.client.sendto(channel_datagram(0x4001, n, b"x" * n), listen)
        relay.client.sendto(Message(Method.REFRESH, Class.REQUEST).encode(), listen)
        relay.client.sendto(channel_datagram(0x4001, 4, b"y" * 4), listen)
        time.sleep(0.02)
        poller, selectable = select.epoll(), object()
        try:
            poller.register(fd, select.EPOLLIN)
            served = {fd: (selectable, 0, None, {relay.client.getsockname(): relay.allocation}, None, answer)}
            stayed = _mmsg.Receiver(16, 2048).stay(poller.fileno(), 1.0, {fd: selectable}, served, [], 1, 0.0)
        finally:
            poller.close()
        assert stayed is None and seen == [(3, 6, 0, 0)]
        assert relay.counted() == (4, 10, 0, 0)
        assert len(drain(relay.peer)) == 4


def test_send_indications_relay_both_ways_and_count_exactly(batched):
    """A Send indication reaches a permitted peer and its answer comes back as a Data indication, counted
    exactly; one to a peer without permission is dropped, with and without the extension."""
    with Relay() as relay:
        peer = relay.peer.getsockname()
        relay.allocation.permit(peer[0], relay.clock.seconds())
        sent = [send_indication(peer, b"a" * 10), send_indication(peer, b"b" * 1000, fingerprint=True),
                send_indication(("127.0.0.2", peer[1]), b"no permission")]
        assert sorted(relay.to_peer(sent)) == [b"a" * 10, b"b" * 1000]
        [indication] = relay.to_client([b"back"])
        msg = Message.decode(indication)
        assert (msg.address(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)) == (peer, b"back")
        assert relay.counted() == (2, 1010, 1, 4)


def test_expired_permissions_and_channels_stop_the_data(batched):
    """Once the sweep drops a permission (and then the channel), neither direction relays or counts."""
    with Relay() as relay:
        peer = relay.peer.getsockname()
        relay.allocation.bind_channel(0x4001, peer, relay.clock.seconds())
        relay.clock.advance(PERMISSION_LIFETIME_SECONDS + 1)
        relay.turn.expire(relay.clock.seconds())
        assert relay.to_peer([channel_datagram(0x4001, 1, b"x")]) == []
        assert relay.to_client([b"y"]) == []
        relay.clock.advance(600)
        relay.turn.expire(relay.clock.seconds())
        assert 0x4001 not in relay.allocation.channels
        assert relay.to_peer([channel_datagram(0x4001, 1, b"x")]) == [] and relay.to_client([b"y"]) == []
        assert relay.counted() == (0, 0, 0, 0)


def test_a_bandwidth_quota_holds_on_both_paths(batched):
    """An allocation's bytes-per-second limit drops what exceeds it, both ways, and counts only what passed."""
    with Relay(max_bps=250) as relay:
        relay.allocation.bind_channel(0x4001, relay.peer.getsockname(), relay.clock.seconds())
        frames = [channel_datagram(0x4001, 100, bytes([i]) * 100) for i in range(3)]
        assert len(relay.to_peer(frames)) == 2
        assert len(relay.to_client([b"p" * 100] * 3)) == 0  # the bucket is spent
        relay.clock.advance(1)
        assert len(relay.to_client([b"p" * 100] * 3)) == 2
        assert relay.counted() == (2, 200, 2, 200)


def test_data_from_an_unpermitted_peer_or_client_without_allocation_is_dropped(batched):
    """A peer without permission reaches no client; ChannelData from an unknown client makes no route."""
    with Relay() as relay, bound(host="127.0.0.2") as stranger:
        relay.allocation.bind_channel(0x4001, relay.peer.getsockname(), relay.clock.seconds())
        assert relay.to_client([b"not permitted"], stranger) == []
        stranger.sendto(channel_datagram(0x4001, 1, b"x"), relay.listen.getsockname())
        time.sleep(0.02)
        relay.protocol.transport.doRead()
        assert drain(relay.peer) == [] and relay.protocol.routes == {}
        assert relay.allocation.packets_in == relay.allocation.packets_out == 0


def test_a_failing_c_pass_is_logged_and_the_relay_sockets_stay_read(monkeypatch):
    """An error out of the C pass (out of memory, say) is logged; the poller keeps its sockets and is not
    dropped by the reactor."""
    if _mmsg is None:
        pytest.skip("relay._mmsg is built on Linux only")

    class Failing:
        def poll_relays(self, *args):
            raise MemoryError("test")

    logged = []
    monkeypatch.setattr(datagrams, "log", type("Log", (), {"failure": lambda self, *a, **k: logged.append(a)})())
    with Relay() as relay:
        monkeypatch.setattr(datagrams, "_receiver", Failing())
        relay.poller.doRead()
        assert logged == [("relaying from the relay sockets",)]
        assert relay.poller.descriptors() == [relay.relay.fileno()]
