"""Batched UDP I/O: relay._mmsg (recvmmsg, sendmmsg) and the Outbox and read passes built on it."""

import socket
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import datagrams
from relay.datagrams import BATCH, Outbox, read_loop, read_pass

# On Linux a missing extension fails these tests (scripts/setup builds it); elsewhere it is not built.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relay._mmsg is built on Linux only")
_mmsg = datagrams._mmsg


def bound(family=socket.AF_INET, host="127.0.0.1"):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


@pytest.fixture
def pair():
    a, b = bound(), bound()
    yield a, b
    a.close()
    b.close()


def settle(sock, count):
    """Wait (bounded) until count datagrams are queued on sock."""
    receiver = _mmsg.Receiver(256, 65536)
    got = []
    for _ in range(200):
        got += receiver.recv(sock)
        if len(got) >= count:
            return got
        time.sleep(0.005)
    return got


def test_the_extensions_are_built_on_linux():
    """On Linux the relay reads and writes in batches, answers plain Binding requests, relays routed
    datagrams, waits between reactor turns, walks Send indications and answers a live allocation's common
    requests and makes relay sockets in C: scripts/setup built relay._mmsg (with relay/_binding.c,
    relay/_route.c and relay/_stay.c, which reads a socket's descriptor in place: CPython's layout checked),
    relay._indications, relay._requests and relay._sockets."""
    from relay import _indications, allocation, relay_ports, server_fast

    assert datagrams._mmsg is not None and allocation._walk is _indications.parse_send
    assert server_fast._requests is not None
    assert callable(datagrams._mmsg.answer_binding) and hasattr(datagrams._mmsg.Receiver, "recv_serving")
    assert callable(datagrams._mmsg.route_client) and hasattr(datagrams._mmsg.Receiver, "poll_relays")
    assert hasattr(datagrams._mmsg.Receiver, "stay") and hasattr(datagrams._mmsg.Receiver, "holds")
    assert relay_ports._sockets is not None
    assert datagrams._mmsg.SOCKET_FIELDS


def test_receiver_reads_a_batch_with_the_addresses_recvfrom_gives(pair):
    """recv returns at most count datagrams, in order, each with recvfrom's (host, port); [] when empty."""
    a, b = pair
    for i in range(10):
        b.sendto(b"%d" % i, a.getsockname())
    receiver = _mmsg.Receiver(4, 2048)
    got = []
    for _ in range(200):
        batch = receiver.recv(a)
        assert len(batch) <= 4
        got += batch
        if len(got) == 10:
            break
    assert got == [(b"%d" % i, b.getsockname()) for i in range(10)]
    assert receiver.recv(a) == []


def test_receiver_gives_ipv6_addresses_as_host_and_port():
    """An IPv6 sender's address is (host, port), the first two fields of recvfrom's."""
    a, b = bound(socket.AF_INET6, "::1"), bound(socket.AF_INET6, "::1")
    try:
        b.sendto(b"six", a.getsockname())
        assert settle(a, 1) == [(b"six", b.getsockname()[:2])]
    finally:
        a.close()
        b.close()


def test_receiver_keeps_a_largest_datagram_whole(pair):
    """A 65,507-byte datagram (the IPv4 maximum) arrives whole."""
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    payload = bytes(range(256)) * 255 + b"x" * 227
    b.sendto(payload, a.getsockname())
    assert settle(a, 1) == [(payload, b.getsockname())]


def test_receiver_skips_a_pending_icmp_error():
    """A connection-refused error pending on the socket is cleared, not raised."""
    closed = bound()
    target = closed.getsockname()
    closed.close()
    sock = bound()
    try:
        sock.connect(target)
        sock.send(b"to nobody")
        receiver = _mmsg.Receiver(8, 2048)
        for _ in range(3):
            assert receiver.recv(sock) == []
    finally:
        sock.close()


def test_receiver_rejects_bad_sizes():
    """A batch of 0 or more than 1024, or buffers over 64 KiB, is a ValueError."""
    for count, size in ((0, 10), (1025, 10), (1, 0), (1, 65537)):
        with pytest.raises(ValueError):
            _mmsg.Receiver(count, size)


def test_send_delivers_a_list_and_counts_it(pair):
    """send puts every datagram of a list (more than one sendmmsg's worth) on the wire, in order."""
    a, b = pair
    datagrams_out = [(b"%d" % i, a.getsockname()) for i in range(150)]
    assert _mmsg.send(b, socket.AF_INET, datagrams_out) == 150
    assert settle(a, 150) == [(data, b.getsockname()) for data, _ in datagrams_out]


