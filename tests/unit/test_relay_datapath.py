"""The relay data path: hand-parsed Send indications, Data indications, routes, read loops, the poller."""

import select
import socket
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import tcp, udp
from twisted.internet.protocol import DatagramProtocol, Protocol

from relay import allocation
from relay.allocation import data_indication, parse_send_indication, walk_send_indication
from relay.datagrams import MAX_READS_PER_WAKEUP, DatagramPoller, StreamOutbox, read_loop, read_pass, receive_drops
from relay.listeners import ServerDatagramProtocol, UdpEndpoints
from relay.relay_ports import RelayPorts, RelaySocket
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_uint32
from rendezvous.stun.binding import Addresses, BindingServer
from tests.turn_helpers import bind, permit
from tests.unit.test_turn_server import PEER, SERVER, UDP_TUPLE, Client, clock, make_server  # noqa: F401 (clock)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOSTS = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t),
    st.sampled_from(["2001:db8::1", "2001:db8:ffff::abcd", "fe80::1"]),
)
PEERS = st.tuples(HOSTS, st.integers(0, 65535))


def send_indication(peer, payload: bytes, fingerprint: bool = False) -> bytes:
    msg = Message(Method.SEND, Class.INDICATION)
    msg.add_address(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, payload)
    return msg.encode(fingerprint=fingerprint)


@SETTINGS
@given(PEERS, st.binary(max_size=300), st.booleans())
def test_send_indication_parses_like_the_codec(peer, payload, fingerprint):
    """The hand parser finds the peer and payload that Message.decode finds."""
    data = send_indication(peer, payload, fingerprint)
    msg = Message.decode(data)
    assert parse_send_indication(data) == (msg.address(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)) == (peer, payload)


@SETTINGS
@given(st.binary(max_size=200) | st.builds(lambda d, i, b: d[:i] + bytes([b]) + d[i + 1:],
                                            st.just(send_indication(PEER, b"payload", True)),
                                            st.integers(0, 63), st.integers(0, 255)))
def test_send_indication_parser_never_raises(data):
    """Arbitrary and mutated bytes give a result or None, never an exception."""
    result = parse_send_indication(data)
    assert result is None or (isinstance(result[0], tuple) and isinstance(result[1], bytes))


def _with_attributes(attributes: list[tuple[int, bytes]], fingerprint: bool) -> bytes:
    """A Send indication header and the attributes given, FINGERPRINT last when asked (lengths fixed)."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attributes)
    data = bytearray(b"\x00\x16" + struct.pack("!H", len(body) + (8 if fingerprint else 0)) + b"\x21\x12\xa4\x42"
                     + bytes(range(12)) + body)
    if fingerprint:
        data += struct.pack("!HHI", Attr.FINGERPRINT, 4, zlib.crc32(data) ^ 0x5354554E)
    return bytes(data)


ATTRIBUTES = st.lists(st.tuples(st.sampled_from([Attr.XOR_PEER_ADDRESS, Attr.DATA, Attr.MESSAGE_INTEGRITY,
                                                 Attr.MESSAGE_INTEGRITY_SHA256, Attr.SOFTWARE, Attr.FINGERPRINT]),
                                st.binary(max_size=24)), max_size=6)


@pytest.mark.skipif(allocation._walk is walk_send_indication, reason="relay._indications is not built")
@SETTINGS
@given(ATTRIBUTES, st.booleans(), st.integers(0, 80), st.integers(0, 255))
def test_the_c_walker_agrees_with_the_python_one(attributes, fingerprint, where, byte):
    """relay._indications.parse_send and walk_send_indication give the same answer, for well-formed,
    odd and corrupted Send indications alike."""
    data = _with_attributes(attributes, fingerprint)
    corrupted = data[:where] + bytes([byte]) + data[where + 1:]
    for candidate in (data, corrupted, data[:where]):
        assert allocation._walk(candidate) == walk_send_indication(candidate)


def test_malformed_send_indications_are_dropped():
    """Bad header, bad FINGERPRINT, attribute after FINGERPRINT, overrun or missing DATA: None."""
    good = send_indication(PEER, b"abc", fingerprint=True)
    assert parse_send_indication(good) == (PEER, b"abc")
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    after = bytearray(good + struct.pack("!HH", Attr.SOFTWARE, 0))
    struct.pack_into("!H", after, 2, len(after) - 20)
    overrun = bytearray(good)
    struct.pack_into("!H", overrun, 22, 400)  # XOR-PEER-ADDRESS length
    request = bytearray(good)
    request[1] = 0x06  # a Send request
    no_data = Message(Method.SEND, Class.INDICATION).add_address(Attr.XOR_PEER_ADDRESS, PEER).encode()
    for data in (bad_crc, bytes(after), bytes(overrun), bytes(request), no_data, good[:20], good[:-4], b""):
        assert parse_send_indication(data) is None


def test_data_indication_decodes_with_a_fresh_transaction_id():
    """Each Data indication has its own transaction id; IPv4 and IPv6 peers decode back."""
    for peer in (PEER, ("2001:db8::7", 443)):
        first, second = data_indication(peer, b"xyz"), data_indication(peer, b"xyz")
        assert first[8:20] != second[8:20]
        for raw in (first, second):
            msg = Message.decode(raw)
            assert msg.address(Attr.XOR_PEER_ADDRESS) == peer and msg.get(Attr.DATA) == b"xyz"


class RecordingSocket:
    """What the client-facing protocol sends back to clients."""

    def __init__(self):
        self.sent = []

    def sendto(self, data, addr):
        self.sent.append((data, addr))


def listener(server) -> ServerDatagramProtocol:
    protocol = UdpEndpoints(BindingServer(Addresses(*SERVER)), server).protocol(SERVER)
    protocol.transport = type("Port", (), {"socket": RecordingSocket(), "write": lambda *a: None})()
    return protocol


def channel_data(number: int, payload: bytes) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload


def test_udp_listener_routes_follow_the_allocation(clock):
    """ChannelData and Send indications reach the client's current allocation, and none once it is gone."""
    server = make_server(clock)
    protocol = listener(server)
    client_address = UDP_TUPLE[1]
    client = Client(server)
    client.allocate()
    bind(client, 0x4001, PEER)
    first = server.allocations[UDP_TUPLE]
    protocol.datagramReceived(channel_data(0x4001, b"one"), client_address)
    protocol.datagramReceived(send_indication(PEER, b"two"), client_address)
    assert first.relays[4].sent == [(b"one", PEER), (b"two", PEER)]
    assert protocol.routes == {client_address: first}
    client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
    assert protocol.routes == {}
    protocol.datagramReceived(channel_data(0x4001, b"dropped"), client_address)
    client.allocate()
    second = server.allocations[UDP_TUPLE]
    permit(client, PEER)
    protocol.datagramReceived(send_indication(PEER, b"three"), client_address)
    assert second.relays[4].sent == [(b"three", PEER)] and protocol.routes == {client_address: second}


