"""The TURN core on a fake clock: RFC 8656 allocations, permissions, channels, auth, quotas."""

import contextlib
import functools
import struct
import sys
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relay.allocation import data_indication
from relay.credentials import Credentials, Keys, RestSecrets, StaticUsers
from relay.peer_policy import PeerPolicy, Reach
from relay import server_fast
from relay.relay_ports import RESERVATION_SECONDS, RelayPorts
from relay.server import NoRelayPort, RelayPolicy, TurnServer
from rendezvous.stun import Attr, Class, Message, Method, PasswordAlgorithm
from rendezvous.stun.attributes import (
    decode_address_error_code,
    decode_password_algorithms,
    decode_uint32,
    encode_address_family,
    encode_even_port,
    encode_password_algorithm,
    encode_password_algorithms,
    encode_requested_transport,
    encode_uint32,
)
from rendezvous.stun.constants import AddressFamily
from rendezvous.stun.integrity import long_term_key
from tests.turn_helpers import TurnRequests, bind, code, permit

REALM = "example.org"
CLIENT = ("203.0.113.10", 50000)
SERVER = ("198.18.0.1", 3478)
UDP_TUPLE = ("udp", CLIENT, SERVER)
PEER = ("8.8.8.8", 9000)


class FakeRelay:
    """A relayed address that records what the core sends through it."""

    def __init__(self, address):
        self.address = address
        self.sent = []
        self.closed = False
        self.allocation = None

    def write(self, data, peer):
        self.sent.append((data, peer))

    def close(self):
        self.closed = True


class FakePorts:
    """Hands out FakeRelays on successive ports; can run out."""

    def __init__(self, families=(4,), limit=100):
        self.next_port = 49152
        self.families = families
        self.limit = limit
        self.opened = []
        self.reservations = {}

    def open(self, family, even=False, reserve_next=False, dont_fragment=False, release=lambda: None):
        if len(self.opened) >= self.limit or family not in self.families:
            raise NoRelayPort("exhausted")
        port = self.next_port + (self.next_port & 1 if even else 0)
        self.next_port = port + 2
        relay = FakeRelay(("198.18.0.1" if family == 4 else "2001:db8::1", port))
        self.opened.append(relay)
        token = None
        if reserve_next:
            token = b"T" + len(self.opened).to_bytes(7, "big")
            self.reservations[token] = (FakeRelay(("198.18.0.1", port + 1)), release)
        return relay, token

    def take_reserved(self, token):
        relay, release = self.reservations.pop(token, (None, None))
        if relay is not None:
            release()
        return relay

    def expire(self, now):
        pass


class Client(TurnRequests):
    """Talks to the TURN core directly, as one five-tuple."""

    def __init__(self, server, username="alice", password="secret", five_tuple=UDP_TUPLE):
        super().__init__(username, password, REALM)
        self.server = server
        self.five_tuple = five_tuple
        self.received = []

    def send(self, data):
        self.received.append(data)

    def ask(self, msg):
        data = self.server.handle(msg, self.five_tuple, self.send)
        return None if data is None else Message.decode(data)


FAST_ANSWERS = []


def fast_path_first(python_handle):
    """TurnServer.handle as the UDP listener answers: relay.server_fast first, the Python core for the rest."""

    def handle(self, msg, five_tuple, send, leg=None):
        if msg.raw is not None and five_tuple[0] == "udp":
            response = server_fast.answer(self, msg.raw, five_tuple, lambda client: send)
            if response is not None:
                FAST_ANSWERS.append(response)
                return response or None
        return python_handle(self, msg, five_tuple, send, leg)

    return handle


@contextlib.contextmanager
def answered_by(path: str):
    """Requests answered by the Python core ("python"), or by the C fast path (relay/_requests.c) before it ("c")."""
    FAST_ANSWERS.clear()
    if path == "python":
        yield
        return
    if server_fast._requests is None:
        if sys.platform.startswith("linux"):
            pytest.fail("relay._requests is missing: scripts/setup builds it")
        pytest.skip("relay._requests is built on Linux only")
    python_handle = TurnServer.handle
    TurnServer.handle = fast_path_first(python_handle)
    try:
        yield
    finally:
        TurnServer.handle = python_handle


def pytest_generate_tests(metafunc):
    """Each test runs on both paths; a hypothesis test draws its path instead (pytest-twisted wraps the
    test function of every parametrized copy of a hypothesis test again, which fails the second copy)."""
    if not hasattr(metafunc.function, "hypothesis"):
        metafunc.parametrize("answering", ["python", "c"], indirect=True)


@pytest.fixture(autouse=True)
def answering(request):
    """Which path answers requests (pytest_generate_tests); the Python core where none is named."""
    path = getattr(request, "param", "python")
    with answered_by(path):
        yield path


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_000_000)
    return c


