"""coturn's turnutils_uclient (a client no one here wrote) relays through our ``twistd relay``.

Each run allocates, sets permissions or binds channels, and sends messages to a
``turnutils_peer`` echo peer (or, with -y, to the other client's relayed
address) and back, over UDP, TCP and TLS client legs.
"""

import re
import shutil
import subprocess

import pytest

from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_SECRET, TURN_USER, free_port, start_relay, stop_node

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("turnutils_uclient") is None,
                       reason="coturn's turnutils_uclient is not installed (Debian package coturn)"),
]
MESSAGES, CLIENTS = 20, 2


@pytest.fixture(scope="module")
def echo_peer():
    """coturn's turnutils_peer echoing UDP on a free loopback port."""
    port = free_port(ips=(PRIMARY_IP,))
    process = subprocess.Popen(["turnutils_peer", "-L", PRIMARY_IP, "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield port
    process.terminate()
    process.wait(10)


def uclient(relay_node, echo_peer, *args, user=(TURN_USER, TURN_PASSWORD), port=None):
    credentials = ["-u", user[0], "-w", user[1]] if user else []
    command = [
        "turnutils_uclient", "-n", str(MESSAGES), "-m", str(CLIENTS), "-l", "120", "-z", "5",
        "-e", PRIMARY_IP, "-r", str(echo_peer), "-p", str(port or relay_node.port),
        *credentials, *args, PRIMARY_IP,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


def totals(output: str) -> tuple[int, int]:
    sent, received = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", output, re.M)[-1]
    return int(sent), int(received)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="udp-channels"),
        pytest.param(["-s"], id="udp-send-indications"),
        pytest.param(["-t"], id="tcp-channels"),
        pytest.param(["-t", "-s"], id="tcp-send-indications"),
        pytest.param(["-t", "-D"], id="tcp-mandatory-padding"),
        pytest.param(["-g"], id="udp-dont-fragment"),
        pytest.param(["-y"], id="udp-client-to-client"),
        pytest.param(["-y", "-t"], id="tcp-client-to-client"),
        pytest.param(["-G"], id="udp-extra-requests"),
        pytest.param(["-T"], id="rfc6062-tcp-relay"),
    ],
)
def test_uclient_relays(relay_node, echo_peer, args):
    """Every message uclient sends comes back through our relay."""
    result = uclient(relay_node, echo_peer, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    sent, received = totals(result.stdout)
    # With -y each client also answers the other, doubling the count.
    assert sent == received >= MESSAGES * CLIENTS, result.stdout
    assert "Total lost packets 0 " in result.stdout


@pytest.mark.parametrize("args", [["-S", "-t"], ["-S", "-t", "-s"], ["-S", "-T"]],
                         ids=["tls-channels", "tls-send", "tls-rfc6062-tcp-relay"])
def test_uclient_over_tls(relay_node, echo_peer, args):
    """Over TLS, channels and Send indications relay every message."""
    result = uclient(relay_node, echo_peer, *args, port=relay_node.tls_port)
    assert result.returncode == 0, result.stdout + result.stderr
    sent, received = totals(result.stdout)
    assert sent == received == MESSAGES * CLIENTS, result.stdout


def test_rest_api_credentials(relay_node, echo_peer):
    """uclient's REST-API mode (-W secret) authenticates with an ephemeral credential."""
    result = uclient(relay_node, echo_peer, "-W", TURN_SECRET, "-u", "restuser", user=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert totals(result.stdout) == (MESSAGES * CLIENTS, MESSAGES * CLIENTS)


def test_wrong_password_cannot_allocate(relay_node, echo_peer):
    """A wrong password fails the Allocation (our relay answers 401)."""
    result = uclient(relay_node, echo_peer, user=(TURN_USER, "not-the-password"))
    assert result.returncode != 0
    assert "Cannot complete Allocation" in result.stdout + result.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_uclient_rfc6062_across_workers(tmp_path, echo_peer, tls):
    """uclient -T (and -S -T, over TLS) with many clients through ``--workers 2``: every ConnectionBind
    finds its worker and every message comes back."""
    node = start_relay(tmp_path, "--workers", "2")
    try:
        clients = 16
        command = [
            "turnutils_uclient", "-T", *(["-S"] if tls else []), "-n", str(MESSAGES), "-m", str(clients),
            "-l", "120", "-z", "5", "-e", PRIMARY_IP, "-r", str(echo_peer),
            "-p", str(node.tls_port if tls else node.port), "-u", TURN_USER, "-w", TURN_PASSWORD, PRIMARY_IP,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        sent, received = totals(result.stdout)
        assert "took over a ConnectionBind connection from another worker" in node.log()
        assert "Traceback" not in node.log() and "Unhandled" not in node.log(), node.log()
        refused = result.stdout.count("alert protocol version")
        if tls and refused:
            # uclient draws each TLS connection's context from SSLv23, TLSv1 and TLSv1.1 (and
            # 1.2) client methods; the relay (OpenSSL's default policy) refuses TLS below 1.2, and
            # a data connection whose handshake is refused is not retried, so its messages are
            # lost. Every handshake uclient completes relays (the worker-independent cause).
            assert 0 < received < sent and "TLSv1.2" in result.stdout, result.stdout
            return
        assert (sent, received) == (MESSAGES * clients, MESSAGES * clients), result.stdout
    finally:
        stop_node(node)
