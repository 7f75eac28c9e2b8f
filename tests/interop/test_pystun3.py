"""pystun3, a classic RFC 3489 client, against our node.

pystun3 sends cookieless Binding requests (a 128-bit transaction id, RFC 3489
§11.1), reads MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS, and runs
the RFC 3489 §10.1 tests: test I, then test II (CHANGE-REQUEST ip+port) and,
behind a NAT, test I against CHANGED-ADDRESS and test III (change port). So
it drives our classic path (binding.py, RFC 3489 §8.2 / §11.2) end to end.

pystun3 never checks where a response came from, so the tests that need to
know give it a socket that records the sender of each datagram it reads.
Each run binds a fresh source port: pystun3 sets SO_REUSEADDR, and a port
shared between runs could deliver one run's late answer to the next.

pystun3 resends for ever while the answers it gets are not a matching
Binding success (an error response, say), so every call runs in a daemon
thread that the test waits for a bounded time.
"""

import socket
import threading

import pytest
import stun

from tests.conftest import free_port, start_node, stop_node

pytestmark = pytest.mark.interop

RECEIVE_TIMEOUT_SECONDS = 2
CALL_TIMEOUT_SECONDS = 20


def bounded(function, *args, **kwargs):
    """Run a pystun3 call in a daemon thread; fail the test if it has not returned in time."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as e:  # handed to the test below
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"pystun3 {function.__name__}", daemon=True)
    thread.start()
    thread.join(CALL_TIMEOUT_SECONDS)
    if thread.is_alive():
        pytest.fail(f"pystun3 {function.__name__} did not return in {CALL_TIMEOUT_SECONDS} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def classic_test(sock, host, port, change_request=""):
    """pystun3's stun_test: one classic Binding (plus CHANGE-REQUEST hex) from sock."""
    # stun_test reads tables that only get_nat_type fills, via _initialize.
    stun._initialize()
    local_ip, local_port = sock.getsockname()
    return bounded(stun.stun_test, sock, host, port, local_ip, local_port, change_request)


class RecordingSocket(socket.socket):
    """A real UDP socket that remembers who sent each datagram it received."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_DGRAM)
        self.senders: list[tuple[str, int]] = []

    def recvfrom(self, size, *flags):
        data, sender = super().recvfrom(size, *flags)
        self.senders.append(sender)
        return data, sender


@pytest.fixture
def recording_socket():
    """A RecordingSocket bound to 127.0.0.1 on a port no other run has used."""
    with RecordingSocket() as s:
        s.settimeout(RECEIVE_TIMEOUT_SECONDS)
        s.bind(("127.0.0.1", free_port(ips=("127.0.0.1",))))
        yield s


def test_open_internet_on_loopback(node):
    """Bound to 127.0.0.1, pystun3 sees its own address mapped and test II answered: Open Internet."""
    source_port = free_port(ips=("127.0.0.1",))
    nat_type, external_ip, external_port = bounded(
        stun.get_ip_info,
        source_ip="127.0.0.1", source_port=source_port, stun_host=node.ip, stun_port=node.port,
    )
    assert (nat_type, external_ip, external_port) == (stun.OpenInternet, "127.0.0.1", source_port)


def test_full_cone_when_bound_to_the_wildcard(node):
    """Bound to 0.0.0.0 (mapped 127.0.0.1 differs), pystun3 takes the NAT branch and test II says Full Cone."""
    source_port = free_port(ips=("0.0.0.0",))
    nat_type, external_ip, external_port = bounded(
        stun.get_ip_info,
        source_ip="0.0.0.0", source_port=source_port, stun_host=node.ip, stun_port=node.port,
    )
    assert (nat_type, external_ip, external_port) == (stun.FullCone, "127.0.0.1", source_port)


def test_classic_response_carries_source_and_changed_address(node, recording_socket):
    """Test I gets MAPPED-ADDRESS, SOURCE-ADDRESS (primary) and CHANGED-ADDRESS (alternate ip and port)."""
    local_ip, local_port = recording_socket.getsockname()
    result = classic_test(recording_socket, node.ip, node.port)
    assert result == {
        "Resp": True,
        "ExternalIP": local_ip,
        "ExternalPort": local_port,
        "SourceIP": node.ip,
        "SourcePort": node.port,
        "ChangedIP": node.alt_ip,
        "ChangedPort": node.alt_port,
    }
    assert recording_socket.senders == [(node.ip, node.port)]


def test_test_two_is_answered_from_the_changed_address(node, recording_socket):
    """pystun3's CHANGE-REQUEST(ip, port) answer arrives from CHANGED-ADDRESS and names it in SOURCE-ADDRESS."""
    local_ip, local_port = recording_socket.getsockname()
    nat_type, result = bounded(
        stun.get_nat_type,
        recording_socket, local_ip, local_port, stun_host=node.ip, stun_port=node.port,
    )
    assert nat_type == stun.OpenInternet
    assert recording_socket.senders == [(node.ip, node.port), (node.alt_ip, node.alt_port)]
    assert (result["SourceIP"], result["SourcePort"]) == (node.alt_ip, node.alt_port)
    assert (result["ExternalIP"], result["ExternalPort"]) == (local_ip, local_port)


def test_test_three_changes_only_the_port(node, recording_socket):
    """pystun3's test III (change port only) sent to CHANGED-ADDRESS comes back from the alternate IP, primary port."""
    local_ip, local_port = recording_socket.getsockname()
    change_port = stun.ChangeRequest + "0004" + "00000002"
    result = classic_test(recording_socket, node.alt_ip, node.alt_port, change_port)
    assert result["Resp"] is True
    assert recording_socket.senders == [(node.alt_ip, node.port)]
    assert (result["SourceIP"], result["SourcePort"]) == (node.alt_ip, node.port)
    # CHANGED-ADDRESS is always the opposite of the endpoint that received the request.
    assert (result["ChangedIP"], result["ChangedPort"]) == (node.ip, node.port)
    assert (result["ExternalIP"], result["ExternalPort"]) == (local_ip, local_port)


def test_classic_client_survives_an_odd_length_software(tmp_path):
    """With --software of a length that is not a multiple of 4, pystun3 still completes its tests."""
    odd = start_node(tmp_path, "--software", "abc")
    try:
        source_port = free_port(ips=("127.0.0.1",))
        nat_type, _, _ = bounded(
            stun.get_ip_info,
            source_ip="127.0.0.1", source_port=source_port, stun_host=odd.ip, stun_port=odd.port,
        )
    finally:
        stop_node(odd)
    assert nat_type == stun.OpenInternet