def make_server(clock, ports=None, **policy):
    policy.setdefault("realm", REALM)
    credentials = Credentials([StaticUsers({"alice": "secret", "bob": "hunter2"}, REALM)],
                              RestSecrets(["rest-secret"]))
    return TurnServer(RelayPolicy(**policy), credentials, PeerPolicy(), ports or FakePorts(), clock)


@pytest.fixture
def server(clock):
    return make_server(clock)


def test_unauthenticated_allocate_gets_401_and_no_state(server):
    """An Allocate without credentials gets 401 with REALM, a cookie NONCE and PASSWORD-ALGORITHMS."""
    response = Client(server).ask(Client(server).raw(Method.ALLOCATE, sign=False))
    assert code(response) == 401
    assert response.get(Attr.REALM) == REALM.encode()
    assert response.get(Attr.NONCE).startswith(b"obMatJos2")
    assert decode_password_algorithms(response.get(Attr.PASSWORD_ALGORITHMS)) == [(1, b""), (2, b"")]
    assert not server.allocations


def test_allocate_succeeds_and_is_signed(server):
    """An authenticated Allocate returns relayed and mapped addresses, LIFETIME, and a valid MI."""
    client = Client(server)
    response = client.allocate()
    assert response.cls == Class.SUCCESS
    assert response.address(Attr.XOR_RELAYED_ADDRESS) == ("198.18.0.1", 49152)
    assert response.address(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert decode_uint32(response.get(Attr.LIFETIME)) == 600
    assert response.check_integrity(long_term_key("alice", REALM, "secret"))
    assert UDP_TUPLE in server.allocations


def test_sha256_password_algorithm(server):
    """A client choosing SHA-256 (RFC 8489 §9.2.2) is verified and answered with MI-SHA256."""
    response = Client(server).allocate(algorithm=PasswordAlgorithm.SHA256)
    assert response.cls == Class.SUCCESS
    assert Attr.MESSAGE_INTEGRITY_SHA256 in response
    assert response.check_integrity(long_term_key("alice", REALM, "secret", PasswordAlgorithm.SHA256))


def test_downgraded_password_algorithms_are_400(server):
    """PASSWORD-ALGORITHMS differing from what the server offered is a 400 (downgrade check)."""
    client = Client(server)
    client.allocate()
    msg = client.raw(Method.REFRESH, sign=False)
    msg.add(Attr.USERNAME, b"alice").add(Attr.REALM, REALM.encode()).add(Attr.NONCE, client.nonce.encode())
    msg.add(Attr.PASSWORD_ALGORITHMS, encode_password_algorithms([(1, b"")]))
    msg.add(Attr.PASSWORD_ALGORITHM, encode_password_algorithm(1))
    response = client.ask(Message.decode(msg.encode(integrity_key=long_term_key("alice", REALM, "secret"))))
    assert code(response) == 400


@pytest.mark.parametrize("username, password", [("alice", "wrong"), ("mallory", "secret")])
def test_bad_credentials_get_401(server, username, password):
    """A wrong password or unknown user gets 401 and no allocation."""
    response = Client(server, username, password).allocate()
    assert code(response) == 401 and not server.allocations


def test_stale_nonce_gets_438_with_a_fresh_one(server, clock):
    """A nonce older than its lifetime gets 438 and a new NONCE; the retry succeeds."""
    client = Client(server)
    client.retry_stale = False
    client.request(Method.REFRESH)  # learns a nonce (437: no allocation yet)
    clock.advance(601)
    response = client.allocate()
    assert code(response) == 438 and response.get(Attr.NONCE).decode() != client.nonce
    client.nonce = response.get(Attr.NONCE).decode()
    assert client.allocate().cls == Class.SUCCESS


def test_nonce_is_bound_to_the_client_ip(server):
    """A nonce issued to one IP is stale for another."""
    first = Client(server)
    first.allocate()
    other = Client(server, five_tuple=("udp", ("203.0.113.99", 1), SERVER))
    other.nonce = first.nonce
    other.retry_stale = False
    assert code(other.allocate()) == 438


def test_missing_auth_attributes_are_400(server):
    """MESSAGE-INTEGRITY without USERNAME, REALM or NONCE is a 400."""
    msg = Message(Method.ALLOCATE, Class.REQUEST)
    msg.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
    response = Client(server).ask(Message.decode(msg.encode(integrity_key=b"x" * 16)))
    assert code(response) == 400


def test_retransmitted_allocate_gets_the_same_response(server):
    """The same transaction id gets the cached success; another Allocate gets 437."""
    client = Client(server)
    client.allocate()
    msg = client.raw(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)))
    del server.allocations[UDP_TUPLE]
    first = client.ask(msg)
    again = client.ask(msg)
    assert first.raw == again.raw
    assert code(client.allocate()) == 437


@pytest.mark.parametrize(
    "attrs, expected",
    [
        ((), 400),
        (((Attr.REQUESTED_TRANSPORT, encode_requested_transport(6)),), 442),
        (((Attr.REQUESTED_TRANSPORT, b"\x11"),), 400),
    ],
)
def test_requested_transport_checks(server, attrs, expected):
    """REQUESTED-TRANSPORT missing or malformed is 400; not UDP is 442."""
    assert code(Client(server).request(Method.ALLOCATE, *attrs)) == expected


