"""The C fast path for a live allocation's requests, and for the Allocate with its 401 (relay/server_fast.py,
relay/_requests.c), answers and changes the tables exactly as the Python core does."""

import struct
import sys
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from relay import server_fast
from relay.credentials import Credentials, RestSecrets, StaticUsers
from relay.nonces import Nonces
from relay.peer_policy import PeerPolicy
from relay.server import RelayPolicy, TurnServer
from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun.attributes import encode_requested_transport, encode_uint16, encode_uint32
from rendezvous.stun.integrity import long_term_key
from tests.unit.test_turn_server import FakePorts

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relay._requests is built on Linux only")

REALM = "example.org"
SERVER = ("198.18.0.1", 3478)
START = 1_000_000
# REST-API credentials that expire within the examples' clock steps, one while its nonce is still fresh.
REST_USERS = [f"{START + 300}:carol", f"{START + 900}:carol"]
PASSWORDS = {"alice": "secret", "bob": "hunter2"} | {
    user: RestSecrets.password("rest-secret", user) for user in REST_USERS}
TUPLES = [("udp", ("203.0.113.10", 50000), SERVER), ("udp", ("203.0.113.11", 50001), SERVER),
          ("udp", ("203.0.113.12", 50002), SERVER), ("udp", ("2001:db8::12", 50003), SERVER)]
# The last two have none at first, and get one by a signed Allocate.
PEERS = [("8.8.8.8", 9000), ("8.8.4.4", 53), ("10.0.0.1", 9), ("198.18.0.1", 49152), ("2001:db8::1", 9)]
NONCE_SECRET = b"n" * 32


def make_server(policy: dict) -> TurnServer:
    clock = Clock()
    clock.advance(START)
    software = policy.pop("software", None)
    ports = FakePorts(limit=policy.pop("relay_ports", 100))
    credentials = Credentials([StaticUsers({"alice": "secret", "bob": "hunter2"}, REALM)], RestSecrets(["rest-secret"]))
    return TurnServer(RelayPolicy(realm=REALM, **policy), credentials, PeerPolicy(), ports, clock,
                      nonces=Nonces(600, NONCE_SECRET), software=software)


def dropped(data: bytes) -> None:
    """What a client is sent through its allocation here: nothing reads it."""


def SENDER(client) -> Callable[[bytes], None]:
    """The callable a new allocation sends to its client with (relay.datagrams.Outbox.sender)."""
    return dropped


def python_path(server: TurnServer, data: bytes, five_tuple: tuple) -> bytes | None:
    """What the UDP listener does without the fast path (relay.listeners._control)."""
    try:
        msg = Message.decode(data)
    except CodecError:
        return None
    if msg.check_fingerprint() is False:
        return None
    return server.handle(msg, five_tuple, dropped)


def fast_path_first(server: TurnServer, data: bytes, five_tuple: tuple) -> bytes | None:
    """What the UDP listener does: relay.server_fast first, the Python path for what it leaves."""
    response = server_fast.answer(server, data, five_tuple, SENDER)
    return python_path(server, data, five_tuple) if response is None else response or None


def state(server: TurnServer):
    """Everything a request may change: the counters and each allocation's tables."""
    allocations = {
        five_tuple: (a.expires_at, dict(a.permissions), dict(a.own_hosts), set(a.relayed_peers),
                     {n: (peer, key) for n, (peer, _, key) in a.channels.items()}, dict(a.channel_expiry),
                     dict(a.peer_channels), dict(a.cooldown), a.auth, a.username, a.transaction_id, a.response,
                     {family: relay.address for family, relay in a.relays.items()}, a.send is dropped)
        for five_tuple, a in server.allocations.items()
    }
    counts = (dict(server.counts.per_user), server.counts.total, bytes(server.counts.relayed))
    opened = [(relay.address, relay.closed) for relay in server.ports.opened]
    return dict(server.counters), allocations, counts, opened, len(server.records)


