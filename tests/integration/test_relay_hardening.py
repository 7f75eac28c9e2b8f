"""A real ``twistd relay`` against the issue-14 findings: its own endpoints, reservations, challenges.

Loopback only: the peers the relay is asked to reach are its own ports on
127.0.0.1 and sockets of this test on 127.0.0.1 and ::1.
"""

import socket

import pytest

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import (
    encode_address_family,
    encode_even_port,
    encode_requested_transport,
    encode_uint32,
)
from rendezvous.stun.constants import AddressFamily
from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_REALM, TURN_USER, free_port, start_node, start_relay, stop_node
from tests.turn_helpers import TcpTurnClient, UdpTurnClient, bind, code, permit

pytestmark = pytest.mark.integration

RELAY_RANGE = (61200, 61219)


@pytest.fixture(scope="module")
def open_relay(tmp_path_factory):
    """A relay whose --allow-peer covers 127.0.0.0/8, where it listens (and serves /metrics)."""
    metrics_port = free_port()
    node = start_relay(tmp_path_factory.mktemp("open"), "--metrics", f"{PRIMARY_IP}:{metrics_port}",
                       "--user-quota", "20")
    node.metrics_port = metrics_port
    yield node
    stop_node(node)


def udp_client(node) -> UdpTurnClient:
    return UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)


def release(c) -> None:
    c.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
    c.close()


def send_indication(peer, data: bytes) -> bytes:
    send = Message(Method.SEND, Class.INDICATION)
    send.add_address(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, data)
    return send.encode()


def test_own_endpoints_are_refused_whatever_allow_peer_says(open_relay):
    """CreatePermission and ChannelBind to the relay's STUN/TURN, TLS and metrics ports get 403 although
    --allow-peer covers their address."""
    c = udp_client(open_relay)
    try:
        assert c.allocate().cls == Class.SUCCESS
        for port in (open_relay.port, open_relay.tls_port, open_relay.metrics_port):
            assert code(permit(c, (PRIMARY_IP, port))) == 403
            assert code(bind(c, 0x4001, (PRIMARY_IP, port))) == 403
    finally:
        release(c)


def test_send_to_an_own_port_is_dropped(open_relay):
    """A Binding request or an Allocate sent through the relay to its own TURN port is not relayed: the
    only Data indication the client gets within a second is the real peer's, no answer of the relay to itself."""
    c = udp_client(open_relay)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((PRIMARY_IP, 0))
        peer.settimeout(5)
        try:
            relayed = c.allocate().address(Attr.XOR_RELAYED_ADDRESS)
            assert permit(c, peer.getsockname()).cls == Class.SUCCESS
            own = (PRIMARY_IP, open_relay.port)
            binding = Message(Method.BINDING, Class.REQUEST).encode()
            allocate = Message(Method.ALLOCATE, Class.REQUEST)
            allocate.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
            for inner in (binding, allocate.encode()):
                c.sock.sendto(send_indication(own, inner), c.server)
            c.sock.sendto(send_indication(peer.getsockname(), b"to the peer"), c.server)
            assert peer.recvfrom(100) == (b"to the peer", relayed)
            peer.sendto(b"from the peer", relayed)
            c.sock.settimeout(1)
            received = []
            with pytest.raises(TimeoutError):
                while len(received) < 10:
                    indication = Message.decode(c.receive())
                    received.append((indication.address(Attr.XOR_PEER_ADDRESS), indication.get(Attr.DATA)))
            assert received == [(peer.getsockname(), b"from the peer")]
        finally:
            release(c)