def test_send_skips_unusable_addresses_and_rejects_wrong_shapes(pair):
    """A host not of the socket's family or a port past 65535 is dropped like a failed sendto; a malformed
    item is a TypeError."""
    a, b = pair
    out = [(b"one", ("::1", 9)), (b"two", a.getsockname()), (b"three", ("not an address", 1)),
           (b"four", ("127.0.0.1", 70000))]
    assert _mmsg.send(b, socket.AF_INET, out) == 1
    assert settle(a, 1) == [(b"two", b.getsockname())]
    for bad in ([b"no tuple"], [(b"x",)], [(b"x", "host")]):
        with pytest.raises(TypeError):
            _mmsg.send(b, socket.AF_INET, bad)


@pytest.mark.parametrize("batched", [True, False])
def test_an_unusable_address_costs_only_its_own_datagram(pair, monkeypatch, batched):
    """A queued datagram to a port past 65535 is dropped at the end of the pass, the rest of the queue
    is sent (found by bench/fuzz.py native: it lost the whole queue)."""
    a, b = pair
    if not batched:
        monkeypatch.setattr(datagrams, "_mmsg", None)
    outbox = Outbox(b)

    def during():
        for target in (a.getsockname(), ("127.0.0.1", 70000), a.getsockname()):
            outbox.write(b"to %d" % target[1], target)

    read_pass(during)
    outbox.write(b"at once", ("127.0.0.1", 70000))
    assert [data for data, _ in settle(a, 2)] == [b"to %d" % a.getsockname()[1]] * 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=80))
def test_send_and_receive_carry_any_payloads_unchanged(pair, payloads):
    """Whatever bytes go out in one send come back, in order and unchanged, through Receiver."""
    a, b = pair
    assert _mmsg.send(b, socket.AF_INET, [(p, a.getsockname()) for p in payloads]) == len(payloads)
    assert [data for data, _ in settle(a, len(payloads))] == payloads


def test_outbox_sends_at_once_outside_a_pass_and_at_its_end_inside(pair):
    """Writes outside a read pass leave at once; inside one they queue until the pass ends."""
    a, b = pair
    outbox = Outbox(b)
    outbox.write(b"now", a.getsockname())
    assert settle(a, 1) == [(b"now", b.getsockname())]

    def during():
        outbox.sender(a.getsockname())(b"queued 1")
        read_pass(lambda: outbox.write(b"queued 2", a.getsockname()))  # a nested pass joins this one
        assert outbox.queue == [(b"queued 1", a.getsockname()), (b"queued 2", a.getsockname())]

    read_pass(during)
    assert outbox.queue == []
    assert settle(a, 2) == [(b"queued 1", b.getsockname()), (b"queued 2", b.getsockname())]


def test_outbox_of_a_socket_closed_during_the_pass_drops_its_queue(pair):
    """A socket closed before its pass ends (an allocation deleted mid-burst) sends nothing, raises nothing."""
    a, b = pair
    outbox = Outbox(b)

    def during():
        outbox.write(b"lost", a.getsockname())
        b.close()

    read_pass(during)
    time.sleep(0.05)
    assert _mmsg.Receiver(8, 2048).recv(a) == []


@pytest.mark.parametrize("batched", [True, False])
def test_read_loop_forwards_through_outboxes_with_and_without_the_extension(pair, monkeypatch, batched):
    """A read loop whose handler writes (a relay) forwards every datagram, batched or one call at a time."""
    if not batched:
        monkeypatch.setattr(datagrams, "_mmsg", None)
    a, b = pair
    sink = bound()
    try:
        outbox = Outbox(a)
        port = type("Port", (), {"socket": a, "addressFamily": socket.AF_INET})()
        read_loop(port, lambda data, addr: outbox.write(data.upper(), sink.getsockname()))
        total = BATCH + 5
        for i in range(total):
            b.sendto(b"d%d" % i, a.getsockname())
        time.sleep(0.05)
        port.doRead()
        assert [data for data, _ in settle(sink, total)] == [b"D%d" % i for i in range(total)]
    finally:
        sink.close()


def test_a_failing_flush_does_not_strand_other_queues(pair):
    """If one socket's queue cannot be sent, it is logged and dropped, and the other sockets still send."""
    a, b = pair
    broken, fine = Outbox(b), Outbox(b)

    def during():
        broken.write(12345, a.getsockname())  # not bytes: sendmmsg's caller refuses it
        fine.write(b"still sent", a.getsockname())

    read_pass(during)
    assert broken.queue == [] and fine.queue == []
    assert settle(a, 1) == [(b"still sent", b.getsockname())]