def test_unknown_required_attribute_is_420(server):
    """An unknown comprehension-required attribute in Allocate is 420."""
    response = Client(server).allocate((0x7FF0, b"x"))
    assert code(response) == 420 and response.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7f\xf0"


def test_lifetime_is_clamped(server):
    """Requested lifetimes are raised to the default and capped at the maximum."""
    client = Client(server)
    response = client.allocate((Attr.LIFETIME, encode_uint32(99999)))
    assert decode_uint32(response.get(Attr.LIFETIME)) == 3600
    response = client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(30)))
    assert decode_uint32(response.get(Attr.LIFETIME)) == 600


def test_refresh_zero_deletes(server):
    """Refresh with LIFETIME 0 deletes the allocation and closes its relay."""
    client = Client(server)
    client.allocate()
    relay = server.allocations[UDP_TUPLE].relays[4]
    response = client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
    assert response.cls == Class.SUCCESS and decode_uint32(response.get(Attr.LIFETIME)) == 0
    assert not server.allocations and relay.closed
    assert code(client.request(Method.REFRESH)) == 437


def test_other_user_on_the_allocation_is_441(server):
    """A request on an allocation with another user's credentials is 441."""
    Client(server).allocate()
    bob = Client(server, "bob", "hunter2")
    assert code(bob.request(Method.REFRESH)) == 441


def test_allocation_expires(server, clock):
    """An allocation not refreshed is gone after its lifetime."""
    Client(server).allocate()
    relay = server.allocations[UDP_TUPLE].relays[4]
    clock.advance(599)
    server.expire(clock.seconds())
    assert server.allocations
    clock.advance(1)
    server.expire(clock.seconds())
    assert not server.allocations and relay.closed


def test_permission_and_data_indications(server, clock):
    """With a permission, peer data reaches the client as a Data indication; without, it is dropped."""
    client = Client(server)
    client.allocate()
    allocation = server.allocations[UDP_TUPLE]
    allocation.from_peer(b"early", PEER)
    assert client.received == []
    assert permit(client, PEER, ("9.9.9.9", 1)).cls == Class.SUCCESS
    allocation.from_peer(b"hello", PEER)
    indication = Message.decode(client.received[-1])
    assert (indication.method, indication.cls) == (Method.DATA, Class.INDICATION)
    assert indication.address(Attr.XOR_PEER_ADDRESS) == PEER
    assert indication.get(Attr.DATA) == b"hello"
    clock.advance(300)
    server.expire(clock.seconds())
    allocation.from_peer(b"late", PEER)
    assert len(client.received) == 1


def test_send_indication_needs_a_permission(server):
    """A Send indication is relayed only to a permitted peer."""
    client = Client(server)
    client.allocate()
    relay = server.allocations[UDP_TUPLE].relays[4]
    send = Message(Method.SEND, Class.INDICATION)
    send.add_address(Attr.XOR_PEER_ADDRESS, PEER).add(Attr.DATA, b"payload")
    server.allocations[UDP_TUPLE].send_indication(send.encode())
    assert relay.sent == []
    permit(client, PEER)
    server.allocations[UDP_TUPLE].send_indication(send.encode())
    assert relay.sent == [(b"payload", PEER)]


@pytest.mark.parametrize(
    "peer",
    ["127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "100.64.0.1", "169.254.1.1", "0.0.0.0",
     "224.0.0.1", "255.255.255.255", "240.0.0.1", "198.18.0.1",
     "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::127.0.0.1", "::ffff:10.0.0.1",
     "64:ff9b::a00:1", "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"],
)
def test_denied_peers_are_403(clock, peer):
    """Permissions and channels to denied peers, in every address form, are 403."""
    server = make_server(clock, ports=FakePorts(families=(4, 6)), families=frozenset({4, 6}))
    client = Client(server)
    client.allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
    assert code(permit(client, (peer, 1))) == 403
    assert code(bind(client, 0x4001, (peer, 1))) == 403
    assert not server.allocations[UDP_TUPLE].permissions


def test_relay_own_address_is_denied(clock):
    """The relay's own addresses are refused as peers."""
    server = make_server(clock)
    server.peers = PeerPolicy(own_addresses=["8.8.8.8"])
    client = Client(server)
    client.allocate()
    assert code(permit(client, PEER)) == 403


