"""TURN requests read in C handed to relay.server_fast from inside the batch (relay/_mmsg.c), beside the read pass."""

import socket
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from relay import datagrams
from relay.credentials import Credentials, StaticUsers
from relay.listeners import UdpEndpoints
from relay.peer_policy import PeerPolicy
from relay.relay_ports import RelayPorts
from relay.server import RelayPolicy, TurnServer
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_uint32
from rendezvous.stun.binding import Addresses, BindingServer
from tests.turn_helpers import TurnRequests, bind, code, permit
from tests.unit.test_relay_ports import Readers

REALM = "example.org"
PEER = ("127.0.0.1", 9)


class Listener(TurnRequests):
    """A client over loopback to a client-facing UDP socket whose read loop is run by hand after each request."""

    def __init__(self, nonces=None, ports: tuple[int, int] = (0, 0)) -> None:
        super().__init__("alice", "secret", REALM)
        self.clock = Clock()
        self.clock.advance(1000)
        self.ports = RelayPorts(Readers(), {4: "127.0.0.1"}, 61800, 61899, clock=self.clock)
        credentials = Credentials([StaticUsers({"alice": "secret"}, REALM)])
        policy = PeerPolicy(allow=["127.0.0.0/8"])
        self.turn = TurnServer(RelayPolicy(realm=REALM), credentials, policy, self.ports, self.clock, nonces)
        self.sock, self.client = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        self.sock.bind(("127.0.0.1", ports[0]))
        self.sock.setblocking(False)
        self.client.bind(("127.0.0.1", ports[1]))
        self.client.settimeout(2.0)
        local = self.sock.getsockname()
        self.protocol = UdpEndpoints(BindingServer(Addresses(*local)), self.turn).protocol(local)
        self.handled = []  # what reached datagramReceived
        python_path = self.protocol.datagramReceived
        self.protocol.datagramReceived = lambda data, addr: (self.handled.append(data), python_path(data, addr))
        self.protocol.transport = type("Port", (), {"socket": self.sock, "addressFamily": socket.AF_INET})()
        self.protocol.startProtocol()

    def ask(self, msg: Message) -> Message | None:
        self.client.sendto(msg.raw or msg.encode(), self.sock.getsockname())
        time.sleep(0.01)
        datagrams.read_pass(self.protocol.transport.doRead)
        return Message.decode(self.client.recv(65536))

    def close(self) -> None:
        self.turn.stop()
        self.ports.stop()
        self.sock.close()
        self.client.close()


@pytest.fixture(params=[True, False], ids=["c", "python"])
def batched(request, monkeypatch):
    """The read loop with the extension (TURN requests handed over from C) and without it (a read pass)."""
    if not request.param:
        monkeypatch.setattr(datagrams, "_mmsg", None)
    elif datagrams._mmsg is None:
        if sys.platform.startswith("linux"):
            pytest.fail("relay._mmsg is missing: scripts/setup builds it")
        pytest.skip("relay._mmsg is built on Linux only")
    return request.param


def test_an_allocation_cycle_is_answered_from_c_without_a_read_pass(batched):
    """The 401, Allocate, CreatePermission, ChannelBind and Refresh 0 are answered alike with and without
    the extension; with it none of them reaches datagramReceived."""
    listener = Listener()
    try:
        assert listener.allocate().cls == Class.SUCCESS
        assert permit(listener, PEER).cls == Class.SUCCESS
        assert bind(listener, 0x4000, PEER).cls == Class.SUCCESS
        assert listener.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
        assert listener.turn.allocations == {} and listener.ports.open_count == 0
        assert len(listener.handled) == (0 if batched else 5)
    finally:
        listener.close()


def test_what_the_fast_path_leaves_still_reaches_the_turn_core(batched):
    """A request relay.server_fast does not answer (a Refresh with no allocation: 437) goes on, in C's
    batch, to datagramReceived and the TURN core, which answers it."""
    listener = Listener()
    try:
        response = listener.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(600)))
        assert (response.cls, code(response)) == (Class.ERROR, 437)
        assert len(listener.handled) == (1 if batched else 2)  # the 401 too, on the Python path
    finally:
        listener.close()


def test_an_exception_answering_is_logged_and_not_answered(batched, monkeypatch):
    """A failure in the TURN core's fast path is logged, and the request left unanswered, on both paths."""
    from twisted.logger import globalLogPublisher

    from relay import listeners

    failures = []

    def observe(event) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"].value)

    listener = Listener()
    globalLogPublisher.addObserver(observe)
    try:
        monkeypatch.setattr(listeners, "answer_fast", lambda *args: 1 / 0)
        listener.client.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.allocate()
        assert listener.turn.allocations == {}
        assert [type(failure) for failure in failures] == [ZeroDivisionError]
    finally:
        globalLogPublisher.removeObserver(observe)
        listener.close()


