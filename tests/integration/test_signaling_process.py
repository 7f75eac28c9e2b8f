"""Signaling against the real ``twistd rendezvous`` over TCP and TLS on the STUN ports."""

import socket
import time

import pytest
import pytest_twisted

from rendezvous.node.accounts import AccountStore
from rendezvous.peer.signaling_client import SignalingClient, SignalingRequestError
from rendezvous.wire.frames import encode
from rendezvous.stun import Attr, Class, Message, Method
from tests.conftest import start_node, stop_node
from tests.signaling_helpers import RawSignaling, login
from tests.turn_helpers import UdpTurnClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def super_node(tmp_path_factory):
    """A super node whose account store already holds alice, bob and carol."""
    tmp = tmp_path_factory.mktemp("super")
    store = AccountStore(tmp / "state" / "accounts.sqlite")
    for name in ("alice", "bob", "carol"):
        store.add(name, f"{name}-pw", "txrendezvous")
    store.close()
    node = start_node(tmp, "--latest-client-version", "3.1", "--peer-node", "198.18.0.10:3478",
                      "--node-name", "node-a", "--allow-peer", "127.0.0.0/8")
    yield node
    stop_node(node)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_login_join_information(super_node, tls):
    """Login on the STUN port returns the mapped address, host cache, relays, version and TURN credentials."""
    client = await login(super_node, "carol", tls)
    welcome = client.welcome
    assert client.mapped_address == client.local_address
    assert (client.user, client.node, client.relays) == ("carol", "node-a", welcome["relays"])
    assert client.server == (super_node.ip, super_node.tls_port if tls else super_node.port)
    assert welcome["host_cache"] == [{"host": "198.18.0.10", "port": 3478, "load": 0}]
    assert welcome["latest_client_version"] == "3.1" and welcome["node"] == "node-a"
    assert any(url.startswith("turn:127.0.0.1:") for url in welcome["relays"])
    turn = welcome["turn"]
    relay = UdpTurnClient((super_node.ip, super_node.port), turn["username"], turn["password"], turn["realm"])
    assert relay.allocate().cls == Class.SUCCESS  # the handed-out credentials work on this node's relay
    relay.close()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused(super_node):
    """A wrong password fails the login with the node's unauthenticated error, and no other node is tried."""
    from twisted.internet import reactor

    with pytest.raises(SignalingRequestError) as refused:
        await SignalingClient.login(reactor, "carol", "not-carol", servers=[(super_node.ip, super_node.port)])
    assert refused.value.code == "unauthenticated"


def test_stun_still_works_on_the_shared_port(super_node):
    """STUN over TCP shares the port with signaling."""
    with socket.create_connection((super_node.ip, super_node.port), timeout=5) as s:
        s.sendall(Message(Method.BINDING, Class.REQUEST).encode())
        response = Message.decode(s.recv(2048))
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()


@pytest_twisted.ensureDeferred
async def test_buddies_presence_lookup_messages_and_connect(super_node):
    """Two users become buddies, see each other's presence, message, and coordinate a connect with ICE credentials."""
    alice = await login(super_node, "alice")
    bob = await login(super_node, "bob", tls=True)
    assert (await alice.request("buddy-add", user="bob"))["state"] in ("requested", "accepted")
    await bob.inbox.wait("buddy-request", **{"from": "alice"})
    assert (await bob.request("buddy-accept", user="alice"))["state"] == "accepted"
    assert (await alice.inbox.wait("presence", user="bob"))["state"] == "online"
    await bob.set_presence("busy", nat_type="address-dependent")
    assert (await alice.inbox.wait("presence", user="bob", state="busy"))["nat_type"] == "address-dependent"
    assert (await alice.request("lookup", user="bob"))["online"] is True
    await alice.request("message", to="bob", text="hello over the super node")
    assert (await bob.inbox.wait("message"))["text"] == "hello over the super node"
    candidates = [{"type": "srflx", "ip": "127.0.0.1", "port": 40000, "protocol": "udp"}]
    a_ice, b_ice = {"ufrag": "AliC", "pwd": "a" * 24}, {"ufrag": "b0b+", "pwd": "B/" * 12}
    token = (await alice.request("connect", to="bob", candidates=candidates, **a_ice))["token"]
    request = await bob.inbox.wait("connect-request", token=token)
    assert request["candidates"] == candidates and (request["ufrag"], request["pwd"]) == (a_ice["ufrag"], a_ice["pwd"])
    bob.send("connect-answer", token=token, candidates=[{"type": "host", "ip": "127.0.0.1", "port": 40001}], **b_ice)
    to_alice, to_bob = await alice.inbox.wait("punch", token=token), await bob.inbox.wait("punch", token=token)
    assert to_alice["candidates"][0]["port"] == 40001 and to_bob["candidates"][0]["port"] == 40000
    assert (to_alice["ufrag"], to_alice["pwd"], to_bob["ufrag"], to_bob["pwd"]) == (
        b_ice["ufrag"], b_ice["pwd"], a_ice["ufrag"], a_ice["pwd"])
    assert to_alice["start_in_ms"] > 0 and to_bob["start_in_ms"] > 0
    await bob.close()
    assert await alice.inbox.wait("presence", user="bob", state="offline")
    await alice.close()