def test_udp_listener_drops_data_without_an_allocation(clock):
    """ChannelData and Send indications from a client with no allocation leave no route and send nothing."""
    server = make_server(clock)
    protocol = listener(server)
    protocol.datagramReceived(channel_data(0x4001, b"x"), ("203.0.113.99", 1))
    protocol.datagramReceived(send_indication(PEER, b"x"), ("203.0.113.99", 1))
    protocol.datagramReceived(b"\x40\x01", ("203.0.113.99", 1))
    assert protocol.routes == {} and protocol.transport.socket.sent == []


@pytest.fixture
def udp_pair():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.settimeout(5)
    yield receiver, sender
    receiver.close()
    sender.close()


def fake_port(sock):
    return type("Port", (), {"socket": sock, "addressFamily": socket.AF_INET})()


def test_read_loop_reads_a_bounded_batch_and_survives_a_failing_handler(udp_pair):
    """One wakeup reads at most MAX_READS_PER_WAKEUP datagrams; a handler error loses only its datagram."""
    receiver, sender = udp_pair
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    got = []

    def handler(data, addr):
        if data == b"7":
            raise ValueError("boom")
        got.append((data, addr))

    port = fake_port(receiver)
    read_loop(port, handler)
    total = MAX_READS_PER_WAKEUP + 10
    for i in range(total):
        sender.sendto(str(i).encode(), receiver.getsockname())
    port.doRead()
    assert len(got) == MAX_READS_PER_WAKEUP - 1
    port.doRead()
    port.doRead()  # empty: returns at EAGAIN
    assert len(got) == total - 1 and got[0] == (b"0", sender.getsockname())


def test_relay_socket_delivers_to_its_current_allocation(udp_pair):
    """Datagrams from peers go to the allocation set on the relay socket, and nowhere without one."""
    receiver, sender = udp_pair
    relay = RelaySocket(receiver.getsockname(), None, receiver)
    received = []
    relay.allocation = type("Allocation", (), {"from_peer": lambda self, data, peer: received.append((data, peer))})()
    sender.sendto(b"for the allocation", receiver.getsockname())
    relay.doRead()
    relay.allocation = None
    sender.sendto(b"dropped", receiver.getsockname())
    relay.doRead()
    assert received == [(b"for the allocation", sender.getsockname())]
    relay.write(b"to the peer", sender.getsockname())
    assert sender.recv(100) == b"to the peer"


class RecordingReactor:
    """The reader registrations a DatagramPoller makes."""

    def __init__(self):
        self.readers = []

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        self.readers.remove(reader)


