"""``rendezvous:`` endpoints against a real ``twistd rendezvous`` on loopback: Twisted's own
clientFromString and serverFromString run an echo protocol over a session stream, share logins and
sessions, and log out when done."""

import os
import subprocess
import sys
from itertools import combinations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from rendezvous.peer import Client, ConnectError
from rendezvous.peer.endpoints import _logins
from tests.conftest import ROOT, add_buddies, start_node, stop_node

pytestmark = pytest.mark.integration

USERS = ("alice", "bob", "carol", "watcher")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node where alice, bob and carol are each other's buddies, and watcher is everyone's."""
    tmp = tmp_path_factory.mktemp("endpoints")
    add_buddies(tmp / "state", list(combinations(USERS, 2)))
    started = start_node(tmp, "--allow-peer", "127.0.0.0/8")
    yield started
    stop_node(started)


@pytest.fixture
def strings(node, tmp_path):
    """Endpoint strings for each user: password files, state directories and loopback candidates."""
    def string(user, *extra):
        (tmp_path / f"{user}.pw").write_text(f"{user}-pw\n")
        return ":".join([f"rendezvous:host={node.ip}:port={node.port}:user={user}",
                         f"password-file={tmp_path / user}.pw", f"state-dir={tmp_path / user}", "loopback=yes",
                         *extra])
    return string


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Exchange(Protocol):
    """Sends a payload, finishes its direction, and collects what comes back until the stream ends."""

    def __init__(self, payload: bytes):
        self.payload, self.received, self.ended = payload, bytearray(), Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.loseConnection()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.ended.callback(bytes(self.received))


async def states(node, tmp_path) -> dict:
    """The buddies' presence as watcher sees it."""
    watcher = await Client.login(reactor, "watcher", "watcher-pw", [(node.ip, node.port)],
                                 state_dir=tmp_path / "watcher")
    try:
        return {b["user"]: b.get("state") for b in await watcher.buddies()}
    finally:
        await watcher.close()


async def offline(node, tmp_path, *users, seconds=5.0) -> dict:
    """Wait until the node shows every one of users offline; returns the last states seen."""
    found = {}
    for _ in range(int(seconds / 0.2)):
        found = await states(node, tmp_path)
        if all(found[user] == "offline" for user in users):
            break
        await deferLater(reactor, 0.2, lambda: None)
    return found


@pytest_twisted.ensureDeferred
async def test_an_echo_factory_served_and_a_protocol_connected_by_strings(node, tmp_path, strings):
    """serverFromString serves an echo factory as bob; clientFromString connects alice's protocol to it;
    300 kB come back intact, and once the stream ends and the port stops both users are logged out."""
    port = await serverFromString(reactor, strings("bob")).listen(Factory.forProtocol(Echo))
    try:
        assert (await states(node, tmp_path))["bob"] == "online"
        payload = os.urandom(300_000)
        exchange = await connectProtocol(clientFromString(reactor, strings("alice", "peer=bob", "linger=1")),
                                         Exchange(payload))
        assert exchange.transport.getPeer().user == "bob"
        session = exchange.transport.session  # lingers 1 s after the stream: the echo may end before direct
        assert await session.when_settled() == "udp-direct", session.attempts  # relay first, then direct
        assert await exchange.ended.addTimeout(15, reactor) == payload
    finally:
        await port.stopListening()
    assert await offline(node, tmp_path, "alice", "bob") == {"alice": "offline", "bob": "offline",
                                                               "carol": "offline"}
    assert not _logins


@pytest_twisted.ensureDeferred
async def test_connects_share_one_login_and_one_session(node, tmp_path, strings):
    """Two protocols connected at once, and a third within the linger, run on streams of one session;
    the login ends linger seconds after the last stream."""
    port = await serverFromString(reactor, strings("bob")).listen(Factory.forProtocol(Echo))
    try:
        endpoint = clientFromString(reactor, strings("alice", "peer=bob", "linger=1"))
        first, second = await gatherResults([connectProtocol(endpoint, Exchange(b"one" * 1000)),
                                             connectProtocol(endpoint, Exchange(b"two" * 1000))])
        assert first.transport.session is second.transport.session
        assert first.transport.stream_id != second.transport.stream_id
        assert await first.ended.addTimeout(10, reactor) == b"one" * 1000
        assert await second.ended.addTimeout(10, reactor) == b"two" * 1000
        third = await connectProtocol(endpoint, Exchange(b"three"))
        assert third.transport.session is first.transport.session
        assert await third.ended.addTimeout(10, reactor) == b"three"
        found = await offline(node, tmp_path, "alice", seconds=4.0)
        assert found["alice"] == "offline" and found["bob"] == "online"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_allow_lets_in_only_the_named_buddies(node, tmp_path, strings):
    """A port with allow=alice declines carol's session, and alice still gets through."""
    port = await serverFromString(reactor, strings("bob", "allow=alice")).listen(Factory.forProtocol(Echo))
    try:
        with pytest.raises(ConnectError, match="declined"):
            await connectProtocol(clientFromString(reactor, strings("carol", "peer=bob", "linger=0")),
                                  Exchange(b"hello"))
        exchange = await connectProtocol(clientFromString(reactor, strings("alice", "peer=bob", "linger=0")),
                                         Exchange(b"hello"))
        assert await exchange.ended.addTimeout(10, reactor) == b"hello"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_relay_carries_an_endpoint_stream(node, tmp_path, strings):
    """With relay-only=yes on both sides the stream runs through the node's TURN relay."""
    port = await serverFromString(reactor, strings("bob", "relay-only=yes")).listen(Factory.forProtocol(Echo))
    try:
        payload = os.urandom(100_000)
        exchange = await connectProtocol(
            clientFromString(reactor, strings("alice", "peer=bob", "linger=0", "relay-only=yes")), Exchange(payload))
        assert exchange.transport.session.path.startswith("turn-")
        assert await exchange.ended.addTimeout(15, reactor) == payload
    finally:
        await port.stopListening()


def test_the_embedding_example_runs(node, tmp_path):
    """docs/examples/endpoint_echo.py serves an echo by serverFromString in one process and talks to it
    by clientFromString from another; the answer comes back and both exit 0."""
    example = [sys.executable, str(ROOT / "docs" / "examples" / "endpoint_echo.py")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp_path / "state"), ALICE_PW="alice-pw",
               BOB_PW="bob-pw")
    common = f"rendezvous:host={node.ip}:port={node.port}:loopback=yes"
    server = subprocess.Popen([*example, "serve", f"{common}:user=bob:password-env=BOB_PW"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "serving as bob", server.stderr.read()
        client = subprocess.run([*example, "call", f"{common}:user=alice:password-env=ALICE_PW:peer=bob"],
                                env=env, capture_output=True, text=True, timeout=30)
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines()[-1] == "echoed: hello over a rendezvous: endpoint"
        out, err = server.communicate(timeout=20)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