def send_to(allocation, peer, data=b"payload"):
    """Hand the allocation's data path a Send indication to peer."""
    send = Message(Method.SEND, Class.INDICATION)
    send.add_address(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
    allocation.send_indication(send.encode())


def test_relayed_addresses_are_peers_only_while_an_allocation_holds_them(clock):
    """Two allocations on one relay reach each other; a relay-range port no allocation holds, and a
    relayed address whose allocation ended, are refused: ChannelBind gets 403, a Send is dropped."""
    server = make_server(clock)
    server.peers = PeerPolicy(own_addresses=["198.18.0.1"], relayed_addresses=["198.18.0.1"],
                              relay_ports=(49152, 65535), own_endpoints=[("198.18.0.1", 3478)])
    first, second = Client(server), Client(server, "bob", "hunter2", ("udp", ("203.0.113.11", 1), SERVER))
    first_relayed = first.allocate().address(Attr.XOR_RELAYED_ADDRESS)
    second.allocate()
    allocation = server.allocations[second.five_tuple]
    relay = allocation.relays[4]
    host, port = first_relayed
    assert code(bind(second, 0x4002, (host, port + 1))) == 403  # in the range, held by no allocation
    assert code(permit(second, (host, 3478))) == 403  # a listening port
    assert permit(second, (host, 0)).cls == Class.SUCCESS  # the relayed IP (RFC 8656 §9: the port is not part)
    for peer_port in (3478, port + 1, port, port + 1):
        send_to(allocation, (host, peer_port))
    assert relay.sent == [(b"payload", first_relayed)]
    assert allocation.refused == {(host, 3478), (host, port + 1)}
    assert bind(second, 0x4001, first_relayed).cls == Class.SUCCESS
    assert first.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
    server.expire(clock.seconds())
    send_to(allocation, first_relayed)
    allocation.channel_to_peer(struct.pack("!HH", 0x4001, 4) + b"data")
    assert relay.sent == [(b"payload", first_relayed)] and first_relayed not in allocation.permissions
    assert code(bind(second, 0x4003, first_relayed)) == 403


OWN = [("8.8.8.8", 3478), ("8.8.8.8", 5349), ("0.0.0.0", 9641)]
LOCAL = {"8.8.8.8", "8.8.4.4", "127.0.0.1", "0.0.0.0"}


def local_only(address):
    """A stand-in for PeerPolicy's is_local: the addresses of LOCAL."""
    return str(address) in LOCAL


@settings(max_examples=200, deadline=None)
@given(
    rules=st.lists(st.sampled_from(["8.8.8.8/32", "8.0.0.0/8", "0.0.0.0/0", "::/0", "127.0.0.0/8"]), max_size=3),
    host=st.sampled_from(["8.8.8.8", "::ffff:8.8.8.8", "8.8.4.4", "127.0.0.1", "::ffff:127.0.0.1", "9.9.9.9"]),
    permit_port=st.sampled_from([3478, 5349, 9641, 40000]),
    send_ports=st.lists(st.sampled_from([3478, 5349, 9641, 40000, 40001]), min_size=1, max_size=4),
    path=st.sampled_from(["python", "c"]),
)
def test_no_rule_opens_the_relays_own_endpoints(rules, host, permit_port, send_ports, path):
    """Whatever --allow-peer says, no permission, channel or Send reaches a port the relay listens on
    (a wildcard listener's on every local address), in any spelling of its address, on either path."""
    with answered_by(path):
        check_own_endpoints_stay_closed(rules, host, permit_port, send_ports)


def check_own_endpoints_stay_closed(rules, host, permit_port, send_ports):
    server = make_server(Clock(), ports=FakePorts(families=(4, 6)), families=frozenset({4, 6}))
    server.peers = PeerPolicy(allow=rules, own_addresses=["8.8.8.8"], own_endpoints=OWN, is_local=local_only)
    client = Client(server)
    client.allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
    allocation = server.allocations[UDP_TUPLE]
    inner = host.removeprefix("::ffff:")
    own_ports = {port for address, port in OWN if address in (inner, "0.0.0.0") and inner in LOCAL}
    granted = permit(client, (host, permit_port)).cls == Class.SUCCESS
    assert not (granted and permit_port in own_ports)
    bound = bind(client, 0x4001, (host, permit_port)).cls == Class.SUCCESS
    assert not (bound and permit_port in own_ports)
    for port in send_ports:
        send_to(allocation, (host, port))
    allocation.channel_to_peer(struct.pack("!HH", 0x4001, 4) + b"data")
    sent = [peer for relay in allocation.relays.values() for _, peer in relay.sent]
    assert not [peer for peer in sent if peer[1] in own_ports]
    assert granted or bound or not sent


def test_wildcard_listeners_cover_every_local_address():
    """A wildcard listener's port is an own endpoint on each local address (and its IPv4-mapped form),
    not on other hosts; the relay's other local ports need an operator rule."""
    peers = PeerPolicy(allow=["127.0.0.0/8", "::/0", "8.0.0.0/8"], own_endpoints=[("::", 3478)])
    assert peers.reach("127.0.0.5", 3478) is Reach.DENIED
    assert peers.reach("::ffff:127.0.0.5", 3478) is Reach.DENIED
    assert peers.reach("::1", 3478) is Reach.DENIED
    assert peers.reach("127.0.0.5", 3479) is Reach.OWN
    assert PeerPolicy(own_endpoints=[("::", 3478)]).reach("127.0.0.5", 3479) is Reach.DENIED
    assert peers.reach("8.8.8.8", 3478) is Reach.HOST  # not an address of this host
    assert peers.reach("0.0.0.0", 9) is Reach.DENIED  # the kernel delivers it locally


def test_own_endpoints_resolve_names():
    """A --metrics HOST given as a name is refused at each address the name resolves to."""
    peers = PeerPolicy(allow=["127.0.0.0/8"], own_endpoints=[("localhost", 9641)])
    assert peers.reach("127.0.0.1", 9641) is Reach.DENIED
    assert peers.reach("127.0.0.1", 9642) is Reach.OWN


def test_channel_data_both_ways(server):
    """A bound channel carries ChannelData to the peer and back, padded only on streams."""
    client = Client(server)
    client.allocate()
    allocation = server.allocations[UDP_TUPLE]
    assert bind(client, 0x4001, PEER).cls == Class.SUCCESS
    allocation.channel_to_peer(b"\x40\x01\x00\x03abc")
    assert allocation.relays[4].sent == [(b"abc", PEER)]
    allocation.from_peer(b"xyz", PEER)
    assert client.received[-1] == b"\x40\x01\x00\x03xyz"
    allocation.channel_to_peer(b"\x40\x02\x00\x03abc")  # unbound: dropped
    allocation.channel_to_peer(b"\x40\x01\x00\x09abc")  # overrun: dropped
    assert len(allocation.relays[4].sent) == 1


def test_channel_rebinding_rules(server, clock):
    """Rebinding the same pair refreshes; a bound number or peer cannot move (RFC 8656 §12.1)."""
    client = Client(server)
    client.allocate((Attr.LIFETIME, encode_uint32(3600)))
    assert bind(client, 0x4001, PEER).cls == Class.SUCCESS
    assert bind(client, 0x4001, PEER).cls == Class.SUCCESS
    assert code(bind(client, 0x4001, ("9.9.9.9", 1))) == 400
    assert code(bind(client, 0x4002, PEER)) == 400
    assert code(bind(client, 0x3FFF, ("9.9.9.9", 1))) == 400
    assert code(bind(client, 0x8000, ("9.9.9.9", 1))) == 400
    clock.advance(600)
    server.expire(clock.seconds())
    assert not server.allocations[UDP_TUPLE].channels
    assert code(bind(client, 0x4001, ("9.9.9.9", 1))) == 400  # 5-minute cooldown
    clock.advance(300)
    server.expire(clock.seconds())
    assert bind(client, 0x4001, ("9.9.9.9", 1)).cls == Class.SUCCESS


def test_stream_channel_data_is_padded(server):
    """Over TCP, ChannelData to the client is padded to 4 bytes (RFC 8656 §12.5)."""
    tcp = ("tcp", CLIENT, SERVER)
    client = Client(server, five_tuple=tcp)
    client.allocate()
    bind(client, 0x4001, PEER)
    server.allocations[tcp].from_peer(b"xyz", PEER)
    assert client.received[-1] == b"\x40\x01\x00\x03xyz\x00"
    server.connection_lost(tcp)
    assert not server.allocations


def test_user_and_total_quotas(clock):
    """Past the per-user quota Allocate gets 486; past the total, 508."""
    server = make_server(clock, user_quota=1)
    Client(server).allocate()
    second = Client(server, five_tuple=("udp", ("203.0.113.10", 2), SERVER))
    assert code(second.allocate()) == 486
    assert Client(server, "bob", "hunter2", ("udp", ("203.0.113.11", 1), SERVER)).allocate().cls == Class.SUCCESS
    full = make_server(clock, total_quota=1)
    Client(full).allocate()
    assert code(Client(full, "bob", "hunter2", ("udp", ("203.0.113.11", 2), SERVER)).allocate()) == 508


def test_an_allocate_that_fails_gives_its_quota_back(clock):
    """An Allocate counted at step 8 but refused later (no relay port) does not use up the user's quota."""
    ports = FakePorts(limit=0)
    server = make_server(clock, ports=ports, user_quota=1)
    client = Client(server)
    assert code(client.allocate()) == 508 and server.counts.total == 0
    ports.limit = 1
    assert client.allocate().cls == Class.SUCCESS and server.counts.per_user == {"alice": 1}
    assert client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
    assert server.counts.total == 0 and not server.counts.per_user


def test_permission_and_channel_quotas(clock):
    """Past max permissions or channels per allocation the request gets 508."""
    server = make_server(clock, max_permissions=2, max_channels=1)
    client = Client(server)
    client.allocate()
    assert code(permit(client, ("8.8.8.1", 1), ("8.8.8.2", 1), ("8.8.8.3", 1))) == 508
    assert bind(client, 0x4001, ("8.8.8.1", 1)).cls == Class.SUCCESS
    assert code(bind(client, 0x4002, ("8.8.8.2", 1))) == 508


def test_no_relay_port_is_508(clock):
    """When no relay port can be bound, Allocate gets 508."""
    server = make_server(clock, ports=FakePorts(limit=0))
    assert code(Client(server).allocate()) == 508


def test_even_port_and_reservation(server):
    """EVEN-PORT with R gives an even port and a RESERVATION-TOKEN another client can use."""
    response = Client(server).allocate((Attr.EVEN_PORT, encode_even_port(True)))
    assert response.address(Attr.XOR_RELAYED_ADDRESS)[1] % 2 == 0
    token = response.get(Attr.RESERVATION_TOKEN)
    other = Client(server, five_tuple=("udp", ("203.0.113.10", 2), SERVER))
    reserved = other.allocate((Attr.RESERVATION_TOKEN, token))
    assert reserved.address(Attr.XOR_RELAYED_ADDRESS)[1] == response.address(Attr.XOR_RELAYED_ADDRESS)[1] + 1
    third = Client(server, five_tuple=("udp", ("203.0.113.10", 3), SERVER))
    assert code(third.allocate((Attr.RESERVATION_TOKEN, token))) == 508
    assert code(third.allocate((Attr.RESERVATION_TOKEN, token), (Attr.EVEN_PORT, b"\x00"))) == 400


def test_reservations_count_against_the_quotas(clock):
    """A reserved port (EVEN-PORT R) counts against its user's quota until taken: Allocates released at once
    leave at most user-quota reservations, then 486; taking a token frees its count for the taker's allocation."""
    server = make_server(clock, user_quota=4, total_quota=5)
    codes = []
    for i in range(6):
        client = Client(server, five_tuple=("udp", ("203.0.113.10", 100 + i), SERVER))
        response = client.allocate((Attr.EVEN_PORT, encode_even_port(True)))
        codes.append(code(response) if response.cls == Class.ERROR else 200)
        if response.cls == Class.SUCCESS:
            client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
    assert codes == [200, 200, 200, 486, 486, 486] and server.counts.per_user == {"alice": 3}
    bob = Client(server, "bob", "hunter2", ("udp", ("203.0.113.11", 1), SERVER))
    assert bob.allocate((Attr.EVEN_PORT, encode_even_port(True))).cls == Class.SUCCESS  # 4 and 5 of 5
    assert code(Client(server, "bob", "hunter2", ("udp", ("203.0.113.11", 2), SERVER)).allocate()) == 508
    taker = Client(server, "bob", "hunter2", ("udp", ("203.0.113.11", 3), SERVER))
    token = next(iter(server.ports.reservations))
    assert taker.allocate((Attr.RESERVATION_TOKEN, token)).cls == Class.SUCCESS
    assert server.counts.per_user == {"alice": 2, "bob": 3} and server.counts.total == 5


def test_a_reservation_is_held_thirty_seconds(clock):
    """A reserved relay port is closed and its quota count freed RESERVATION_SECONDS after the Allocate."""
    from twisted.internet import reactor

    ports = RelayPorts(reactor, {4: "127.0.0.1"}, 61300, 61399, clock=clock)
    server = make_server(clock, ports=ports, user_quota=2)
    client = Client(server)
    assert client.allocate((Attr.EVEN_PORT, encode_even_port(True))).cls == Class.SUCCESS
    assert client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
    try:
        assert ports.open_count == 1 and server.counts.per_user == {"alice": 1}
        other = Client(server, five_tuple=("udp", ("203.0.113.10", 2), SERVER))
        assert code(other.allocate((Attr.EVEN_PORT, encode_even_port(True)))) == 486
        clock.advance(RESERVATION_SECONDS - 1)
        server.expire(clock.seconds())
        assert ports.reservations and ports.open_count == 1
        clock.advance(1)
        server.expire(clock.seconds())
        assert not ports.reservations and ports.open_count == 0 and server.counts.total == 0
        assert other.allocate((Attr.EVEN_PORT, encode_even_port(True))).cls == Class.SUCCESS
    finally:
        server.stop()
        ports.stop()
    assert ports.open_count == 0 and server.counts.total == 0


class ElsewherePorts(FakePorts):
    """FakePorts where the token b"W" * 8 belongs to another worker: taking it gives a Deferred."""

    def __init__(self):
        super().__init__()
        self.fetches = []

    def take_reserved(self, token):
        if token != b"W" * 8:
            return super().take_reserved(token)
        fetch = Deferred()
        self.fetches.append(fetch)
        return fetch


def test_reservation_held_by_another_worker(clock):
    """An Allocate whose RESERVATION-TOKEN another worker holds is answered once the socket arrives;
    a retransmission meanwhile neither answers nor allocates twice, and afterwards gets the same response."""
    ports = ElsewherePorts()
    server = make_server(clock, ports=ports)
    client = Client(server)
    client.nonce = client.ask(client.raw(Method.ALLOCATE, sign=False)).get(Attr.NONCE).decode()
    request = client.raw(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)),
                         (Attr.RESERVATION_TOKEN, b"W" * 8))
    assert client.ask(request) is None
    assert client.ask(request) is None  # a retransmission while the socket is on its way
    assert len(ports.fetches) == 1 and not server.allocations and not client.received
    clock.advance(0.5)
    relay = FakeRelay(("198.18.0.1", 49153))
    ports.fetches[0].callback(relay)
    (sent,) = client.received
    response = Message.decode(sent)
    assert response.cls == Class.SUCCESS and response.transaction_id == request.transaction_id
    assert response.address(Attr.XOR_RELAYED_ADDRESS) == ("198.18.0.1", 49153)
    assert server.allocations[UDP_TUPLE].relays == {4: relay} and relay.allocation is server.allocations[UDP_TUPLE]
    assert client.ask(request).transaction_id == request.transaction_id  # the cached response
    assert len(server.allocations) == 1 and not server.pending


