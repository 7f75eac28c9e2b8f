"""connect() and listen() between two clients of a real ``twistd rendezvous`` on loopback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from rendezvous.node.accounts import AccountStore
from rendezvous.peer import ConnectError, connect, listen
from rendezvous.peer.interfaces import ipv6_host_addresses
from tests.conftest import start_node, stop_node

pytestmark = pytest.mark.integration

PAIRS = (("alice", "bob"), ("carol", "dave"), ("erin", "frank"), ("gina", "hank"), ("ivan", "judy"), ("kim", "leo"),
         ("mia", "ned"), ("olga", "pete"))


@pytest.fixture(scope="module")
def super_node(tmp_path_factory):
    """A super node with pairs of buddies, one pair per test; its relay may reach loopback peers."""
    tmp = tmp_path_factory.mktemp("connect")
    store = AccountStore(tmp / "state" / "accounts.sqlite")
    for a, b in PAIRS:
        store.add(a, f"{a}-pw", "txrendezvous")
        store.add(b, f"{b}-pw", "txrendezvous")
        store.request_buddy(a, b)
        store.accept_buddy(b, a)
    store.close()
    node = start_node(tmp, "--allow-peer", "127.0.0.0/8")
    yield node
    stop_node(node)


def servers(node, tls=False):
    return [(node.ip, node.tls_port if tls else node.port)]


async def pair(node, caller, callee, tls=False, **options):
    """callee listens, caller connects; returns (caller's Connection, callee's Connection, listener).

    These tests are about the paths under a session, so they ask for the bare Connection
    (plaintext=True); tests/integration/test_sessions.py runs sessions over the same paths."""
    answered = Deferred()
    options.update(include_loopback=True, plaintext=True)
    listener = await listen(reactor, callee, f"{callee}-pw", answered.callback, servers(node, tls), tls=tls,
                            tls_verify=False, **options)
    try:
        mine = await connect(reactor, caller, f"{caller}-pw", callee, servers(node, tls), tls=tls,
                             tls_verify=False, **options)
        theirs = await answered.addTimeout(10, reactor)
    except BaseException:
        await listener.close()
        raise
    return mine, theirs, listener


async def exchange(mine, theirs):
    """A datagram each way arrives intact."""
    got_theirs, got_mine = Deferred(), Deferred()
    theirs.set_receiver(lambda data: got_theirs.called or got_theirs.callback(data))
    mine.set_receiver(lambda data: got_mine.called or got_mine.callback(data))
    for _ in range(5):  # datagrams: send a few, the first arrival counts
        mine.send(b"hello \x00\x01 from the caller")
        theirs.send(b"\x00\x01hello back")
    assert await got_theirs.addTimeout(5, reactor) == b"hello \x00\x01 from the caller"
    assert await got_mine.addTimeout(5, reactor) == b"\x00\x01hello back"


async def close(mine, theirs, listener):
    await mine.close()
    await theirs.close()
    await listener.close()


@pytest_twisted.ensureDeferred
async def test_direct_udp_on_loopback(super_node):
    """Two clients on one host connect directly over UDP, over the host's first IPv6 address when it has one
    (RFC 8421: IPv6 before IPv4), else over loopback; the attempts say so."""
    mine, theirs, listener = await pair(super_node, "alice", "bob")
    try:
        assert mine.path == theirs.path == "udp-direct"
        six = ipv6_host_addresses()
        assert mine.remote[0] == six[0] if six else mine.remote[0].startswith("127."), mine.remote
        assert mine.peer == "bob" and theirs.peer == "alice"
        assert [a.technique for a in mine.attempts if a.outcome == "selected"] == ["udp-direct"]
        await exchange(mine, theirs)
    finally:
        await close(mine, theirs, listener)


@pytest_twisted.ensureDeferred
async def test_tcp_punch_on_loopback(super_node):
    """With direct UDP off and no relay, the peers punch one TCP connection and frame datagrams on it;
    when the peer closes, what it sent just before arrives, then when_lost() fires."""
    mine, theirs, listener = await pair(super_node, "ivan", "judy", direct_transports=("tcp",),
                                        relay_transports=())
    try:
        assert mine.path == theirs.path == "tcp-punch"
        assert mine.remote == theirs.local and theirs.remote == mine.local
        assert [a.technique for a in mine.attempts if a.outcome == "selected"] == ["tcp-punch"]
        for side in (mine, theirs):  # each frame leaves at once, not behind Nagle and a delayed ACK
            assert side._session.tcp_stream.transport.getHandle().getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await exchange(mine, theirs)
        big = bytes(range(256)) * 200  # spans many TCP segments: the framing reassembles it
        got = Deferred()
        theirs.set_receiver(lambda data: got.called or got.callback(data))
        mine.send(big)
        assert await got.addTimeout(5, reactor) == big
        with pytest.raises(ValueError):
            mine.send(bytes(70000))
        lost, last = mine.when_lost(), Deferred()
        assert not lost.called
        mine.set_receiver(lambda data: last.called or last.callback(data))
        theirs.send(b"last words")
        await theirs.close()  # in the same tick: the peer goes, the caller learns its path is gone
        assert await last.addTimeout(5, reactor) == b"last words"
        assert await lost.addTimeout(5, reactor) == "the TCP connection closed"
    finally:
        await close(mine, theirs, listener)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_forced_relay(super_node, transport):
    """With direct candidates off, both sides go through the node's TURN relay over UDP, TCP or TLS."""
    mine, theirs, listener = await pair(super_node, "carol", "dave", direct_transports=(),
                                        relay_transports=(transport,))
    try:
        assert mine.path == theirs.path == f"turn-{transport}"
        await exchange(mine, theirs)
    finally:
        await close(mine, theirs, listener)


