"""Two super nodes sharing a real Redis: a user on node A reaches a buddy on node B."""

import shutil
import subprocess
import time

import pytest
import redis

from rendezvous.accounts import AccountStore
from tests.conftest import free_port, start_node, stop_node
from tests.integration.test_signaling_process import login

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of our own on a free loopback port, without persistence."""
    port = free_port(ips=("127.0.0.1",))
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, redis_url):
    """Super nodes A and B on one Redis and one account store."""
    tmp = tmp_path_factory.mktemp("nodes")
    accounts = tmp / "accounts.sqlite"
    store = AccountStore(accounts)
    for name in ("alice", "bob"):
        store.add(name, f"{name}-pw", "txrendezvous")
    store.close()
    nodes = []
    for name in ("node-a", "node-b"):
        (tmp / name).mkdir()
        nodes.append(start_node(tmp / name, "--redis", redis_url, "--node-name", name, "--accounts", str(accounts),
                                alternate=False))
    yield nodes
    for node in nodes:
        stop_node(node)


def wait_for_peer_node(node, other):
    """Log in until node's host cache lists the other node (registry refresh every 5 s)."""
    deadline = time.monotonic() + 15
    while True:
        client, welcome = login(node, "alice")
        client.sock.close()
        if any(entry["port"] == other.port for entry in welcome["host_cache"]):
            return
        assert time.monotonic() < deadline, welcome
        time.sleep(0.5)


def until(check, seconds=10.0):
    """Poll check() until it returns something true (pub/sub delivery is asynchronous)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_buddies_on_two_nodes(two_nodes):
    """Buddy request, presence, lookup, messages and connect coordination cross from node A to node B."""
    a, b = two_nodes
    wait_for_peer_node(a, b)
    wait_for_peer_node(b, a)
    alice, _ = login(a, "alice")
    bob, _ = login(b, "bob")
    # A learns of bob's login through Redis; resend the request until it is routed.
    def request_reaches_bob():
        alice.call("buddy-add", user="bob")
        try:
            bob.sock.settimeout(1)
            return bob.wait("buddy-request", **{"from": "alice"})
        except (AssertionError, OSError):
            return None
        finally:
            bob.sock.settimeout(5)
    until(request_reaches_bob)
    bob.call("buddy-accept", user="alice")
    assert alice.wait("presence", user="bob")["node"] == "node-b"
    bob.call("presence", state="away")
    assert alice.wait("presence", user="bob", state="away")
    peer = until(lambda: (lambda p: p if p["online"] else None)(alice.call("lookup", user="bob")))
    assert peer["node"] == "node-b"
    alice.call("message", to="bob", text="across nodes")
    assert bob.wait("message")["text"] == "across nodes"
    token = alice.call("connect", to="bob", candidates=[{"type": "srflx", "ip": "127.0.0.1", "port": 1111}])["token"]
    assert bob.wait("connect-request", token=token)["from"] == "alice"
    bob.send("connect-answer", token=token, candidates=[{"type": "srflx", "ip": "127.0.0.1", "port": 2222}])
    assert alice.wait("punch", token=token)["candidates"][0]["port"] == 2222
    assert bob.wait("punch", token=token)["candidates"][0]["port"] == 1111
    bob.sock.close()
    assert alice.wait("presence", user="bob", state="offline")
    alice.sock.close()