def test_reservation_another_worker_does_not_hold(clock):
    """When the owning worker has no socket for the token (expired, used, gone), the answer is 508."""
    ports = ElsewherePorts()
    server = make_server(clock, ports=ports)
    client = Client(server)
    assert client.allocate((Attr.RESERVATION_TOKEN, b"W" * 8)) is None
    ports.fetches[0].callback(None)
    assert code(Message.decode(client.received[-1])) == 508 and not server.allocations and not server.pending
    assert server.counts.total == 0
    assert client.allocate((Attr.RESERVATION_TOKEN, b"W" * 8)) is None  # a new try asks again
    assert len(ports.fetches) == 2


def test_reservation_arriving_after_the_connection_closed(clock):
    """A reserved socket arriving for a TCP client whose connection closed meanwhile is closed, not allocated."""
    ports = ElsewherePorts()
    server = make_server(clock, ports=ports)
    tcp_tuple = ("tcp", CLIENT, SERVER)
    client = Client(server, five_tuple=tcp_tuple)
    assert client.allocate((Attr.RESERVATION_TOKEN, b"W" * 8)) is None
    server.connection_lost(tcp_tuple)
    relay = FakeRelay(("198.18.0.1", 49153))
    ports.fetches[0].callback(relay)
    assert relay.closed and not server.allocations and not client.received and server.counts.total == 0


