"""Encrypted sessions between two clients of a real ``twistd rendezvous`` on loopback, and a node that lies.

connect() and listen() hand over a QUIC session whose peer proved, in the
TLS 1.3 handshake, the certificate fingerprint that came through the node;
fingerprints are pinned on first use, so a node that swaps them later is
refused.
"""

import json
import os
import shutil
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from rendezvous.node.accounts import AccountStore
from rendezvous.peer import Client, ConnectError, FingerprintChanged, SessionError, connect, listen
from rendezvous.peer.signaling_client import SignalingRequestError
from rendezvous.peer import spare_relay
from rendezvous.peer.identity import Identity
from tests.conftest import start_node, stop_node

pytestmark = pytest.mark.integration

PAIRS = (("alice", "bob"), ("carol", "dave"), ("erin", "frank"), ("gina", "hank"), ("ivan", "judy"),
         ("max", "nia"), ("oli", "pia"))
STRANGERS = ("kay", "lou")  # accounts that are nobody's buddies yet
ATTACKER = Identity.generate("mallory")


def make_accounts(state_dir):
    store = AccountStore(state_dir / "accounts.sqlite")
    for a, b in PAIRS:
        store.add(a, f"{a}-pw", "txrendezvous")
        store.add(b, f"{b}-pw", "txrendezvous")
        store.request_buddy(a, b)
        store.accept_buddy(b, a)
    for stranger in STRANGERS:
        store.add(stranger, f"{stranger}-pw", "txrendezvous")
    store.close()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """An honest super node and a tampering one, with the same accounts; their relays reach loopback."""
    started = {}
    for name, launcher in (("honest", None), ("tampering", [sys.executable, "-m", "tests.tampering_node",
                                                            ATTACKER.fingerprint])):
        tmp = tmp_path_factory.mktemp(name)
        make_accounts(tmp / "state")
        started[name] = start_node(tmp, "--allow-peer", "127.0.0.0/8", launcher=launcher)
    yield started
    for node in started.values():
        stop_node(node)


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self, expected: int):
        self.expected, self.data, self.done = expected, b"", Deferred()

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= self.expected and not self.done.called:
            self.done.callback(self.data)


async def pair(node, caller, callee, tmp_path, tls=False, **options):
    """callee listens, caller connects (each with its own state directory); returns (mine, theirs, listener)."""
    answered = Deferred()
    options.update(include_loopback=True, tls=tls, tls_verify=False)
    server = [(node.ip, node.tls_port if tls else node.port)]
    listener = await listen(reactor, callee, f"{callee}-pw", answered.callback, server,
                            state_dir=tmp_path / callee, **options)
    try:
        mine = await connect(reactor, caller, f"{caller}-pw", callee, server, state_dir=tmp_path / caller, **options)
        theirs = await answered.addTimeout(10, reactor)
    except BaseException:
        await listener.close()
        raise
    return mine, theirs, listener


async def echo_check(mine, theirs):
    """A 200 kB stream comes back intact through the peer's echo, and a datagram arrives."""
    theirs.accept_streams(Factory.forProtocol(Echo))
    payload = bytes(range(256)) * 800
    collector = Collect(len(payload))
    mine.open_stream(collector).write(payload)
    assert await collector.done.addTimeout(10, reactor) == payload
    got = Deferred()
    theirs.set_datagram_receiver(lambda data: got.called or got.callback(data))
    for _ in range(5):
        mine.send_datagram(b"datagram \x00 over quic")
    assert await got.addTimeout(5, reactor) == b"datagram \x00 over quic"


async def close(mine, theirs, listener):
    await mine.close()
    await theirs.close()
    await listener.close()


