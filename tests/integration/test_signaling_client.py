"""SignalingClient against real ``twistd rendezvous`` nodes: host cache, redirects, TLS verification."""

import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from rendezvous.node.accounts import AccountStore
from rendezvous.peer.host_cache import HostCache
from rendezvous.peer.signaling_client import SignalingClient, SignalingUnavailable
from tests.conftest import PRIMARY_IP, free_port, start_node, stop_node
from tests.signaling_helpers import Inbox

pytestmark = pytest.mark.integration


def accounts(tmp_path):
    store = AccountStore(tmp_path / "accounts.sqlite")
    store.add("dora", "dora-pw", "txrendezvous")
    store.close()
    return str(tmp_path / "accounts.sqlite")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Super nodes A and B on one account store; A lists B in its host cache."""
    tmp = tmp_path_factory.mktemp("pair")
    store = accounts(tmp)
    (tmp / "b").mkdir()
    b = start_node(tmp / "b", "--accounts", store, "--node-name", "node-b", alternate=False)
    (tmp / "a").mkdir()
    a = start_node(tmp / "a", "--accounts", store, "--node-name", "node-a", "--peer-node", f"{b.ip}:{b.port}",
                   "--drain-timeout", "30", alternate=False)
    yield a, b
    stop_node(a)
    stop_node(b)


@pytest_twisted.ensureDeferred
async def test_host_cache_first_then_bootstrap_and_saved(two_nodes, tmp_path):
    """A dead host-cache entry is skipped, the bootstrap node logs in, and the welcome's cache is saved."""
    a, b = two_nodes
    dead = (PRIMARY_IP, free_port(ips=(PRIMARY_IP,)))
    cache = HostCache(tmp_path / "hosts.json", bootstrap=[(a.ip, a.port)])
    cache.merge([{"host": dead[0], "port": dead[1]}])
    client = await SignalingClient.login(reactor, "dora", "dora-pw", host_cache=cache, timeout_seconds=5)
    assert client.server == (a.ip, a.port) and client.node == "node-a"
    saved = HostCache(tmp_path / "hosts.json").load()
    assert {(a.ip, a.port), (b.ip, b.port), dead} <= set(saved.entries)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_no_node_reachable_lists_every_attempt(tmp_path):
    """With every server down, login fails with SignalingUnavailable naming each one."""
    down = [(PRIMARY_IP, free_port(ips=(PRIMARY_IP,))) for _ in range(2)]
    with pytest.raises(SignalingUnavailable) as failed:
        await SignalingClient.login(reactor, "dora", "dora-pw", servers=down, timeout_seconds=5)
    assert [server for server, _ in failed.value.attempts] == down


@pytest_twisted.ensureDeferred
async def test_tls_verifies_the_certificate(two_nodes):
    """TLS verification is on by default: a self-signed node is refused unless trusted or verification is off."""
    a, _ = two_nodes
    server = [(a.ip, a.tls_port)]
    with pytest.raises(SignalingUnavailable) as wrong_name:
        await SignalingClient.login(reactor, "dora", "dora-pw", servers=server, tls=True, timeout_seconds=5)
    assert "IPAddressMismatch" in wrong_name.value.attempts[0][1]
    with pytest.raises(SignalingUnavailable) as untrusted:
        await SignalingClient.login(reactor, "dora", "dora-pw", servers=server, tls=True, tls_hostname="localhost",
                                    timeout_seconds=5)
    assert "certificate verify failed" in untrusted.value.attempts[0][1]
    trusted = await SignalingClient.login(reactor, "dora", "dora-pw", servers=server, tls=True,
                                          tls_ca_file=str(a.state_dir / "tls" / "self-signed.pem"),
                                          tls_hostname="localhost")
    unverified = await SignalingClient.login(reactor, "dora", "dora-pw", servers=server, tls=True, tls_verify=False)
    assert trusted.node == unverified.node == "node-a"
    await unverified.close()  # the same user again: the first session was replaced
    await trusted.when_closed().addTimeout(5, reactor)  # the node closes a replaced TLS session at once


@pytest_twisted.ensureDeferred
async def test_redirect_from_a_draining_node(two_nodes, tmp_path):
    """A draining node's redirect is followed to the node it offers, which logs the client in."""
    a, b = two_nodes
    present = await SignalingClient.login(reactor, "dora", "dora-pw", servers=[(a.ip, a.port)])
    inbox = Inbox(present)  # the session keeps node A up while it drains
    a.process.send_signal(signal.SIGUSR1)
    assert {"host": b.ip, "port": b.port, "load": 0} in (await inbox.wait("redirect"))["hosts"]
    cache = HostCache(tmp_path / "hosts.json")
    client = await SignalingClient.login(reactor, "dora", "dora-pw", servers=[(a.ip, a.port)], host_cache=cache)
    assert client.server == (b.ip, b.port) and client.node == "node-b"
    assert (b.ip, b.port) in HostCache(tmp_path / "hosts.json").load().entries
    await client.close()
    await present.close()



@pytest_twisted.ensureDeferred
async def test_login_races_a_nodes_addresses_and_remembers_the_winner(two_nodes, tmp_path):
    """A cached node's addresses are raced, IPv6 first (RFC 8305): the one that refuses loses, the login goes
    to the other, and the host cache remembers it as the address to try first."""
    _, b = two_nodes  # A drains after the redirect test
    cache = HostCache(tmp_path / "hosts.json")
    cache.merge([{"host": b.ip, "port": b.port, "ips": [b.ip, "::1"]}])  # nothing listens on [::1]:port
    client = await SignalingClient.login(reactor, "dora", "dora-pw", host_cache=cache, timeout_seconds=5)
    assert client.server == (b.ip, b.port) and client.address.ip == b.ip and client.nat64 is None
    await client.close()
    saved = HostCache(tmp_path / "hosts.json").load()
    assert saved.reached_via((b.ip, b.port)) == b.ip