def test_address_families(server, clock):
    """IPv6 without an IPv6 relay is 440; ADDITIONAL-ADDRESS-FAMILY falls back with ADDRESS-ERROR-CODE."""
    client = Client(server)
    v6 = (Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6))
    assert code(client.allocate(v6)) == 440
    response = client.allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
    assert response.cls == Class.SUCCESS
    assert decode_address_error_code(response.get(Attr.ADDRESS_ERROR_CODE))[1] == 440
    assert code(permit(client, ("2606:4700::1", 1))) == 443
    dual = make_server(clock, ports=FakePorts(families=(4, 6)), families=frozenset({4, 6}))
    response = Client(dual).allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
    assert [a[0] for a in response.addresses(Attr.XOR_RELAYED_ADDRESS)] == ["198.18.0.1", "2001:db8::1"]


def test_rest_credentials(clock):
    """REST ephemeral credentials work until their expiry; with expire-with-credential they cap the lifetime."""
    server = make_server(clock, expire_with_credential=True)
    username = f"{int(clock.seconds()) + 120}:carol"
    client = Client(server, username, RestSecrets.password("rest-secret", username))
    response = client.allocate()
    assert response.cls == Class.SUCCESS and decode_uint32(response.get(Attr.LIFETIME)) == 120
    expired = f"{int(clock.seconds()) - 1}:carol"
    assert code(Client(server, expired, RestSecrets.password("rest-secret", expired)).allocate()) == 401
    forged = Client(server, username, RestSecrets.password("other-secret", username),
                    ("udp", ("203.0.113.12", 1), SERVER))
    assert code(forged.allocate()) == 401