@pytest_twisted.ensureDeferred
async def test_direct_session_carries_streams_and_datagrams_and_pins_the_peer(nodes, tmp_path):
    """A direct UDP session: each side saw the other's real fingerprint, streams and datagrams work,
    and each side's pin file now holds the other's fingerprint."""
    mine, theirs, listener = await pair(nodes["honest"], "alice", "bob", tmp_path)
    try:
        assert await mine.when_settled() == await theirs.when_settled() == "udp-direct"
        alice = Identity.load_or_create(tmp_path / "alice" / "alice.identity.pem", "alice")
        bob = Identity.load_or_create(tmp_path / "bob" / "bob.identity.pem", "bob")
        assert mine.peer_fingerprint == bob.fingerprint and theirs.peer_fingerprint == alice.fingerprint
        await echo_check(mine, theirs)
        pins = json.loads((tmp_path / "alice" / "alice.pins.json").read_text())["pins"]
        assert pins == {"bob": bob.fingerprint}
    finally:
        await close(mine, theirs, listener)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_session_through_the_relay(nodes, tmp_path, transport):
    """With direct candidates off, the session runs through the node's TURN relay over UDP, TCP or TLS
    (TLS on the port signaling reached over TLS)."""
    mine, theirs, listener = await pair(nodes["honest"], "carol", "dave", tmp_path, tls=transport == "tls",
                                        direct_transports=(), relay_transports=(transport,))
    try:
        assert await mine.when_settled() == await theirs.when_settled() == f"turn-{transport}"
        await echo_check(mine, theirs)
    finally:
        await close(mine, theirs, listener)


@pytest.mark.parametrize("closer", ["caller", "callee"])
@pytest_twisted.ensureDeferred
async def test_closing_a_session_on_the_punched_stream_closes_the_peers(nodes, tmp_path, closer):
    """On the punched TCP stream, closing a session sends QUIC's CONNECTION_CLOSE before the stream's FIN,
    so the peer's session ends as closed by the peer, not as a lost path to wait for or restart through the node."""
    mine, theirs, listener = await pair(nodes["honest"], "oli", "pia", tmp_path, direct_transports=("tcp",),
                                        relay_transports=())
    restarts = []
    mine.restarter = lambda session: restarts.append(session) or Deferred()  # the calling side's restart
    try:
        assert await mine.when_settled() == await theirs.when_settled() == "tcp-punch"
        await echo_check(mine, theirs)
        closing, peer = (mine, theirs) if closer == "caller" else (theirs, mine)
        ended = peer.when_closed()
        await closing.close()
        assert (await ended.addTimeout(5, reactor)).startswith("the peer closed the session")
        assert restarts == []
    finally:
        await close(mine, theirs, listener)


@pytest_twisted.ensureDeferred
async def test_a_tampering_node_fails_the_handshake_on_first_contact(nodes, tmp_path):
    """A node that swaps in an attacker's fingerprint cannot make the real peer prove it: the session
    fails and nothing is pinned."""
    with pytest.raises(SessionError, match="fingerprint"):
        await pair(nodes["tampering"], "erin", "frank", tmp_path)
    assert not (tmp_path / "erin" / "erin.pins.json").exists()


@pytest_twisted.ensureDeferred
async def test_pinned_peers_refuse_a_tampering_node(nodes, tmp_path):
    """After one honest session, a node that swaps fingerprints is refused before any packet goes to the
    peer: the callee declines the request ("fingerprint-changed"), and a caller that pinned the callee
    raises FingerprintChanged as soon as the punch shows the attacker's fingerprint."""
    mine, theirs, listener = await pair(nodes["honest"], "gina", "hank", tmp_path)
    await close(mine, theirs, listener)
    with pytest.raises(ConnectError, match="hank refused: the fingerprint the node passed on for you"):
        await pair(nodes["tampering"], "gina", "hank", tmp_path)
    shutil.rmtree(tmp_path / "hank")  # hank pins no one now: only gina's pin stands between her and the node
    with pytest.raises(FingerprintChanged) as raised:
        await pair(nodes["tampering"], "gina", "hank", tmp_path)
    assert raised.value.presented == ATTACKER.fingerprint and "hank" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_a_peer_with_a_new_key_needs_allow_new_fingerprint(nodes, tmp_path):
    """When a pinned peer's key really changes, connect() refuses it unless allow_new_fingerprint, which re-pins."""
    mine, theirs, listener = await pair(nodes["honest"], "ivan", "judy", tmp_path)
    await close(mine, theirs, listener)
    shutil.rmtree(tmp_path / "judy")  # judy lost her key; a new one is made
    with pytest.raises(FingerprintChanged):
        await pair(nodes["honest"], "ivan", "judy", tmp_path)
    mine, theirs, listener = await pair(nodes["honest"], "ivan", "judy", tmp_path, allow_new_fingerprint=True)
    await close(mine, theirs, listener)
    judy = Identity.load_or_create(tmp_path / "judy" / "judy.identity.pem", "judy")
    assert json.loads((tmp_path / "ivan" / "ivan.pins.json").read_text())["pins"]["judy"] == judy.fingerprint


