"""coturn's client tools against our servers on their dual-stack default (no --ip).

``turnutils_stunclient`` gets an IPv4 reflexive address over IPv4 and an IPv6 one over IPv6 (with one
dual-stack socket it used to print ``IPv6. UDP reflexive addr: ::ffff:127.0.0.1``), and
``turnutils_uclient`` allocates IPv6 relayed addresses (-x) and dual allocations (-Z) over an IPv4 or an
IPv6 transport, relaying every message to a ``turnutils_peer`` on ::1 or to the other client.
"""

import re
import shutil
import subprocess

import pytest

from tests.conftest import TURN_PASSWORD, TURN_USER, free_port, start_node, stop_node

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not (shutil.which("turnutils_stunclient") and shutil.which("turnutils_uclient")),
                       reason="coturn's turnutils_* are not installed (Debian package coturn)"),
]
MESSAGES, CLIENTS = 10, 2


@pytest.fixture(scope="module")
def dual_node(tmp_path_factory):
    """twistd rendezvous with no --ip."""
    node = start_node(tmp_path_factory.mktemp("dual-node"), alternate=False, ips=None)
    yield node
    stop_node(node)


@pytest.mark.parametrize("server, family, reflexive", [("127.0.0.1", "IPv4", r"127\.0\.0\.1:\d+"),
                                                       ("::1", "IPv6", r"::1:\d+")])
def test_stunclient_reflexive_address_in_its_own_family(dual_node, server, family, reflexive):
    """turnutils_stunclient prints a reflexive address of the family it asked over, never IPv4-mapped."""
    done = subprocess.run(["turnutils_stunclient", "-p", str(dual_node.port), server], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"{family}\. UDP reflexive addr: {reflexive}$", done.stdout, re.M), done.stdout
    assert "::ffff:" not in done.stdout


@pytest.fixture(scope="module")
def echo_peer6():
    """coturn's turnutils_peer echoing UDP on ::1."""
    port = free_port(ips=("::1",))
    process = subprocess.Popen(["turnutils_peer", "-L", "::1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield port
    process.terminate()
    process.wait(10)


def totals(output: str) -> tuple[int, int]:
    sent, received = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", output, re.M)[-1]
    return int(sent), int(received)


def relayed_in_log(node) -> list[str]:
    """The relayed addresses the relay logged for its allocations."""
    return re.findall(r"relayed \[(.*)\], \d+ s$", node.log(), re.M)


@pytest.mark.parametrize("server", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("args", [pytest.param(["-x"], id="ipv6-relay-udp"),
                                  pytest.param(["-x", "-t"], id="ipv6-relay-tcp"),
                                  pytest.param(["-x", "-y"], id="ipv6-relay-client-to-client")])
def test_uclient_ipv6_relayed_addresses_over_either_transport_family(dual_relay, echo_peer6, server, args):
    """uclient -x gets IPv6 relayed addresses over an IPv4 or IPv6 transport, and every message comes back."""
    before = len(relayed_in_log(dual_relay))
    peer = [] if "-y" in args else ["-e", "::1", "-r", str(echo_peer6)]
    done = subprocess.run(["turnutils_uclient", "-n", str(MESSAGES), "-m", str(CLIENTS), "-l", "120", "-z", "5",
                           *peer, "-p", str(dual_relay.port), "-u", TURN_USER, "-w", TURN_PASSWORD, *args, server],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    sent, received = totals(done.stdout)
    assert sent == received >= MESSAGES * CLIENTS, done.stdout
    assert "Total lost packets 0 " in done.stdout
    new = relayed_in_log(dual_relay)[before:]
    assert new and all(entry.startswith("'[::1]:") for entry in new), new


@pytest.mark.parametrize("server", ["127.0.0.1", "::1"])
def test_uclient_dual_allocation(dual_relay, server):
    """uclient -Z (ADDITIONAL-ADDRESS-FAMILY) gets an IPv4 and an IPv6 relayed address and relays through."""
    before = len(relayed_in_log(dual_relay))
    done = subprocess.run(["turnutils_uclient", "-n", str(MESSAGES), "-m", str(CLIENTS), "-z", "5", "-Z", "-y",
                           "-p", str(dual_relay.port), "-u", TURN_USER, "-w", TURN_PASSWORD, server],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    sent, received = totals(done.stdout)
    assert sent == received >= MESSAGES * CLIENTS, done.stdout
    new = relayed_in_log(dual_relay)[before:]
    assert new and all(re.fullmatch(r"'127\.0\.0\.1:\d+', '\[::1\]:\d+'", entry) for entry in new), new