def test_rest_keys_are_derived_once_per_username_up_to_a_bound():
    """The keys of a REST username are derived once while remembered (at most DERIVED usernames), and the
    expiry is still checked on every request."""
    rest = RestSecrets(["one", "two"])
    derived = []
    derive = rest._derive_keys
    rest._derive_keys = lambda *args: derived.append(args[0]) or derive(*args)
    rest._derive = functools.lru_cache(maxsize=RestSecrets.DERIVED)(rest._derive_keys)
    names = [f"2000:user{i}" for i in range(RestSecrets.DERIVED + 1)]
    first = [rest.candidates(name, REALM, 1000) for name in names]
    assert len(derived) == RestSecrets.DERIVED + 1 and all(len(keys) == 2 for keys in first)
    assert rest.candidates(names[-1], REALM, 1000) == first[-1] and len(derived) == RestSecrets.DERIVED + 1
    assert first[-1][1] == Keys.from_password(names[-1], REALM, RestSecrets.password("two", names[-1]), 2000.0)
    assert rest.candidates(names[-1], REALM, 2000) == []
    assert rest.candidates(names[0], REALM, 1000) == first[0] and len(derived) == RestSecrets.DERIVED + 2


def test_401_rate_limit_and_bounded_memory(server, clock):
    """A spoofed flood gets a bounded number of 401s per source and leaves no allocations."""
    client = Client(server)
    request = client.raw(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)), sign=False)
    answers = sum(client.ask(request) is not None for _ in range(500))
    assert answers == server.policy.unauthorized_burst
    clock.advance(1)
    assert client.ask(request) is not None
    for i in range(30000):
        spoofed = ("udp", (f"203.0.{i // 256 % 256}.{i % 256}", i), SERVER)
        server.handle(request, spoofed, None)
    assert not server.allocations
    assert len(server._limiter.buckets) <= server._limiter.max_keys


