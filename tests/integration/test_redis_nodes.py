"""Two super nodes sharing a real Redis: a user on node A reaches a buddy on node B."""

import json
import shutil
import subprocess
import time

import pytest
import pytest_twisted
import redis
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError
from twisted.internet.task import deferLater

from rendezvous.node.accounts import AccountStore
from tests.conftest import free_port, start_node, stop_node
from tests.signaling_helpers import login

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


async def wait_for_peer_node(node, other):
    """Log in until node's host cache lists the other node (registry refresh every 5 s)."""
    deadline = time.monotonic() + 15
    while True:
        client = await login(node, "alice")
        await client.close()
        if any(entry["port"] == other.port for entry in client.welcome["host_cache"]):
            return
        assert time.monotonic() < deadline, client.welcome
        await deferLater(reactor, 0.5)


async def until(check, seconds=10.0):
    """Await check() until it returns something true (pub/sub delivery is asynchronous)."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await deferLater(reactor, 0.2)


@pytest_twisted.ensureDeferred
async def test_buddies_on_two_nodes(two_nodes):
    """Buddy request, presence, lookup, messages and connect coordination cross from node A to node B."""
    a, b = two_nodes
    await wait_for_peer_node(a, b)
    await wait_for_peer_node(b, a)
    alice = await login(a, "alice")
    bob = await login(b, "bob")

    async def request_reaches_bob():
        # A learns of bob's login through Redis; resend the request until it is routed.
        await alice.request("buddy-add", user="bob")
        try:
            return await bob.inbox.wait("buddy-request", seconds=1, **{"from": "alice"})
        except TimeoutError:
            return None

    async def bob_online():
        peer = await alice.request("lookup", user="bob")
        return peer if peer["online"] else None

    await until(request_reaches_bob)
    await bob.request("buddy-accept", user="alice")
    assert (await alice.inbox.wait("presence", user="bob"))["node"] == "node-b"
    await bob.set_presence("away")
    assert await alice.inbox.wait("presence", user="bob", state="away")
    peer = await until(bob_online)
    assert peer["node"] == "node-b"
    await alice.request("message", to="bob", text="across nodes")
    assert (await bob.inbox.wait("message"))["text"] == "across nodes"
    candidates = [{"type": "srflx", "ip": "127.0.0.1", "port": 1111}]
    token = (await alice.request("connect", to="bob", candidates=candidates, ufrag="aaaa", pwd="p" * 22))["token"]
    request = await bob.inbox.wait("connect-request", token=token)
    assert (request["from"], request["ufrag"]) == ("alice", "aaaa")
    bob.send("connect-answer", token=token, candidates=[{"type": "srflx", "ip": "127.0.0.1", "port": 2222}],
             ufrag="bbbb", pwd="q" * 22)
    to_alice = await alice.inbox.wait("punch", token=token)
    to_bob = await bob.inbox.wait("punch", token=token)
    assert (to_alice["candidates"][0]["port"], to_alice["ufrag"], to_alice["pwd"]) == (2222, "bbbb", "q" * 22)
    assert (to_bob["candidates"][0]["port"], to_bob["ufrag"], to_bob["pwd"]) == (1111, "aaaa", "p" * 22)
    await bob.close()
    assert await alice.inbox.wait("presence", user="bob", state="offline")
    await alice.close()


@pytest_twisted.ensureDeferred
async def test_a_dual_stack_node_is_listed_with_both_families(two_nodes, redis_url, tmp_path):
    """A node on 127.0.0.1 and ::1 registers both addresses in Redis, and the others' host caches carry them
    (within a registry refresh: a hosts exchange, which sees one address, may list the node first)."""
    node_a, _ = two_nodes
    AccountStore(tmp_path / "accounts.sqlite").close()
    dual = start_node(tmp_path, "--redis", redis_url, "--node-name", "node-dual", "--accounts",
                      str(tmp_path / "accounts.sqlite"), alternate=False, ips=("127.0.0.1", "::1"))

    async def listed_with_both():
        client = await login(node_a, "alice")
        await client.close()
        entry = next((e for e in client.welcome["host_cache"] if e["port"] == dual.port), {})
        return entry if entry.get("ips") else None

    try:
        entry = await until(listed_with_both, seconds=15)
        assert (entry["host"], entry["ips"]) == ("127.0.0.1", ["127.0.0.1", "::1"]), entry
        registered = json.loads(redis.Redis.from_url(redis_url).hget("txr:nodes", "node-dual"))
        assert registered["ips"] == ["127.0.0.1", "::1"]
    finally:
        stop_node(dual)