@pytest.mark.parametrize("batched", [True, False])
def test_read_loop_answers_plain_binding_requests_in_the_batch(pair, monkeypatch, batched):
    """Given a Binding tail, plain Binding requests are answered in C from the socket they reached, as the
    Python core answers, and counted; every other datagram reaches the handler (all of them without the
    extension)."""
    from rendezvous.stun import Attr, Class, Message, Method
    from rendezvous.stun.binding import Addresses, BindingServer

    if not batched:
        monkeypatch.setattr(datagrams, "_mmsg", None)
    a, b = pair
    local = a.getsockname()
    server = BindingServer(Addresses(*local), software="bench")
    plain = [Message(Method.BINDING, Class.REQUEST).encode(fingerprint=i % 2 == 1) for i in range(3)]
    other = [Message(Method.BINDING, Class.REQUEST).add(Attr.CHANGE_REQUEST, bytes(4)).encode(), b"hello"]
    handled, answered = [], []
    port = type("Port", (), {"socket": a, "addressFamily": socket.AF_INET})()
    read_loop(port, lambda data, addr: handled.append(data), server.plain_answer_tail(local), answered.append)
    for data in (plain[0], other[0], plain[1], other[1], plain[2]):
        b.sendto(data, local)
    time.sleep(0.05)
    port.doRead()
    if batched:
        expected = [server.handle_datagram(data, b.getsockname(), local).data for data in plain]
        assert sorted(data for data, _ in settle(b, 3)) == sorted(expected)
        assert (handled, answered) == (other, [3])
    else:
        assert (handled, answered) == ([plain[0], other[0], plain[1], other[1], plain[2]], [])


def turn_request(method, tag: bytes) -> bytes:
    """A TURN request of method whose transaction id starts with tag."""
    from rendezvous.stun import Class, Message

    return Message(method, Class.REQUEST, transaction_id=tag.ljust(12, b"-")).encode()


def test_recv_serving_hands_turn_requests_to_answer_and_sends_its_responses(pair):
    """With answer, a TURN request is answered from the socket it reached (b"": not answered); once a datagram
    is left for Python (None, or not a TURN request: Binding, another class, ChannelData), the batch's later
    requests are left too, in order."""
    from rendezvous.stun import Class, Message, Method

    a, b = pair
    receiver = _mmsg.Receiver(16, 2048)
    asked = []

    def answer(data, addr):
        asked.append(data)
        return {b"s": b"response to " + data[8:20], b"q": b"", b"n": None}[data[8:9]]

    def served(sent):
        asked.clear()
        for data in sent:
            b.sendto(data, a.getsockname())
        time.sleep(0.05)
        received, answered, rest = receiver.recv_serving(a, None, None, answer)
        assert (received, answered) == (len(sent), 0)
        return asked[:], [data for data, addr in rest if addr == b.getsockname()]

    requests = [turn_request(method, tag) for method, tag in ((Method.REFRESH, b"s1"), (Method.ALLOCATE, b"q2"),
                (Method.CHANNEL_BIND, b"s3"), (Method.ALLOCATE, b"n4"), (Method.REFRESH, b"s5"))]
    assert served(requests) == (requests[:4], requests[3:])
    assert settle(b, 2) == [(b"response to " + requests[i][8:20], a.getsockname()) for i in (0, 2)]
    for first in (Message(Method.SEND, Class.INDICATION).encode(), Message(Method.BINDING, Class.REQUEST).encode(),
                  b"\x40\x00\x00\x00"):
        assert served([first, requests[0]]) == ([], [first, requests[0]])
    assert receiver.recv(b) == []


def test_an_answer_that_fails_or_returns_no_bytes_fails_the_batch(pair):
    """An exception from answer, or an answer that is not bytes or None, is raised from recv_serving."""
    from rendezvous.stun import Method

    a, b = pair
    receiver = _mmsg.Receiver(16, 2048)
    for answer, error in ((lambda data, addr: 1 / 0, ZeroDivisionError), (lambda data, addr: "text", TypeError)):
        b.sendto(turn_request(Method.REFRESH, b"x"), a.getsockname())
        time.sleep(0.05)
        with pytest.raises(error):
            receiver.recv_serving(a, None, None, answer)
    with pytest.raises(TypeError):
        receiver.recv_serving(a, None, None, "not callable")


def test_a_stay_ends_when_an_answer_schedules_a_timed_call(pair):
    """A timed call scheduled by the Python a TURN request was handed to ends the stay before its next wait:
    the request sent meanwhile waits for the reactor."""
    import select

    from rendezvous.stun import Method

    a, b = pair
    timed, asked = [], []

    def answer(data, addr):
        asked.append(data)
        if len(asked) == 1:
            timed.append("a call due before the stay's deadline")
            b.sendto(turn_request(Method.REFRESH, b"second"), a.getsockname())
            time.sleep(0.05)
        return b"answered"

    poller = select.epoll()
    try:
        poller.register(a.fileno(), select.EPOLLIN)
        selectable = object()
        served = {a.fileno(): (selectable, 0, None, None, None, answer)}
        b.sendto(turn_request(Method.REFRESH, b"first"), a.getsockname())
        stayed = _mmsg.Receiver(16, 2048).stay(poller.fileno(), 5.0, {a.fileno(): selectable}, served, [], 100, 0.0,
                                               timed)
    finally:
        poller.close()
    assert stayed is None and len(asked) == 1
    assert [data for data, _ in settle(a, 1)] == [turn_request(Method.REFRESH, b"second")]
