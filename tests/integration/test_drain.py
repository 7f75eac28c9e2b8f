"""SIGUSR1 drains a node: no new work, clients told where to go, the process ends when done."""

import signal
import time
import urllib.error
import urllib.request

import pytest
import pytest_twisted

from rendezvous.node.accounts import AccountStore
from rendezvous.peer.signaling_client import SignalingUnavailable
from rendezvous.stun import Attr, Class, Method
from rendezvous.stun.attributes import encode_uint32
from tests.conftest import (
    PRIMARY_IP,
    TURN_PASSWORD,
    TURN_REALM,
    TURN_USER,
    free_port,
    start_node,
    start_relay,
    stop_node,
)
from tests.signaling_helpers import login
from tests.turn_helpers import UdpTurnClient, code

pytestmark = pytest.mark.integration


def client(node):
    c = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
    c.sock.bind((PRIMARY_IP, 0))
    return c


def test_relay_drains_and_exits(tmp_path):
    """After SIGUSR1, Allocate gets 300 with ALTERNATE-SERVER, /readyz 503, and the relay exits when the last allocation ends."""
    metrics = free_port(ips=(PRIMARY_IP,))
    # One worker: /readyz turns 503 as the first process starts draining, before
    # the signal reaches the others (test_workers covers draining them all).
    node = start_relay(tmp_path, "--alternate-server", "198.18.0.20:3478", "--metrics", f"127.0.0.1:{metrics}",
                       "--workers", "1")
    first, second = client(node), client(node)
    try:
        assert first.allocate().cls == Class.SUCCESS
        node.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while True:  # the signal is handled asynchronously: wait until /readyz says so
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=5)
            except urllib.error.HTTPError as refused:
                assert refused.code == 503
                break
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.1)
        response = second.allocate()
        assert code(response) == 300
        assert response.address(Attr.ALTERNATE_SERVER) == ("198.18.0.20", 3478)
        assert node.process.poll() is None  # still serving the allocation it has
        first.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
        node.process.wait(10)
        assert "drained (0 allocations, 0 sessions left)" in node.log()
    finally:
        first.close()
        second.close()
        stop_node(node)


@pytest_twisted.ensureDeferred
async def test_super_node_redirects_signaling(tmp_path):
    """A draining super node redirects its sessions and new logins to other super nodes."""
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    store.add("carol", "carol-pw", "txrendezvous")
    store.close()
    elsewhere = free_port(ips=(PRIMARY_IP,))  # another super node, down: the redirect leads nowhere
    node = start_node(tmp_path, "--peer-node", f"{PRIMARY_IP}:{elsewhere}", "--drain-timeout", "30", alternate=False)
    try:
        carol = await login(node, "carol")
        node.process.send_signal(signal.SIGUSR1)
        redirect = await carol.inbox.wait("redirect")
        assert {"host": PRIMARY_IP, "port": elsewhere, "load": 0} in redirect["hosts"]
        with pytest.raises(SignalingUnavailable) as late:
            await login(node, "carol")
        assert [server for server, _ in late.value.attempts] == [(node.ip, node.port), (PRIMARY_IP, elsewhere)]
        assert "redirected" in late.value.attempts[0][1]
        assert node.process.poll() is None  # carol is still connected
        await carol.close()
        node.process.wait(10)  # the last session has gone
    finally:
        stop_node(node)