def test_connect_to_the_metrics_port_is_refused(open_relay):
    """RFC 6062 Connect to the relay's own metrics port gets 403, so /metrics cannot be fetched through it."""
    control = TcpTurnClient((open_relay.ip, open_relay.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
    try:
        assert control.allocate_tcp().cls == Class.SUCCESS
        msg = Message(Method.CONNECT, Class.REQUEST)
        msg.add_address(Attr.XOR_PEER_ADDRESS, (PRIMARY_IP, open_relay.metrics_port))
        assert code(control.request(Method.CONNECT, *msg.attributes, tid=msg.transaction_id)) == 403
    finally:
        control.close()


def test_reservations_count_against_the_user_quota(open_relay):
    """With --user-quota 20, Allocates with EVEN-PORT R released at once leave at most 20 reservations:
    the next Allocate gets 486."""
    codes = []
    for _ in range(25):
        c = udp_client(open_relay)
        response = c.allocate((Attr.EVEN_PORT, encode_even_port(True)))
        codes.append(code(response) if response.cls == Class.ERROR else 200)
        if response.cls == Class.SUCCESS:
            c.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
        c.close()
    assert codes.count(200) <= 20 and codes[-1] == 486, codes


def test_401_is_at_most_four_times_the_smallest_allocate(open_relay):
    """An unauthenticated 28-byte Allocate (header and REQUESTED-TRANSPORT) draws a 401 at most 112 bytes long."""
    request = Message(Method.ALLOCATE, Class.REQUEST)
    request.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
    data = request.encode()
    assert len(data) == 28
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(data, (open_relay.ip, open_relay.port))
        answer = s.recvfrom(2048)[0]
    assert code(Message.decode(answer)) == 401
    assert len(answer) <= 4 * len(data), len(answer)


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory):
    """A relay with the default peer policy, relayed addresses on 127.0.0.1 and ::1 in a small range."""
    node = start_node(tmp_path_factory.mktemp("strict"), "--user", f"{TURN_USER}:{TURN_PASSWORD}",
                      "--realm", TURN_REALM, "--relay-ip", "127.0.0.1", "--relay-ip", "::1",
                      "--relay-ports", "%d-%d" % RELAY_RANGE, alternate=False, command="relay")
    yield node
    stop_node(node)


def bound_in_range(family, taken) -> socket.socket:
    """A UDP socket of this test on ::1 (or 127.0.0.1) at a free port of the relay range."""
    for port in range(RELAY_RANGE[0], RELAY_RANGE[1] + 1):
        if port in taken:
            continue
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("::1" if family == socket.AF_INET6 else PRIMARY_IP, port))
            return sock
        except OSError:
            sock.close()
    raise RuntimeError("no free port in the relay range")


def test_only_live_relayed_addresses_are_peers(strict_relay):
    """Under the default policy a non-relay socket at [::1]:R in the relay range is refused (ChannelBind
    403, a Send dropped although the permission for ::1 holds), while another allocation's relayed
    address there is reached."""
    v6 = (Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6))
    a, b = udp_client(strict_relay), udp_client(strict_relay)
    try:
        a_relayed = a.allocate(v6).address(Attr.XOR_RELAYED_ADDRESS)
        b_relayed = b.allocate(v6).address(Attr.XOR_RELAYED_ADDRESS)
        with bound_in_range(socket.AF_INET6, {a_relayed[1], b_relayed[1]}) as stranger:
            stranger.settimeout(0.5)
            other = stranger.getsockname()[:2]
            assert code(bind(b, 0x4001, other)) == 403
            assert permit(b, a_relayed).cls == Class.SUCCESS and permit(a, b_relayed).cls == Class.SUCCESS
            b.sock.sendto(send_indication(other, b"not for you"), b.server)
            b.sock.sendto(send_indication(a_relayed, b"relay to relay"), b.server)
            assert Message.decode(a.receive()).get(Attr.DATA) == b"relay to relay"
            with pytest.raises(TimeoutError):
                stranger.recvfrom(100)
    finally:
        release(a)
        release(b)


def test_super_node_refuses_its_firewall_echo_and_alternate_ports(tmp_path):
    """twistd rendezvous refuses (403) its HTTP firewall port, echo port and RFC 5780 alternate endpoints as
    peers although --allow-peer covers their addresses."""
    http_port, echo_port = free_port(), free_port()
    node = start_node(tmp_path, "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM,
                      "--allow-peer", "127.0.0.0/8", "--http-port", str(http_port), "--echo-port", str(echo_port))
    c = udp_client(node)
    try:
        assert c.allocate().cls == Class.SUCCESS
        for peer in ((PRIMARY_IP, http_port), (PRIMARY_IP, echo_port), (node.alt_ip, node.port),
                     (node.alt_ip, node.alt_port), (PRIMARY_IP, node.tls_port)):
            assert code(permit(c, peer)) == 403, peer
        assert permit(c, (node.alt_ip, 9)).cls == Class.SUCCESS
    finally:
        release(c)
        stop_node(node)