def sign(msg: Message, user: str, nonce: bytes, realm: str = REALM, mac: str = "valid",
         fingerprint: str = "none") -> bytes:
    """msg with USERNAME, REALM and NONCE, signed with user's key (mac "bad": one bit off; "sha256":
    MESSAGE-INTEGRITY-SHA256 after it; "none": neither the MAC nor those three), FINGERPRINT valid, wrong or
    none."""
    if mac == "none":
        data = msg.encode(fingerprint=fingerprint != "none")
        return data[:-1] + bytes([data[-1] ^ 1]) if fingerprint == "wrong" else data
    msg.add(Attr.USERNAME, user.encode()).add(Attr.REALM, realm.encode()).add(Attr.NONCE, nonce)
    key = long_term_key(user, REALM, PASSWORDS[user])
    data = msg.encode(integrity_key=key, integrity_sha256_key=key if mac == "sha256" else None,
                      fingerprint=fingerprint != "none")
    if mac == "bad":
        at = data.index(struct.pack("!HH", Attr.MESSAGE_INTEGRITY, 20)) + 4
        data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
    if fingerprint == "wrong":
        data = data[:-1] + bytes([data[-1] ^ 1])
    return data


def allocate(servers: list[TurnServer], five_tuple: tuple, user: str) -> None:
    """The same Allocate made on each of servers, through the Python core."""
    nonce = servers[0].nonces.issue(five_tuple[1][0], servers[0].clock.seconds()).encode()
    msg = Message(Method.ALLOCATE, Class.REQUEST).add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
    msg.add(Attr.LIFETIME, encode_uint32(3600))  # outlives a nonce (600 s)
    data = sign(msg, user, nonce)
    for server in servers:
        assert Message.decode(python_path(server, data, five_tuple)).cls == Class.SUCCESS


peer_values = st.one_of(
    st.sampled_from(PEERS).map(lambda peer: ("address", peer)),
    st.sampled_from([b"\0\x01\x23\x45\x29\x1a\xbe", b"\0\x03\x23\x45\x29\x1a\xbe\x43", b"\0\x01\x23\x45"])
    .map(lambda value: ("raw", value)),
)
extras = st.lists(st.sampled_from([
    (Attr.SOFTWARE, b"client 1.0"), (0x8000, b"\x02\0\0\0"), (0xC001, b"x"), (0x7F00, b"required"),
    (Attr.DONT_FRAGMENT, b""), (Attr.PASSWORD_ALGORITHMS, b"\0\x01\0\0"), (Attr.USERNAME, b"alice"),
    (Attr.REQUESTED_ADDRESS_FAMILY, b"\x01\0\0\0"), (Attr.LIFETIME, encode_uint32(60)),
    (Attr.CHANNEL_NUMBER, encode_uint16(0x4002)), (Attr.XOR_PEER_ADDRESS, b"\0\x01\x23\x45\x29\x1a\xbe\x43"),
    (Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)), (Attr.LIFETIME, b"\0\0\1"),
    (Attr.LIFETIME, encode_uint32(0)), (Attr.EVEN_PORT, b"\x80"), (Attr.RESERVATION_TOKEN, b"T" * 8),
    (Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0"), (Attr.NONCE, b"obMatJos2gAAA"),
    (Attr.USERHASH, bytes(32)),
]), max_size=2)


@st.composite
def requests(draw):
    """A request on one of the five-tuples, by one of the users: mostly the common forms, also bad
    integrity, a stale or foreign nonce, the wrong allocation, and odd or unknown attributes."""
    method = draw(st.sampled_from([Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND, Method.ALLOCATE,
                                   Method.ALLOCATE]))
    msg = Message(method, Class.REQUEST)
    if method == Method.ALLOCATE:
        transport = draw(st.sampled_from([17, 17, 17, 6, None, "short"]))
        if transport == "short":
            msg.add(Attr.REQUESTED_TRANSPORT, b"\x11\0")
        elif transport is not None:
            msg.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(transport))
    elif method == Method.REFRESH:
        lifetime = draw(st.sampled_from([None, 0, 30, 1200, 99999, "short"]))
        if lifetime == "short":
            msg.add(Attr.LIFETIME, b"\0\0\1")
        elif lifetime is not None:
            msg.add(Attr.LIFETIME, encode_uint32(lifetime))
    else:
        if method == Method.CHANNEL_BIND:
            number = draw(st.sampled_from([0x4000, 0x4001, 0x3FFF, 0x7FFF, 0x8000, None, "short"]))
            if number == "short":
                msg.add(Attr.CHANNEL_NUMBER, b"\x40\0")
            elif number is not None:
                msg.add(Attr.CHANNEL_NUMBER, encode_uint16(number))
        for kind, value in draw(st.lists(peer_values, max_size=3)):
            if kind == "address":
                msg.add_address(Attr.XOR_PEER_ADDRESS, value)
            else:
                msg.add(Attr.XOR_PEER_ADDRESS, value)
    opening = method == Method.ALLOCATE  # mostly the Allocates a client opens with, from a new five-tuple
    for attr_type, value in draw(st.one_of(st.just([]), extras) if opening else extras):
        msg.add(attr_type, value)
    return {
        "msg": msg,
        "tuple": draw(st.sampled_from([2, 2, 3, 0] if opening else [0, 0, 0, 1, 2, 3])),
        "user": draw(st.sampled_from(["owner"] * 4 + ["alice", "bob"])),
        "nonce": draw(st.sampled_from(["remembered"] * 5 + ["fresh", "garbage"])),
        "realm": draw(st.sampled_from([REALM] * 8 + ["other.org"])),
        "mac": draw(st.sampled_from(["none", "none", "valid", "valid", "bad", "sha256"] if opening
                                    else ["valid"] * 6 + ["bad", "sha256", "none"])),
        "fingerprint": draw(st.sampled_from(["none", "none", "valid", "wrong"])),
        "advance": draw(st.sampled_from([0, 0, 0, 1, 299, 601])),
    }