@pytest_twisted.ensureDeferred
async def test_a_long_lived_client_makes_buddies_and_many_sessions(nodes, tmp_path):
    """Two Clients stay logged in: they become buddies, see each other's presence, and run two
    sessions one after the other without logging in again."""
    server = [(nodes["honest"].ip, nodes["honest"].port)]
    kay = await Client.login(reactor, "kay", "kay-pw", server, include_loopback=True, state_dir=tmp_path / "kay")
    lou = await Client.login(reactor, "lou", "lou-pw", server, include_loopback=True, state_dir=tmp_path / "lou")
    try:
        seen = Deferred()
        kay.on_presence(lambda frame: frame.get("user") == "lou" and not seen.called and seen.callback(frame))
        assert await kay.add_buddy("lou") == "requested"
        assert await lou.accept_buddy("kay") == "accepted"
        assert (await seen.addTimeout(5, reactor))["state"] == "online"
        accepted = DeferredQueue()
        await lou.listen(accepted.put)
        for _ in range(2):
            session = await kay.connect("lou")
            assert await session.when_settled() == "udp-direct" and session in kay.sessions
            theirs = await accepted.get().addTimeout(5, reactor)
            await echo_check(session, theirs)
            await session.close()
            await theirs.close()
        assert kay.sessions == [] and lou.sessions == [] and kay.signaling.connected
        assert {"user": "lou", "relation": "accepted", "state": "online"} in await kay.buddies()
        assert await kay.remove_buddy("lou") == "removed"
    finally:
        await kay.close()
        await lou.close()


@pytest_twisted.ensureDeferred
async def test_a_logged_in_client_starts_sessions_on_its_spare_allocation(nodes, tmp_path, monkeypatch):
    """A logged-in client holds a relay allocation before it connects; its next session starts on that very
    allocation, a new spare is made after it, and closing the client releases the spare."""
    monkeypatch.setattr(spare_relay, "REPLENISH_SECONDS", 0.5)
    server = [(nodes["honest"].ip, nodes["honest"].port)]
    options = dict(include_loopback=True, direct_transports=(), relay_transports=("udp",))
    gina = await Client.login(reactor, "gina", "gina-pw", server, state_dir=tmp_path / "gina", **options)
    hank = await Client.login(reactor, "hank", "hank-pw", server, state_dir=tmp_path / "hank", **options)
    try:
        accepted = DeferredQueue()
        await hank.listen(accepted.put)
        spares = []
        for client in (gina, hank):
            await until(lambda: client._spare.ready is not None)
            spares.append(client._spare.ready[0])
        session = await gina.connect("hank")
        theirs = await accepted.get().addTimeout(5, reactor)
        assert session.path == "turn-udp" and all(spare.on_data is not None for spare in spares)
        assert {gina._spare.ready, hank._spare.ready} == {None}  # taken: both sessions run on the spares
        await echo_check(session, theirs)
        await session.close()
        await theirs.close()
        await until(lambda: gina._spare.ready is not None)
        replacement = gina._spare.ready[0]
        assert replacement.relayed_address != spares[0].relayed_address and not spares[0].allocated
    finally:
        await gina.close()
        await hank.close()
    assert not replacement.allocated


async def until(condition, seconds: float = 5.0) -> None:
    """Wait (polling the reactor) until condition() holds; fails after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"not within {seconds} s")


def open_sockets() -> int:
    """This process's open sockets (each a /proc/self/fd link to socket:[...])."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return count


@pytest_twisted.ensureDeferred
async def test_a_failed_connect_leaves_no_socket_or_allocation_behind(nodes, tmp_path):
    """A connect to a buddy who is offline fails, and the attempt's sockets and TURN allocation go with it."""
    server = [(nodes["honest"].ip, nodes["honest"].port)]
    client = await Client.login(reactor, "max", "max-pw", server, include_loopback=True, state_dir=tmp_path / "max")
    try:
        before = open_sockets()
        for _ in range(3):
            with pytest.raises(SignalingRequestError, match="offline"):
                await client.connect("nia")
        await deferLater(reactor, 1.0, lambda: None)  # TURN deallocations and socket closes finish
        assert open_sockets() <= before, (open_sockets(), before)
    finally:
        await client.close()