class SocketPort:
    """A port stand-in around a real socket: doRead drains it into a list (or fails)."""

    def __init__(self, fail=False):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.read, self.fail = [], fail

    def fileno(self):
        return self.socket.fileno()

    def doRead(self):
        if self.fail:
            raise OSError("read failed")
        while True:
            try:
                self.read.append(self.socket.recv(100))
            except BlockingIOError:
                return


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="DatagramPoller needs epoll (Linux)")
def test_poller_reads_every_ready_port_in_one_wakeup(udp_pair):
    """One doRead serves every ready port; the poller is a reactor reader from its first port until idle() finds
    none left."""
    _, sender = udp_pair
    reactor = RecordingReactor()
    poller = DatagramPoller(reactor)
    ports = [SocketPort(), SocketPort(), SocketPort(fail=True)]
    try:
        for port in ports:
            poller.add(port)
        assert reactor.readers == [poller]
        for port in ports:
            sender.sendto(b"hello", port.socket.getsockname())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(p.read for p in ports[:2]):
            poller.doRead()
        assert [p.read for p in ports] == [[b"hello"], [b"hello"], []]
        assert poller.fileno() != ports[2].fileno()
        poller.doRead()  # the failing port was dropped, not retried
        for port in ports[:2]:
            poller.remove(port)
        assert reactor.readers == [poller]  # no epoll_ctl pair per allocation at a paced rate
        poller.add(ports[0])
        poller.idle()
        assert reactor.readers == [poller]
        poller.remove(ports[0])
        poller.idle()
        assert reactor.readers == []
    finally:
        for port in ports:
            port.socket.close()


class _Readers:
    """The part of a reactor receive_drops and udp.Port use."""

    def __init__(self) -> None:
        self.readers = set()

    def addReader(self, reader) -> None:
        self.readers.add(reader)

    def removeReader(self, reader) -> None:
        self.readers.discard(reader)

    def removeWriter(self, writer) -> None:
        pass

    def getReaders(self) -> list:
        return list(self.readers)

    def callLater(self, delay, f, *args):
        f(*args)


def test_receive_drops_counts_a_full_queue():
    """A socket nobody reads, with a small buffer, overflows; the drops show on it and on no other."""
    readers = _Readers()
    port = udp.Port(0, DatagramProtocol(), "127.0.0.1", reactor=readers)
    port.startListening()
    try:
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert receive_drops(readers) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):  # bounded: ~200 kB to our own loopback socket
                sender.sendto(b"x" * 1000, ("127.0.0.1", port.getHost().port))
        assert receive_drops(readers) > 0
        readers.readers.clear()
        assert receive_drops(readers) == 0
    finally:
        port.stopListening()



@pytest.mark.parametrize("epoll", [True, False], ids=["poller", "reactor"])
def test_relay_sockets_are_read_until_they_close(epoll):
    """A bound relay socket is read (through the poller, or by the reactor without epoll) and leaves it on close;
    the idle poller leaves the reactor at the next sweep."""
    readers = _Readers()
    ports = RelayPorts(readers, {4: "127.0.0.1"}, 61400, 61499)
    if not epoll:
        ports.poller = None
    elif ports.poller is None:
        pytest.skip("DatagramPoller needs epoll (Linux)")
    relay, _ = ports.open(4)
    received = []
    relay.allocation = type("Allocation", (), {"from_peer": lambda self, data, peer: received.append(data)})()
    reader = ports.poller or relay
    try:
        assert readers.getReaders() == [reader] and ports.open_count == 1
        assert receive_drops(readers) == 0  # the relay socket is among those counted
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"hello", relay.address)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not received:
            reader.doRead()
        assert received == [b"hello"]
    finally:
        relay.close()
    assert ports.open_count == 0 and relay.fileno() == -1
    assert readers.getReaders() == ([ports.poller] if epoll else [])
    ports.expire(0.0)
    assert readers.getReaders() == []
    relay.close()  # twice is harmless
    assert ports.open_count == 0


class _Writers(_Readers):
    """A reactor stand-in that also records writers."""

    def __init__(self) -> None:
        super().__init__()
        self.writers = set()

    def addWriter(self, writer) -> None:
        self.writers.add(writer)


def test_stream_outbox_sends_a_pass_in_one_write_and_keeps_order():
    """Frames of one read pass leave in one direct send when Twisted holds nothing for the
    connection (no writer registered); behind bytes Twisted holds, they queue in order."""
    reactor = _Writers()
    ours, client = socket.socketpair()
    with ours, client:
        connection = tcp.Connection(ours, Protocol(), reactor=reactor)
        connection.connected = True
        outbox = StreamOutbox(connection)
        read_pass(lambda: [outbox.write(frame) for frame in (b"one", b"two", b"three")])
        assert client.recv(100) == b"onetwothree" and reactor.writers == set()
        outbox.write(b"[held]")  # outside a pass: Twisted's write, buffered until the socket is writable
        assert reactor.writers == {connection}
        read_pass(lambda: outbox.write(b"[after]"))
        connection.doWrite()
        client.setblocking(False)
        assert client.recv(100) == b"[held][after]"