policies = st.fixed_dictionaries({
    "unauthorized_burst": st.sampled_from([1, 100]),
    "max_permissions": st.sampled_from([1, 2, 1000]),
    "max_channels": st.sampled_from([1, 1000]),
    "expire_with_credential": st.booleans(),
    "software": st.sampled_from([None, b"txrendezvous test"]),
    "user_quota": st.sampled_from([0, 0, 1]),
    "total_quota": st.sampled_from([0, 0, 3]),
    "relay_ports": st.sampled_from([100, 100, 3]),
})
# Applied once the first allocations are made: the families served, and whether the server drains.
later = st.tuples(st.sampled_from([frozenset({4})] * 4 + [frozenset({6}), frozenset({4, 6})]),
                  st.sampled_from([False] * 5 + [True]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies, later, st.sampled_from(["alice", *REST_USERS]), st.lists(requests(), min_size=1, max_size=8))
def test_fast_answers_and_tables_are_the_python_ones(policy, then, owner, steps):
    """Every request answered through the fast path gets the Python core's bytes (or, as there, none),
    and leaves the counters and every allocation's tables as the Python core leaves them."""
    servers = [make_server(dict(policy)), make_server(dict(policy))]
    owners = {TUPLES[0]: owner, TUPLES[1]: "bob"}
    nonces = {}
    for five_tuple, user in owners.items():
        allocate(servers, five_tuple, user)
    for server in servers:
        server.policy.families, server.draining = then
    for five_tuple in TUPLES:
        nonces[five_tuple] = servers[0].nonces.issue(five_tuple[1][0], START).encode()
    for step in steps:
        five_tuple = TUPLES[step["tuple"]]
        user = owners.get(five_tuple, owner) if step["user"] == "owner" else step["user"]
        for server in servers:
            server.clock.advance(step["advance"])
            server.expire(server.clock.seconds())
        now = servers[0].clock.seconds()
        nonce = {"remembered": nonces[five_tuple], "garbage": b"obMatJos2gAAAAAAAAAAAAAAAA",
                 "fresh": servers[0].nonces.issue(five_tuple[1][0], now).encode()}[step["nonce"]]
        if step["nonce"] == "fresh":
            nonces[five_tuple] = nonce  # the client's next requests repeat it
        msg = step["msg"]
        data = sign(Message(msg.method, msg.cls, msg.transaction_id, list(msg.attributes)), user, nonce,
                    step["realm"], step["mac"], step["fingerprint"])
        assert fast_path_first(servers[1], data, five_tuple) == python_path(servers[0], data, five_tuple)
        assert state(servers[1]) == state(servers[0])


def test_a_live_allocations_common_requests_are_answered_in_c():
    """Refresh, CreatePermission and ChannelBind signed as the Allocate was never reach the Python core,
    and get its bytes: success, 403 for a denied peer, 508 past the quota, LIFETIME 0 deleting."""
    servers = [make_server({"max_channels": 1, "software": b"txr"}), make_server({"max_channels": 1,
                                                                                "software": b"txr"})]
    five_tuple = TUPLES[0]
    allocate(servers, five_tuple, "alice")
    nonce = servers[0].nonces.issue(five_tuple[1][0], START).encode()
    requests = [
        Message(Method.CREATE_PERMISSION, Class.REQUEST).add_address(Attr.XOR_PEER_ADDRESS, PEERS[0]),
        Message(Method.CREATE_PERMISSION, Class.REQUEST).add_address(Attr.XOR_PEER_ADDRESS, PEERS[2]),
        Message(Method.CHANNEL_BIND, Class.REQUEST).add(Attr.CHANNEL_NUMBER, encode_uint16(0x4000))
        .add_address(Attr.XOR_PEER_ADDRESS, PEERS[0]),
        Message(Method.CHANNEL_BIND, Class.REQUEST).add(Attr.CHANNEL_NUMBER, encode_uint16(0x4001))
        .add_address(Attr.XOR_PEER_ADDRESS, PEERS[1]),
        Message(Method.REFRESH, Class.REQUEST).add(Attr.LIFETIME, encode_uint32(1200)),
        Message(Method.REFRESH, Class.REQUEST).add(Attr.LIFETIME, encode_uint32(0)),
    ]
    codes = []
    for msg in requests:
        data = sign(msg, "alice", nonce, fingerprint="valid")
        fast = server_fast.answer(servers[1], data, five_tuple, SENDER)
        assert fast is not None and fast == python_path(servers[0], data, five_tuple)
        answer = Message.decode(fast)
        codes.append(answer.cls if answer.cls == Class.SUCCESS else answer.get(Attr.ERROR_CODE)[2:4])
        assert answer.check_integrity(long_term_key("alice", REALM, "secret"))
    assert codes == [Class.SUCCESS, b"\x04\x03", Class.SUCCESS, b"\x05\x08", Class.SUCCESS, Class.SUCCESS]
    assert state(servers[1]) == state(servers[0]) and not servers[1].allocations


@pytest.mark.parametrize("user, change, expected", [
    ("alice", "stale nonce", b"\x04\x26"),
    (REST_USERS[0], "expired credential", b"\x04\x01"),
    ("alice", "new password", b"\x04\x01"),
    ("alice", "new realm", b"\x04\x01"),
])
def test_what_the_python_core_would_refuse_is_left_to_it(user, change, expected):
    """A stale nonce (438), an expired REST credential, a changed password or realm (401) make the fast path
    step aside, even though the request names what the allocation's last request named."""
    server = make_server({})
    five_tuple = TUPLES[0]
    allocate([server], five_tuple, user)
    nonce = server.nonces.issue(five_tuple[1][0], START).encode()
    data = sign(Message(Method.REFRESH, Class.REQUEST), user, nonce)
    server.clock.advance({"stale nonce": 601, "expired credential": 300}.get(change, 0))
    if change == "new password":
        server.credentials = Credentials([StaticUsers({"alice": "changed"}, REALM)])
    elif change == "new realm":
        server.policy.realm = "other.org"
    assert server_fast.answer(server, data, five_tuple, SENDER) is None
    assert Message.decode(python_path(server, data, five_tuple)).get(Attr.ERROR_CODE)[2:4] == expected


@pytest.mark.parametrize("attrs, fingerprint, taken", [
    ([(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))], False, True),
    ([(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)), (Attr.SOFTWARE, b"client")], True, True),
    ([(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)), (0x7F00, b"")], False, False),
    ([(Attr.USERHASH, bytes(32))], False, False),
])
def test_the_401_to_an_unsigned_allocate_is_answered_in_c(attrs, fingerprint, taken):
    """An Allocate without MESSAGE-INTEGRITY whose attributes Allocate takes gets its 401 from the fast path,
    the Python core's bytes; a limited source gets none from either; the rest is left to the Python core."""
    servers = [make_server({"unauthorized_burst": 1}), make_server({"unauthorized_burst": 1})]
    msg = Message(Method.ALLOCATE, Class.REQUEST, b"t" * 12, list(attrs))
    data = msg.encode(fingerprint=fingerprint)
    answers = [server_fast.answer(servers[1], data, TUPLES[2], SENDER) for _ in range(2)]
    if not taken:
        assert answers == [None, None]
        return
    assert answers[0] == python_path(servers[0], data, TUPLES[2])
    assert Message.decode(answers[0]).get(Attr.ERROR_CODE)[2:4] == b"\x04\x01"
    assert answers[1] == b"" and python_path(servers[0], data, TUPLES[2]) is None  # the source's burst is spent
    assert state(servers[1]) == state(servers[0])