@pytest_twisted.ensureDeferred
async def test_garbage_closes_only_that_connection(super_node):
    """A broken signaling stream gets an error frame and is closed; others carry on."""
    good = await login(super_node, "carol")
    bad = socket.create_connection((super_node.ip, super_node.port), timeout=5)
    bad.sendall(b"\xf5\x09\x00\x00")
    data = bad.recv(4096)
    assert b"bad-frame" in data
    assert bad.recv(4096) == b""
    assert (await good.request("buddy-list"))["op"] == "buddies"
    await good.close()


def test_frames_before_bad_bytes_in_one_write_are_answered(super_node):
    """A ping followed by bad bytes in the same TCP write gets its pong, then bad-frame, then the close."""
    raw = RawSignaling(super_node)
    raw.write(encode({"op": "ping", "id": 1, "token": "first"}) + b"GARBAGE!")
    frames = raw.until_closed()
    raw.close()
    assert [frame["op"] for frame in frames] == ["pong", "error"]
    assert frames[0]["token"] == "first" and frames[1]["code"] == "bad-frame"


@pytest_twisted.ensureDeferred
async def test_message_before_bad_bytes_in_one_write_is_delivered(super_node):
    """A message followed by bad bytes in the same TCP write reaches the buddy before the sender is closed."""
    alice, bob = await login(super_node, "alice"), await login(super_node, "bob")
    await alice.request("buddy-add", user="bob")
    await bob.request("buddy-accept", user="alice")
    await alice.close()
    raw = RawSignaling(super_node)
    raw.login("alice")
    raw.write(encode({"op": "message", "id": 2, "to": "bob", "text": "last words"}) + b"GARBAGE!")
    assert (await bob.inbox.wait("message", **{"from": "alice"}))["text"] == "last words"
    assert [frame["op"] for frame in raw.until_closed()] == ["delivered", "error"]
    raw.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_restart_keeps_accounts_and_buddies(tmp_path):
    """Accounts and buddy lists survive a node restart (the SQLite file in the state dir)."""
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    store.add("alice", "alice-pw", "txrendezvous")
    store.add("bob", "bob-pw", "txrendezvous")
    store.close()
    node = start_node(tmp_path, alternate=False)
    try:
        alice = await login(node, "alice")
        await alice.request("buddy-add", user="bob")
        bob = await login(node, "bob")
        await bob.request("buddy-accept", user="alice")
        await alice.close()
        await bob.close()
    finally:
        stop_node(node)
    node = start_node(tmp_path, alternate=False)
    try:
        alice = await login(node, "alice")
        assert (await alice.request("buddy-list"))["buddies"][0]["relation"] == "accepted"
        await alice.close()
    finally:
        stop_node(node)


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_is_disconnected(super_node):
    """Answers piling up for a client that stops reading end its connection; the node stays well."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect((super_node.ip, super_node.port))
    ping = encode({"op": "ping", "token": "t" * 60})
    try:
        for _ in range(40):
            sock.sendall(ping * 2000)
    except OSError:
        pass  # closed by the node while we were still sending
    deadline = time.monotonic() + 20
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            closed = sock.recv(1 << 20) == b""
        except socket.timeout:
            break
        except ConnectionError:
            closed = True
    sock.close()
    assert closed
    assert "does not read; closing" in super_node.log()
    client = await login(super_node, "carol")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_open_registration(tmp_path):
    """With --open-registration a new user registers over signaling and logs in; without it, refused."""
    node = start_node(tmp_path, "--open-registration", alternate=False)
    try:
        client = await login(node, "newbie", register=True)
        assert client.user == "newbie"
        await client.close()
        again = await login(node, "newbie", register=True)  # an existing account is fine
        await again.close()
    finally:
        stop_node(node)
    (tmp_path / "closed").mkdir()
    closed = start_node(tmp_path / "closed", alternate=False)
    try:
        with pytest.raises(SignalingRequestError) as refused:
            await login(closed, "newbie", register=True)
        assert refused.value.code == "forbidden"
    finally:
        stop_node(closed)