STEPS = ("challenge", "allocate", "even allocate", "permission", "denied permission", "channel", "bad channel",
         "refresh", "release", "wrong password", "foreign nonce", "binding", "changed binding", "channel data",
         "send", "garbage")


def datagram(step: str, nonce: str, tid: bytes) -> bytes:
    """One datagram of step from the client alice, signed with nonce where it is a signed request."""
    from rendezvous.stun.attributes import encode_even_port, encode_requested_transport, encode_uint16
    from rendezvous.stun.integrity import long_term_key

    if step == "garbage":
        return b"\x00\x01\x00\x04" + tid[:8]
    if step == "channel data":
        return b"\x40\x00\x00\x03abc\x00"
    if step in ("binding", "changed binding"):
        msg = Message(Method.BINDING, Class.REQUEST, tid)
        return (msg.add(Attr.CHANGE_REQUEST, bytes(4)) if step == "changed binding" else msg).encode()
    if step == "send":
        msg = Message(Method.SEND, Class.INDICATION, tid).add(Attr.DATA, b"hi")
        return msg.add_address(Attr.XOR_PEER_ADDRESS, PEER).encode()
    method = {"challenge": Method.ALLOCATE, "allocate": Method.ALLOCATE, "even allocate": Method.ALLOCATE,
              "wrong password": Method.ALLOCATE,
              "foreign nonce": Method.ALLOCATE, "refresh": Method.REFRESH, "release": Method.REFRESH,
              "channel": Method.CHANNEL_BIND, "bad channel": Method.CHANNEL_BIND}.get(step, Method.CREATE_PERMISSION)
    msg = Message(method, Class.REQUEST, tid)
    if method == Method.ALLOCATE:
        msg.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
    if step == "challenge":
        return msg.encode()
    if step == "even allocate":  # left to the Python path by relay.server_fast
        msg.add(Attr.EVEN_PORT, encode_even_port(False))
    if method == Method.CHANNEL_BIND:
        msg.add(Attr.CHANNEL_NUMBER, encode_uint16(0x4000 if step == "channel" else 0x0100))
    if method in (Method.CHANNEL_BIND, Method.CREATE_PERMISSION):
        msg.add_address(Attr.XOR_PEER_ADDRESS, ("192.0.2.1", 9) if step == "denied permission" else PEER)
    if method == Method.REFRESH:
        msg.add(Attr.LIFETIME, encode_uint32(0 if step == "release" else 600))
    msg.add(Attr.USERNAME, b"alice").add(Attr.REALM, REALM.encode())
    if step == "foreign nonce":  # one character changed: a nonce this relay did not issue
        nonce = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    msg.add(Attr.NONCE, nonce.encode())
    password = "wrong" if step == "wrong password" else "secret"
    return msg.encode(integrity_key=long_term_key("alice", REALM, password))


def answers(batched: bool, batches: list[list[str]], ports: tuple[int, int] = (0, 0)) -> tuple[list, tuple]:
    """The datagrams the client got back for each batch of steps, sent at once and read in one doRead, from a
    listener whose nonces, clock and relay ports are the same on every call; and the listener's and the
    client's ports (ports: those to bind, 0: any)."""
    import random

    from relay.nonces import Nonces

    with pytest.MonkeyPatch.context() as patch:
        if not batched:
            patch.setattr(datagrams, "_mmsg", None)
        random.seed(16)
        listener = Listener(Nonces(600, secret=b"the same nonces"), ports)
    try:
        nonce = listener.turn.nonces.issue(listener.client.getsockname()[0], listener.clock.seconds())
        got = []
        for number, steps in enumerate(batches):
            for index, step in enumerate(steps):
                tid = bytes([number, index]) * 6
                listener.client.sendto(datagram(step, nonce, tid), listener.sock.getsockname())
            time.sleep(0.02)
            datagrams.read_pass(listener.protocol.transport.doRead)
            listener.client.settimeout(0.05)
            replies = []
            try:
                while True:
                    replies.append(listener.client.recv(65536))
            except socket.timeout:
                pass
            got.append(sorted(replies))  # UDP: the order of answers to different requests is not kept
        return got, (listener.sock.getsockname()[1], listener.client.getsockname()[1])
    finally:
        listener.close()


@given(st.lists(st.lists(st.sampled_from(STEPS), min_size=1, max_size=8), min_size=1, max_size=3))
@settings(max_examples=60, deadline=None)
def test_requests_answered_from_c_are_the_bytes_the_read_pass_sends(batches):
    """For generated batches of requests, indications, ChannelData and garbage from one client, the listener
    with the extension (TURN requests answered from inside the batch) sends the bytes the read pass without
    it sends."""
    if datagrams._mmsg is None:
        if sys.platform.startswith("linux"):
            pytest.fail("relay._mmsg is missing: scripts/setup builds it")
        pytest.skip("relay._mmsg is built on Linux only")
    from_c, ports = answers(True, batches)
    assert from_c == answers(False, batches, ports)[0]