@pytest.mark.parametrize("user, client, attrs, policy, expected", [
    ("alice", TUPLES[2], [], {}, None),
    ("alice", TUPLES[2], [(Attr.LIFETIME, encode_uint32(1200)), (Attr.DONT_FRAGMENT, b""), (Attr.SOFTWARE, b"c")], {},
     None),
    ("alice", TUPLES[3], [], {}, None),
    (REST_USERS[1], TUPLES[2], [(Attr.LIFETIME, encode_uint32(3600))], {"expire_with_credential": True}, None),
    ("alice", TUPLES[2], [], {"user_quota": 1}, b"\x04\x56"),
    ("alice", TUPLES[2], [], {"total_quota": 1}, b"\x05\x08"),
    ("alice", TUPLES[2], [], {"relay_ports": 1}, b"\x05\x08"),
])
def test_the_allocate_answering_a_401_is_answered_in_c(user, client, attrs, policy, expected):
    """A signed Allocate of the common form from a five-tuple without an allocation never reaches the Python
    core and gets its bytes: success with the allocation installed as the core installs it (sending to the
    client through sender; a REST credential's lifetime bounding the allocation's), or 486 and 508 past the
    quotas and the relay ports, nothing held."""
    servers = [make_server(dict(policy, software=b"txr")), make_server(dict(policy, software=b"txr"))]
    allocate(servers, TUPLES[1], "alice")  # holds the user's and the total quota of 1, and the one relay port
    nonce = servers[0].nonces.issue(client[1][0], START).encode()
    msg = Message(Method.ALLOCATE, Class.REQUEST, b"a" * 12,
                  [(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)), *attrs])
    data = sign(msg, user, nonce, fingerprint="valid")
    fast = server_fast.answer(servers[1], data, client, SENDER)
    assert fast is not None and fast == python_path(servers[0], data, client)
    answer = Message.decode(fast)
    assert answer.check_integrity(long_term_key(user, REALM, PASSWORDS[user]))
    if expected is None:
        assert answer.cls == Class.SUCCESS and servers[1].allocations[client].send is dropped
        assert answer.get(Attr.SOFTWARE) == b"txr" and answer.address(Attr.XOR_MAPPED_ADDRESS) == client[1]
    else:
        assert answer.get(Attr.ERROR_CODE)[2:4] == expected and client not in servers[1].allocations
    assert state(servers[1]) == state(servers[0])