def test_released_allocations_leave_no_state_per_client(clock):
    """Once its 401 budget has refilled, a client whose allocation ended leaves nothing behind in the core."""
    server = make_server(clock, ports=FakePorts(limit=300))
    for i in range(300):  # the soak's churn: a new source address a cycle, ten a second
        client = Client(server, five_tuple=("udp", (f"203.0.{i // 250}.{1 + i % 250}", 40000 + i), SERVER))
        assert client.allocate().cls == Class.SUCCESS
        permit(client, PEER)
        assert client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
        clock.advance(0.1)
    refill = server.policy.unauthorized_burst / server.policy.unauthorized_per_second
    clock.advance(refill)
    server.expire(clock.seconds())
    last = Client(server, five_tuple=("udp", ("203.0.113.99", 1), SERVER))
    assert code(last.ask(last.raw(Method.ALLOCATE, sign=False))) == 401
    assert list(server._limiter.buckets) == ["203.0.113.99"]
    assert not server.allocations and not server.records and not server.by_id and not server.pending
    assert server.counts.total == 0 and not server.counts.per_user


def test_limited_source_is_remembered_until_its_budget_refills(server, clock):
    """A source past its 401 burst stays limited while other sources come and go, until its bucket refills."""
    flooder = Client(server, five_tuple=("udp", ("203.0.113.66", 1), SERVER))
    request = flooder.raw(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)), sign=False)
    assert sum(flooder.ask(request) is not None for _ in range(200)) == server.policy.unauthorized_burst
    for i in range(40):  # 4 s of other sources, a bucket refills in 5
        clock.advance(0.1)
        other = Client(server, five_tuple=("udp", (f"203.0.114.{i}", 1), SERVER))
        assert other.ask(request) is not None
    answers = sum(flooder.ask(request) is not None for _ in range(200))
    assert 75 <= answers < server.policy.unauthorized_burst  # 4 s at 20 a second, not a fresh burst


def test_data_indication_layout():
    """A hand-packed Data indication decodes to the peer and data it was given."""
    msg = Message.decode(data_indication(("2001:db8::5", 7), b"abcde"))
    assert msg.method == Method.DATA and msg.cls == Class.INDICATION
    assert msg.address(Attr.XOR_PEER_ADDRESS) == ("2001:db8::5", 7) and msg.get(Attr.DATA) == b"abcde"
    assert struct.unpack("!H", data_indication(PEER, b"")[2:4])[0] % 4 == 0


def test_bandwidth_limit(clock):
    """With max-bps, relayed bytes beyond one second's budget are dropped."""
    server = make_server(clock, max_bps=1000)
    client = Client(server)
    client.allocate()
    permit(client, PEER)
    allocation = server.allocations[UDP_TUPLE]
    for _ in range(20):
        allocation.send_to_peer(PEER, b"x" * 100)
    assert len(allocation.relays[4].sent) == 10
    clock.advance(1)
    allocation.send_to_peer(PEER, b"x" * 100)
    assert len(allocation.relays[4].sent) == 11


def test_draining_refuses_new_allocations(server):
    """While draining, a new Allocate gets 508 (no alternate) or 300 with ALTERNATE-SERVER."""
    first = Client(server)
    first.allocate()
    server.draining = True
    other = Client(server, five_tuple=("udp", ("203.0.113.10", 2), SERVER))
    assert code(other.allocate()) == 508
    server.alternate = ("198.18.0.20", 3478)
    response = other.allocate()
    assert code(response) == 300 and response.address(Attr.ALTERNATE_SERVER) == ("198.18.0.20", 3478)
    assert first.request(Method.REFRESH).cls == Class.SUCCESS  # existing allocations go on


def test_a_malformed_lifetime_holds_no_relay_port(clock):
    """An Allocate whose LIFETIME is not 4 bytes gets 400, leaves no relay port open and gives its quota back."""
    ports = FakePorts()
    server = make_server(clock, ports=ports, user_quota=1)
    client = Client(server)
    assert code(client.allocate((Attr.LIFETIME, b"\0\0\1"))) == 400
    assert all(relay.closed for relay in ports.opened)
    assert client.allocate().cls == Class.SUCCESS
