"""Signaling against the real ``twistd rendezvous`` over TCP and TLS on the STUN ports."""

import socket
import ssl
import time

import pytest

from rendezvous.accounts import AccountStore
from rendezvous.signaling_frames import FrameReader, encode
from rendezvous.stun import Attr, Class, Message, Method
from tests.conftest import start_node, stop_node
from tests.turn_helpers import UdpTurnClient

pytestmark = pytest.mark.integration


class Client:
    """A blocking signaling client: sends frames, waits for a given op."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(5)
        self.reader = FrameReader()
        self.inbox = []
        self.next_id = 0

    def send(self, op, **fields):
        self.next_id += 1
        self.sock.sendall(encode({"op": op, "id": self.next_id, **fields}))
        return self.next_id

    def _take(self, wanted, what):
        """The first inbox message wanted() accepts, reading (and answering pings) until it comes."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for message in self.inbox:
                if wanted(message):
                    self.inbox.remove(message)
                    return message
            data = self.sock.recv(65536)
            assert data, "connection closed"
            for message in self.reader.feed(data):
                if message["op"] == "ping":
                    self.sock.sendall(encode({"op": "pong", "token": message["token"]}))
                self.inbox.append(message)
        raise AssertionError(f"no {what} in {self.inbox}")

    def wait(self, op, **match):
        return self._take(lambda m: m["op"] == op and all(m.get(k) == v for k, v in match.items()), op)

    def call(self, op, **fields):
        request_id = self.send(op, **fields)
        return self._take(lambda m: m.get("id") == request_id, f"answer to {op}")


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


def connect(node, tls=False):
    if tls:
        context = ssl.create_default_context(cafile=str(node.state_dir / "tls" / "self-signed.pem"))
        raw = socket.create_connection((node.ip, node.tls_port), timeout=5)
        return Client(context.wrap_socket(raw, server_hostname="localhost"))
    return Client(socket.create_connection((node.ip, node.port), timeout=5))


def login(node, name, tls=False):
    client = connect(node, tls)
    welcome = client.call("login", user=name, password=f"{name}-pw")
    assert welcome["op"] == "welcome", welcome
    return client, welcome


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_login_join_information(super_node, tls):
    """Login on the STUN port returns the mapped address, host cache, relays, version and TURN credentials."""
    client, welcome = login(super_node, "carol", tls)
    assert welcome["mapped"] == list(client.sock.getsockname())
    assert welcome["host_cache"] == [{"host": "198.18.0.10", "port": 3478, "load": 0}]
    assert welcome["latest_client_version"] == "3.1" and welcome["node"] == "node-a"
    assert any(url.startswith("turn:127.0.0.1:") for url in welcome["relays"])
    turn = welcome["turn"]
    relay = UdpTurnClient((super_node.ip, super_node.port), turn["username"], turn["password"], turn["realm"])
    assert relay.allocate().cls == Class.SUCCESS  # the handed-out credentials work on this node's relay
    relay.close()
    client.sock.close()


def test_stun_still_works_on_the_shared_port(super_node):
    """STUN over TCP shares the port with signaling."""
    with socket.create_connection((super_node.ip, super_node.port), timeout=5) as s:
        s.sendall(Message(Method.BINDING, Class.REQUEST).encode())
        response = Message.decode(s.recv(2048))
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()


def test_buddies_presence_lookup_messages_and_connect(super_node):
    """Two users become buddies, see each other's presence, message, and coordinate a connect."""
    alice, _ = login(super_node, "alice")
    bob, _ = login(super_node, "bob", tls=True)
    assert alice.call("buddy-add", user="bob")["state"] in ("requested", "accepted")
    bob.wait("buddy-request", **{"from": "alice"})
    assert bob.call("buddy-accept", user="alice")["state"] == "accepted"
    assert alice.wait("presence", user="bob")["state"] == "online"
    bob.call("presence", state="busy", nat_type="address-dependent")
    assert alice.wait("presence", user="bob", state="busy")["nat_type"] == "address-dependent"
    assert alice.call("lookup", user="bob")["online"] is True
    alice.call("message", to="bob", text="hello over the super node")
    assert bob.wait("message")["text"] == "hello over the super node"
    candidates = [{"type": "srflx", "ip": "127.0.0.1", "port": 40000, "protocol": "udp"}]
    token = alice.call("connect", to="bob", candidates=candidates)["token"]
    request = bob.wait("connect-request", token=token)
    assert request["candidates"] == candidates
    bob.send("connect-answer", token=token, candidates=[{"type": "host", "ip": "127.0.0.1", "port": 40001}])
    to_alice, to_bob = alice.wait("punch", token=token), bob.wait("punch", token=token)
    assert to_alice["candidates"][0]["port"] == 40001 and to_bob["candidates"][0]["port"] == 40000
    assert to_alice["start_in_ms"] > 0 and to_bob["start_in_ms"] > 0
    bob.sock.close()
    assert alice.wait("presence", user="bob", state="offline")
    alice.sock.close()


def test_garbage_closes_only_that_connection(super_node):
    """A broken signaling stream gets an error frame and is closed; others carry on."""
    good, _ = login(super_node, "carol")
    bad = socket.create_connection((super_node.ip, super_node.port), timeout=5)
    bad.sendall(b"\xf5\x09\x00\x00")
    data = bad.recv(4096)
    assert b"bad-frame" in data
    assert bad.recv(4096) == b""
    assert good.call("buddy-list")["op"] == "buddies"
    good.sock.close()


def test_restart_keeps_accounts_and_buddies(tmp_path):
    """Accounts and buddy lists survive a node restart (the SQLite file in the state dir)."""
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    store.add("alice", "alice-pw", "txrendezvous")
    store.add("bob", "bob-pw", "txrendezvous")
    store.close()
    node = start_node(tmp_path, alternate=False)
    try:
        alice, _ = login(node, "alice")
        alice.call("buddy-add", user="bob")
        bob, _ = login(node, "bob")
        bob.call("buddy-accept", user="alice")
        alice.sock.close()
        bob.sock.close()
    finally:
        stop_node(node)
    node = start_node(tmp_path, alternate=False)
    try:
        alice, _ = login(node, "alice")
        assert alice.call("buddy-list")["buddies"][0]["relation"] == "accepted"
        alice.sock.close()
    finally:
        stop_node(node)


def test_a_client_that_does_not_read_is_disconnected(super_node):
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
    client, _ = login(super_node, "carol")
    client.sock.close()


def test_open_registration(tmp_path):
    """With --open-registration a new user registers over signaling and logs in; without it, refused."""
    node = start_node(tmp_path, "--open-registration", alternate=False)
    try:
        client = connect(node)
        assert client.call("register", user="newbie", password="newbie-pw")["op"] == "registered"
        assert client.call("login", user="newbie", password="newbie-pw")["op"] == "welcome"
        client.sock.close()
    finally:
        stop_node(node)
    (tmp_path / "closed").mkdir()
    closed = start_node(tmp_path / "closed", alternate=False)
    try:
        client = connect(closed)
        assert client.call("register", user="newbie", password="pw")["code"] == "forbidden"
        client.sock.close()
    finally:
        stop_node(closed)
