"""The status view: /admin/ on the metrics port and ``txrendezvous status`` against real nodes."""

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import reactor

from rendezvous.node.accounts import AccountStore
from rendezvous.stun import Attr, Class, Method
from rendezvous.stun.attributes import encode_uint32
from tests.conftest import (
    PRIMARY_IP,
    ROOT,
    TURN_PASSWORD,
    TURN_REALM,
    TURN_USER,
    free_port,
    start_node,
    start_relay,
    stop_node,
)
from tests.signaling_helpers import login
from tests.turn_helpers import UdpTurnClient, code, permit

pytestmark = pytest.mark.integration


def status(node, metrics: int, *args: str) -> subprocess.CompletedProcess:
    """Run ``txrendezvous status`` against the node."""
    return subprocess.run(
        [sys.executable, "-m", "rendezvous.cli.main", "status", "--metrics", f"127.0.0.1:{metrics}",
         "--state-dir", str(node.state_dir), *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )


def listing(node, metrics: int) -> dict:
    done = status(node, metrics, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_relay_lists_and_ends_an_allocation(tmp_path):
    """An allocation is listed with its user, client, relayed address and counts; ending it frees it."""
    metrics = free_port(ips=(PRIMARY_IP,))
    node = start_relay(tmp_path, "--metrics", f"127.0.0.1:{metrics}")
    client = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
    client.sock.bind((PRIMARY_IP, 0))
    try:
        relayed = client.allocate().address(Attr.XOR_RELAYED_ADDRESS)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PRIMARY_IP, 0))
            assert permit(client, peer.getsockname()).cls == Class.SUCCESS
        found = listing(node, metrics)
        assert found["sessions"]["total"] == 0
        [item] = found["allocations"]["items"]
        assert item["user"] == TURN_USER and item["transport"] == "udp"
        assert item["client"] == "%s:%d" % client.sock.getsockname()
        assert item["relayed"] == ["%s:%d" % relayed] and item["permissions"] == 1 and item["channels"] == 0
        assert 0 < item["lifetime_left_seconds"] <= 600 and item["age_seconds"] >= 0
        table = status(node, metrics)
        assert table.returncode == 0 and item["id"] in table.stdout and "allocations: 1" in table.stdout

        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no listing
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/admin/allocations", timeout=5)
        assert refused.value.code == 401
        assert status(node, metrics, "end", "allocation", "0-000000000000").returncode == 1  # unknown id

        ended = status(node, metrics, "end", "allocation", item["id"])
        assert ended.returncode == 0, ended.stderr
        assert listing(node, metrics)["allocations"]["total"] == 0
        assert code(client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(600)))) == 437
        assert f"allocation {item['id']} of {TURN_USER}" in node.log() and "ended by an operator" in node.log()
    finally:
        client.close()
        stop_node(node)


@pytest_twisted.ensureDeferred
async def test_super_node_lists_and_ends_a_session(tmp_path):
    """A logged-in signaling session is listed; ending it closes the client's connection."""
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    store.add("erin", "erin-pw", "txrendezvous")
    store.close()
    metrics = free_port(ips=(PRIMARY_IP,))
    node = start_node(tmp_path, "--metrics", f"127.0.0.1:{metrics}", alternate=False)
    try:
        erin = await login(node, "erin")
        [item] = listing(node, metrics)["sessions"]["items"]
        assert item["id"] == erin.welcome["session"] and item["user"] == "erin" and item["state"] == "online"
        assert item["client"] == "%s:%d" % erin.local_address and item["age_seconds"] >= 0
        assert status(node, metrics, "end", "session", item["id"]).returncode == 0
        await erin.when_closed().addTimeout(5, reactor)
        assert listing(node, metrics)["sessions"]["total"] == 0
    finally:
        stop_node(node)