@pytest.mark.parametrize("caller_trickles, callee_trickles", [(True, True), (True, False), (False, True)])
@pytest_twisted.ensureDeferred
async def test_relay_candidates_trickle_and_old_style_peers_still_connect(super_node, caller_trickles,
                                                                          callee_trickles):
    """With only a relay, no candidate exists when the connect or answer leaves: the relayed ones
    trickle through the node (RFC 8838), and a side that sends all at once still connects."""
    answered = Deferred()
    options = dict(include_loopback=True, plaintext=True, direct_transports=(), relay_transports=("udp",))
    listener = await listen(reactor, "leo", "leo-pw", answered.callback, servers(super_node),
                            trickle=callee_trickles, **options)
    try:
        mine = await connect(reactor, "kim", "kim-pw", "leo", servers(super_node), trickle=caller_trickles,
                             **options)
        theirs = await answered.addTimeout(10, reactor)
    except BaseException:
        await listener.close()
        raise
    try:
        if caller_trickles:  # none in the connect, the relay one after it
            assert [c["type"] for c in mine._session._signaled] == ["relay"]
        assert mine.path == theirs.path == "turn-udp"
        await exchange(mine, theirs)
    finally:
        await close(mine, theirs, listener)


@pytest.mark.parametrize("route, caller, callee", [("direct", "mia", "ned"), ("relay", "olga", "pete")])
@pytest_twisted.ensureDeferred
async def test_consent_keeps_a_live_path_and_loses_a_silent_one(super_node, route, caller, callee):
    """RFC 7675 consent freshness, direct and through the relay: answered checks keep the path past the
    timeout; once the peer is gone without a word, when_lost() fires and send() drops."""
    options = {"direct_transports": (), "relay_transports": ("udp",)} if route == "relay" else {}
    mine, theirs, listener = await pair(super_node, caller, callee, consent_timeout_seconds=2, **options)
    try:
        assert mine.path == ("turn-udp" if route == "relay" else "udp-direct")
        lost = mine.when_lost()
        await deferLater(reactor, 3, lambda: None)  # past the timeout: every check was answered
        assert not lost.called and not theirs.when_lost().called
        await exchange(mine, theirs)
        await theirs.close()  # its sockets (and allocation) go; UDP says nothing
        reason = await lost.addTimeout(5, reactor)
        assert reason == "consent expired: no answer to a consent check for 2 s (RFC 7675)"
        mine.send(b"dropped")  # does not raise (that it sends nothing: test_connect_keepalive)
    finally:
        await close(mine, theirs, listener)


@pytest_twisted.ensureDeferred
async def test_signaling_over_tls_and_relay_on_its_port(super_node):
    """Logged in over TLS with UDP relaying off, the relay is reached over TLS on the signaling port."""
    mine, theirs, listener = await pair(super_node, "erin", "frank", tls=True, direct_transports=(),
                                        relay_transports=("tls",))
    try:
        assert mine.path == "turn-tls"
        await exchange(mine, theirs)
    finally:
        await close(mine, theirs, listener)


@pytest_twisted.ensureDeferred
async def test_nothing_possible_fails_with_attempts(super_node):
    """With no direct candidates and no relay, connect fails with ConnectError naming what it tried."""
    answered = Deferred()
    listener = await listen(reactor, "hank", "hank-pw", answered.callback, servers(super_node),
                            direct_transports=(), relay_transports=(), timeout_seconds=3, plaintext=True)
    try:
        with pytest.raises(ConnectError):
            await connect(reactor, "gina", "gina-pw", "hank", servers(super_node), direct_transports=(),
                          relay_transports=(), timeout_seconds=3, plaintext=True)
    finally:
        await listener.close()


def test_example_connects_two_processes(super_node, tmp_path):
    """docs/examples/connect.py listens in one process and connects from another; the answer comes back
    over an encrypted session's stream."""
    root = Path(__file__).resolve().parents[2]
    example = [sys.executable, str(root / "docs" / "examples" / "connect.py")]
    env = dict(os.environ, PYTHONPATH=str(root), XDG_STATE_HOME=str(tmp_path))  # the keys and pins go there
    server = f"{super_node.ip}:{super_node.port}"
    listener = subprocess.Popen(example + ["listen", server, "leo", "leo-pw", "--loopback"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert listener.stdout.readline().strip() == "listening as leo", listener.stderr.read()
        caller = subprocess.run(example + ["connect", server, "kim", "kim-pw", "leo", "--loopback"],
                                capture_output=True, text=True, env=env, timeout=60)
        assert caller.returncode == 0, caller.stderr
        assert "connected to leo by udp-direct" in caller.stdout and "answer: HELLO" in caller.stdout, caller.stdout
        out, err = listener.communicate(timeout=20)
        assert listener.returncode == 0 and "connected to kim by udp-direct" in out, (out, err)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(10)
