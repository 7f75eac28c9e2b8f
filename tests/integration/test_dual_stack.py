"""``twistd rendezvous`` and ``twistd relay`` on their dual-stack default: separate IPv4 and IPv6 sockets
(IPV6_V6ONLY) on every port, each client answered in its own family, and join information of both."""

import socket
import ssl
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import reactor

from rendezvous.peer.host_cache import HostCache
from rendezvous.peer.signaling_client import SignalingClient
from rendezvous.stun import Attr, Class, Message
from rendezvous.stun.attributes import encode_address_family
from rendezvous.stun.constants import AddressFamily
from rendezvous.stun.framing import StreamFramer
from rendezvous.wire.echo_probe import decode_reply, probe
from tests.conftest import TURN_PASSWORD, TURN_REALM, TURN_USER, free_port, start_node, start_relay, stop_node
from tests.turn_helpers import TcpTurnClient, UdpTurnClient

pytestmark = pytest.mark.integration

FAMILIES = [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)]


@pytest.fixture(scope="module")
def dual_node(tmp_path_factory):
    """A super node with no --ip (its dual-stack default), firewall and echo ports, relayed addresses on
    loopback in both families."""
    http, https, echo = (free_port(("0.0.0.0", "::")) for _ in range(3))
    node = start_node(tmp_path_factory.mktemp("dual"), "--http-port", str(http), "--https-port", str(https),
                      "--echo-port", str(echo), "--relay-ip", "127.0.0.1", "--relay-ip", "::1",
                      "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM, "--open-registration",
                      alternate=False, ips=None)
    node.http_port, node.https_port, node.echo_port = http, https, echo
    yield node
    stop_node(node)


def binding() -> Message:
    return Message(0x0001, Class.REQUEST)


def udp_binding(server) -> Message:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(binding().encode(), server)
        return Message.decode(sock.recvfrom(2048)[0])


def stream_binding(server, tls: bool = False) -> Message:
    sock = socket.create_connection(server, timeout=5)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    with sock:
        sock.sendall(binding().encode())
        framer, frames = StreamFramer(), []
        while not frames:
            frames = framer.feed(sock.recv(2048))
        return Message.decode(frames[0])


@pytest.mark.parametrize("ip, family", FAMILIES)
def test_each_family_gets_its_own_mapped_address_over_udp(dual_node, ip, family):
    """An IPv4 client gets an IPv4 XOR-MAPPED-ADDRESS (never ::ffff:a.b.c.d), an IPv6 client an IPv6 one,
    and the answer comes from the address the request went to."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(binding().encode(), (ip, dual_node.port))
        data, source = sock.recvfrom(2048)
        local = sock.getsockname()
    response = Message.decode(data)
    assert source[:2] == (ip, dual_node.port)
    assert response.address(Attr.XOR_MAPPED_ADDRESS) == (ip, local[1])
    assert response.address(Attr.MAPPED_ADDRESS) == (ip, local[1])


@pytest.mark.parametrize("ip, family", FAMILIES)
@pytest.mark.parametrize("which", ["tcp", "tls", "http-port", "https-port"])
def test_each_family_over_every_stream_port(dual_node, ip, family, which):
    """STUN over TCP, TLS and both firewall ports answers each family with its own address."""
    port = {"tcp": dual_node.port, "tls": dual_node.tls_port, "http-port": dual_node.http_port,
            "https-port": dual_node.https_port}[which]
    response = stream_binding((ip, port), tls=which in ("tls", "https-port"))
    assert response.address(Attr.XOR_MAPPED_ADDRESS)[0] == ip


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_healthz_on_the_firewall_port_in_each_family(dual_node, host):
    """HTTP on the plain firewall port answers over IPv4 and IPv6."""
    with urllib.request.urlopen(f"http://{host}:{dual_node.http_port}/healthz", timeout=5) as r:
        assert r.status == 200


@pytest.mark.parametrize("ip, family", FAMILIES)
def test_echo_service_in_each_family(dual_node, ip, family):
    """The echo service answers over UDP in each family, naming the client's address in its own family."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(probe(b"hello"), (ip, dual_node.echo_port))
        payload, seen = decode_reply(sock.recvfrom(4096)[0])
        assert payload == b"hello" and seen == (ip, sock.getsockname()[1])


@pytest.mark.parametrize("client_ip", ["127.0.0.1", "::1"])
def test_turn_relays_ipv4_by_default_and_ipv6_on_request_over_either_family(dual_node, client_ip):
    """Over an IPv4 or IPv6 transport an Allocate without a family gets an IPv4 relayed address,
    REQUESTED-ADDRESS-FAMILY IPv6 an IPv6 one (RFC 8656 §7.2 step 7)."""
    for client_class in (UdpTurnClient, TcpTurnClient):
        client = client_class((client_ip, dual_node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
        try:
            response = client.allocate()
            assert response.address(Attr.XOR_RELAYED_ADDRESS)[0] == "127.0.0.1"
            assert response.address(Attr.XOR_MAPPED_ADDRESS)[0] == client_ip
        finally:
            client.close()
        client = client_class((client_ip, dual_node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
        try:
            response = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
            assert response.address(Attr.XOR_RELAYED_ADDRESS)[0] == "::1"
        finally:
            client.close()


@pytest_twisted.ensureDeferred
async def test_welcome_over_ipv6_names_both_families_and_the_cache_keeps_them(dual_node, tmp_path):
    """A login over IPv6 gets a welcome naming the node's IPv4 and IPv6 addresses and TURN URLs at both; the
    client's host cache keeps the node with both."""
    cache = HostCache(tmp_path / "hosts.json")
    client = await SignalingClient.login(reactor, "v6user", "v6user-pw-long", servers=[("::1", dual_node.port)],
                                         host_cache=cache, register=True)
    try:
        welcome = client.welcome
        assert welcome["mapped"][0] == "::1"
        assert welcome["node_ips"] == ["127.0.0.1", "::1"]
        assert f"turn:[::1]:{dual_node.port}?transport=udp" in welcome["relays"]
        assert f"turn:127.0.0.1:{dual_node.port}?transport=udp" in welcome["relays"]
    finally:
        await client.close()
    saved = HostCache(tmp_path / "hosts.json").load()
    assert saved.entries[("::1", dual_node.port)]["ips"] == ["::1", "127.0.0.1"]


@pytest.mark.parametrize("ip, family", FAMILIES)
def test_relay_answers_each_family(dual_relay, ip, family):
    """twistd relay listens on both families too, answering STUN with the client's own family."""
    response = udp_binding((ip, dual_relay.port))
    assert response.address(Attr.XOR_MAPPED_ADDRESS)[0] == ip
    assert stream_binding((ip, dual_relay.tls_port), tls=True).address(Attr.XOR_MAPPED_ADDRESS)[0] == ip


def test_relay_workers_share_both_families(tmp_path):
    """With --workers 2 every worker holds SO_REUSEPORT sockets in both families: UDP and TCP Bindings over
    IPv4 and IPv6 all get their own family's mapped address."""
    node = start_relay(tmp_path, "--workers", "2", ips=None)
    try:
        for ip, _ in FAMILIES:
            for _ in range(4):  # new source ports, spread over the workers
                response = udp_binding((ip, node.port))
                assert response.address(Attr.XOR_MAPPED_ADDRESS)[0] == ip
                assert stream_binding((ip, node.port)).address(Attr.XOR_MAPPED_ADDRESS)[0] == ip
    finally:
        stop_node(node)
