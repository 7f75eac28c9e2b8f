"""Paths of connect(): which it may still wait for, from the two sides' candidates (signaling
form), how the punched stream notices a silent peer, and how it is closed."""

import socket
from types import SimpleNamespace

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from rendezvous.peer.checks import _direct_udp_hopeless, _spray_target, _udp_blocked
from rendezvous.peer.tcp_path import CLOSE_FLUSH_SECONDS, SELECT_MARK, _keep_alive, _Stream, _TcpPath


def udp(kind, ip, port=40000):
    return {"type": kind, "ip": ip, "port": port, "protocol": "udp"}


def tcp(kind, ip, port=41000):
    return {"type": kind, "ip": ip, "port": port, "protocol": "tcp"}


BLOCKED = [udp("host", "192.168.1.2"), tcp("host", "192.168.1.2"), tcp("srflx", "198.18.0.11"),
           udp("relay", "198.18.0.1", 50000)]
NATTED = [udp("host", "192.168.2.2"), udp("srflx", "198.18.0.12"), tcp("host", "192.168.2.2"),
          tcp("srflx", "198.18.0.12")]
PUBLIC = [udp("host", "198.18.0.13"), tcp("host", "198.18.0.13")]  # no NAT: nothing reflexive differs
LOOPBACK = [udp("host", "127.0.0.1"), tcp("host", "127.0.0.1")]


def test_the_spray_aims_at_the_udp_srflx_whatever_came_first():
    """The birthday spray's target is the peer's UDP IPv4 srflx, even when its TCP srflx (sent in the
    first frame) or an IPv6 one precedes it (a trickled UDP srflx lands after them)."""
    trickled = [tcp("host", "192.168.2.2"), tcp("srflx", "198.18.0.12", 41000),
                udp("srflx", "2001:db8::12", 40001), udp("host", "192.168.2.2"), udp("srflx", "198.18.0.12", 40000)]
    assert _spray_target(trickled) == udp("srflx", "198.18.0.12", 40000)
    assert _spray_target(BLOCKED) is None


def test_blocked_means_public_over_tcp_but_not_over_udp():
    """A TCP srflx without any UDP srflx, UPnP or predicted candidate is a NAT that lets no UDP out."""
    assert _udp_blocked(BLOCKED)
    assert not _udp_blocked(NATTED) and not _udp_blocked(PUBLIC) and not _udp_blocked(LOOPBACK)
    assert not _udp_blocked([udp("host", "192.168.1.2"), udp("upnp", "198.18.0.11"), tcp("srflx", "198.18.0.11")])
    assert not _udp_blocked([udp("host", "192.168.1.2")])  # no TCP answer either: nothing is known


def test_hopeless_when_a_side_is_blocked_and_they_are_not_behind_one_address():
    """Direct UDP is given up only when one side is blocked and the two do not share a public address."""
    assert _direct_udp_hopeless(BLOCKED, NATTED) and _direct_udp_hopeless(NATTED, BLOCKED)
    assert _direct_udp_hopeless(BLOCKED, PUBLIC) and _direct_udp_hopeless(BLOCKED, BLOCKED[:2] + [
        tcp("srflx", "198.18.0.14")])
    same_nat = [udp("host", "192.168.1.3"), udp("srflx", "198.18.0.11"), tcp("srflx", "198.18.0.11")]
    assert not _direct_udp_hopeless(BLOCKED, same_nat)  # one LAN: host candidates may meet
    assert not _direct_udp_hopeless(NATTED, PUBLIC) and not _direct_udp_hopeless(LOOPBACK, LOOPBACK)
    assert not _direct_udp_hopeless([], [])


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="TCP_KEEPIDLE is Linux's")
@pytest.mark.parametrize("seconds, idle, interval, count", [(30, 10, 5, 4), (3, 1, 1, 2), (0.5, 1, 1, 1)])
def test_keepalives_end_a_silent_stream_after_the_consent_timeout(seconds, idle, interval, count):
    """Idle probes after a third of the timeout, then every sixth, enough of them to fill it; and
    unacknowledged data is given up after the timeout itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        _keep_alive(sock, seconds)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)) == (idle, interval, count)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(seconds * 1000)


class _Handled(StringTransport):
    """A StringTransport with a real (unconnected) socket for the stream's keepalive options."""

    def __init__(self):
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def getHandle(self):
        return self.sock


class _Path(_TcpPath):
    """Just the punched-stream part of a session, on a task.Clock."""

    def __init__(self, clock):
        self.reactor = clock
        self.options = SimpleNamespace(consent_timeout_seconds=30.0)
        self.settled = False
        self.connection = None
        self._tcp_placeholder = None
        self._init_tcp_path()


def _selected_stream():
    clock = task.Clock()
    path = _Path(clock)
    stream, transport = _Stream(path), _Handled()
    stream.makeConnection(transport)
    path.tcp_stream = stream
    return clock, path, stream, transport


def test_closing_sends_the_frames_written_before_then_fin():
    """A session closed in the tick it wrote its last frames (the select frame, QUIC's CONNECTION_CLOSE)
    ends the punched stream with a FIN after them, not a reset that drops them."""
    clock, path, stream, transport = _selected_stream()
    stream.write_frame(SELECT_MARK + b"p" * 16)
    closed = path._close_tcp()
    try:
        assert transport.value() == b"\x00\x11" + SELECT_MARK + b"p" * 16
        assert transport.disconnecting and not transport.disconnected
        assert not closed.called
        stream.connectionLost(None)
        assert closed.called and path.tcp_stream is None
    finally:
        transport.sock.close()


def test_a_stream_that_does_not_drain_is_reset_after_the_flush_time():
    """A peer that stops reading cannot hold a closing stream open: it is reset CLOSE_FLUSH_SECONDS after close."""
    clock, path, stream, transport = _selected_stream()
    closed = path._close_tcp()
    try:
        clock.advance(CLOSE_FLUSH_SECONDS - 0.01)
        assert not transport.disconnected
        clock.advance(0.01)
        assert transport.disconnected
        stream.connectionLost(None)
        assert closed.called and not clock.getDelayedCalls()
    finally:
        transport.sock.close()
