"""Relay sockets as RelayPorts binds them (RFC 8656 §7.2, §14), made in C (relay/_sockets.c) or in Python alike."""

import fcntl
import os
import socket
import sys

import pytest

from relay import relay_ports
from relay.datagrams import set_buffers
from relay.relay_ports import RELAY_BUFFER_BYTES, RelayPorts
from relay.server import NoRelayPort

LOW, HIGH = 61500, 61599
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)


class Readers:
    """The reactor's reader registrations and clock, for a RelayPorts without a poller."""

    def __init__(self) -> None:
        self.readers = set()

    def seconds(self) -> float:
        return 0.0

    def addReader(self, reader) -> None:
        self.readers.add(reader)

    def removeReader(self, reader) -> None:
        self.readers.discard(reader)


@pytest.fixture(params=["c", "python"])
def ports(request, monkeypatch):
    """RelayPorts on 127.0.0.1 making its sockets with the extension, or without it."""
    if request.param == "c":
        if relay_ports._sockets is None:
            if sys.platform.startswith("linux"):
                pytest.fail("relay._sockets is missing: scripts/setup builds it")
            pytest.skip("relay._sockets is built on Linux only")
    else:
        monkeypatch.setattr(relay_ports, "_sockets", None)
    made = RelayPorts(Readers(), {4: "127.0.0.1"}, LOW, HIGH)
    made.poller = None
    yield made
    made.stop()


def buffer_sizes(sock) -> tuple[int, int]:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def test_a_relay_socket_is_bound_non_blocking_and_not_inherited(ports):
    """The socket is bound at its relayed address, non-blocking, close-on-exec, with set_buffers' sizes."""
    relay, token = ports.open(4)
    try:
        sock = relay.socket
        assert token is None and sock.getsockname() == relay.address and LOW <= relay.address[1] <= HIGH
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM and relay.addressFamily == socket.AF_INET
        assert sock.gettimeout() == 0.0 and fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert not os.get_inheritable(sock.fileno())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reference:
            set_buffers(reference, RELAY_BUFFER_BYTES)
            assert buffer_sizes(sock) == buffer_sizes(reference)
        assert sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) != relay_ports._IP_PMTUDISC_DO
    finally:
        relay.close()
    assert relay.fileno() == -1 and ports.open_count == 0


def test_dont_fragment_sets_path_mtu_discovery(ports):
    """DONT-FRAGMENT (RFC 8656 §14) makes the socket send with DF set (IP_PMTUDISC_DO)."""
    relay, _ = ports.open(4, dont_fragment=True)
    try:
        assert relay.socket.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == relay_ports._IP_PMTUDISC_DO
    finally:
        relay.close()


def test_ports_come_from_the_whole_range_and_skip_taken_ones(ports):
    """Ports are drawn from [low, high], both ends included; a taken port is passed over, a full range is 508."""
    ports.low, ports.high = LOW, LOW + 3
    seen = set()
    for _ in range(200):
        relay, _ = ports.open(4)
        seen.add(relay.address[1])
        relay.close()
    assert seen == {LOW, LOW + 1, LOW + 2, LOW + 3}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", LOW))
        ports.high = LOW
        with pytest.raises(NoRelayPort):
            ports.open(4)
        ports.high = LOW + 1
        relay, _ = ports.open(4)
        assert relay.address == ("127.0.0.1", LOW + 1)
        relay.close()


def test_a_reserved_pair_stays_in_the_range(ports):
    """EVEN-PORT R (RFC 8656 §7.2) holds an even port and the next one, never past high."""
    ports.low, ports.high = LOW, LOW + 3
    for _ in range(20):
        relay, token = ports.open(4, even=True, reserve_next=True)
        held = ports.take_held(token)
        assert relay.address[1] % 2 == 0 and held.address[1] == relay.address[1] + 1 <= LOW + 3
        relay.close()
        held.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_relay_socket(ports):
    """An IPv6 relay socket is bound at its address, DONT-FRAGMENT setting IPV6_MTU_DISCOVER."""
    ports.ips = {6: "::1"}
    try:
        relay, _ = ports.open(6, dont_fragment=True)
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    try:
        assert relay.socket.family == socket.AF_INET6 and relay.socket.getsockname()[:2] == relay.address
        assert relay.socket.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == relay_ports._IP_PMTUDISC_DO
    finally:
        relay.close()


@pytest.mark.skipif(relay_ports._sockets is None, reason="relay._sockets is not built (Linux only)")
def test_bind_udp_refuses_what_is_not_an_address():
    """bind_udp answers -1 for an IP it cannot bind (as a failed Python bind is taken), raises ValueError for a
    family or port out of range, and leaves no descriptor behind."""
    before = len(os.listdir("/proc/self/fd"))
    assert relay_ports._sockets.bind_udp(4, "::1", LOW, RELAY_BUFFER_BYTES, False) == -1
    assert relay_ports._sockets.bind_udp(6, "not an address", LOW, RELAY_BUFFER_BYTES, False) == -1
    assert relay_ports._sockets.bind_udp(4, "192.0.2.1", LOW, RELAY_BUFFER_BYTES, False) == -1  # not ours
    with pytest.raises(ValueError):
        relay_ports._sockets.bind_udp(5, "127.0.0.1", LOW, RELAY_BUFFER_BYTES, False)
    with pytest.raises(ValueError):
        relay_ports._sockets.bind_udp(4, "127.0.0.1", 70000, RELAY_BUFFER_BYTES, False)
    assert len(os.listdir("/proc/self/fd")) == before