@pytest.mark.parametrize("change", ["stale nonce", "new password", "new realm", "draining", "IPv6 only", "EVEN-PORT",
                                    "PASSWORD-ALGORITHMS", "TCP", "SHA-256 MAC"])
def test_an_allocate_the_python_core_decides_is_left_to_it(change):
    """A signed Allocate with a stale nonce or the wrong key, to a draining server or one without IPv4
    relays, or asking for more than the common form takes, makes the fast path step aside."""
    server = make_server({})
    client = TUPLES[2]
    nonce = server.nonces.issue(client[1][0], START).encode()
    msg = Message(Method.ALLOCATE, Class.REQUEST).add(
        Attr.REQUESTED_TRANSPORT, encode_requested_transport(6 if change == "TCP" else 17))
    if change == "EVEN-PORT":
        msg.add(Attr.EVEN_PORT, b"\x80")
    elif change == "PASSWORD-ALGORITHMS":
        msg.add(Attr.PASSWORD_ALGORITHMS, b"\0\x01\0\0")
    data = sign(msg, "alice", nonce, mac="sha256" if change == "SHA-256 MAC" else "valid")
    server.clock.advance(601 if change == "stale nonce" else 0)
    if change == "new password":
        server.credentials = Credentials([StaticUsers({"alice": "changed"}, REALM)])
    elif change == "new realm":
        server.policy.realm = "other.org"
    server.draining = change == "draining"
    if change == "IPv6 only":
        server.policy.families = frozenset({6})
    assert server_fast.answer(server, data, client, SENDER) is None
    assert python_path(server, data, client) is not None
