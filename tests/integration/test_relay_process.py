"""The real ``twistd relay`` process: relaying, peer refusal, reload on SIGHUP."""

import signal
import socket
import time

import pytest

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_address_family, encode_uint32
from rendezvous.stun.constants import AddressFamily
from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_REALM, TURN_USER, start_node, stop_node
from tests.turn_helpers import TcpTurnClient, UdpTurnClient, bind, code, permit

pytestmark = pytest.mark.integration

DENIED_PEERS = [
    "127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "100.64.0.1", "169.254.1.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]


@pytest.fixture(scope="module")
def strict_relay(tmp_path_factory):
    """A relay with the default peer policy and relayed addresses in both families."""
    node = start_node(tmp_path_factory.mktemp("strict"), "--user", f"{TURN_USER}:{TURN_PASSWORD}",
                      "--realm", TURN_REALM, "--relay-ip", "127.0.0.1", "--relay-ip", "::1",
                      alternate=False, command="relay")
    yield node
    stop_node(node)


def client(node, password=TURN_PASSWORD):
    return UdpTurnClient((node.ip, node.port), TURN_USER, password, TURN_REALM)


@pytest.mark.parametrize("peer", DENIED_PEERS)
def test_denied_peer_forms_get_403(strict_relay, peer):
    """CreatePermission and ChannelBind to a denied peer, in any address form, get 403; at the relay's own
    relayed IPs a permission is granted (it covers the relayed addresses of live allocations only)."""
    c = client(strict_relay)
    try:
        response = c.allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
        assert len(response.addresses(Attr.XOR_RELAYED_ADDRESS)) == 2
        if peer in ("127.0.0.1", "::1"):  # its --relay-ip
            assert permit(c, (peer, 5000)).cls == Class.SUCCESS
        else:
            assert code(permit(c, (peer, 5000))) == 403
        assert code(bind(c, 0x4001, (peer, 5000))) == 403
    finally:
        c.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
        c.close()


def test_two_allocations_on_one_relay_reach_each_other(strict_relay):
    """Relayed addresses are peers under the default policy while an allocation holds them; other ports are not."""
    a, b = client(strict_relay), client(strict_relay)
    try:
        a_relayed = a.allocate().address(Attr.XOR_RELAYED_ADDRESS)
        b_relayed = b.allocate().address(Attr.XOR_RELAYED_ADDRESS)
        assert code(permit(a, (strict_relay.ip, strict_relay.port))) == 403  # its listening port
        assert code(bind(a, 0x4001, (strict_relay.ip, 3478))) == 403  # a port no allocation holds
        assert permit(a, b_relayed).cls == Class.SUCCESS and permit(b, a_relayed).cls == Class.SUCCESS
        send = Message(Method.SEND, Class.INDICATION)
        send.add_address(Attr.XOR_PEER_ADDRESS, b_relayed).add(Attr.DATA, b"relay to relay")
        a.sock.sendto(send.encode(), a.server)
        indication = Message.decode(b.receive())
        assert indication.get(Attr.DATA) == b"relay to relay"
        assert indication.address(Attr.XOR_PEER_ADDRESS) == a_relayed
    finally:
        for c in (a, b):
            c.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
            c.close()


def test_wrong_password_gets_401(strict_relay):
    """An Allocate with a wrong password gets 401 with a fresh challenge."""
    c = client(strict_relay, "wrong")
    try:
        response = c.allocate()
        assert code(response) == 401 and Attr.NONCE in response
    finally:
        c.close()


def test_relay_answers_binding(relay_node):
    """A TURN relay is also a STUN server (RFC 8656 §3)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((PRIMARY_IP, 0))
        s.settimeout(3)
        request = Message(Method.BINDING, Class.REQUEST)
        s.sendto(request.encode(), (relay_node.ip, relay_node.port))
        response = Message.decode(s.recvfrom(2048)[0])
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()


def relay_round_trip(c: UdpTurnClient, peer: socket.socket, relayed) -> bytes:
    """Send a Send indication to peer, answer from peer, return the Data payload."""
    send = Message(Method.SEND, Class.INDICATION)
    send.add_address(Attr.XOR_PEER_ADDRESS, peer.getsockname()).add(Attr.DATA, b"to the peer")
    c.sock.sendto(send.encode(), c.server)
    data, source = peer.recvfrom(2048)
    assert (data, source) == (b"to the peer", relayed)
    peer.sendto(b"to the client", relayed)
    indication = Message.decode(c.receive())
    assert indication.address(Attr.XOR_PEER_ADDRESS) == peer.getsockname()
    return indication.get(Attr.DATA)


def test_send_and_data_indications_through_the_process(relay_node):
    """A Send indication reaches a real UDP peer and its answer comes back as a Data indication."""
    c = client(relay_node)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((PRIMARY_IP, 0))
        peer.settimeout(3)
        relayed = c.allocate().address(Attr.XOR_RELAYED_ADDRESS)
        assert permit(c, peer.getsockname()).cls == Class.SUCCESS
        assert relay_round_trip(c, peer, relayed) == b"to the client"
    c.close()


def test_sighup_reloads_users_and_keeps_allocations(tmp_path):
    """SIGHUP takes a new password from the config file; the running allocation keeps relaying."""
    config = tmp_path / "relay.toml"
    config.write_text(f'user = ["{TURN_USER}:old-password"]\nallow-peer = ["127.0.0.0/8"]\n'
                      f'realm = "{TURN_REALM}"\n')
    node = start_node(tmp_path, "--config", str(config), alternate=False, command="relay")
    c = client(node, "old-password")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PRIMARY_IP, 0))
            peer.settimeout(3)
            relayed = c.allocate().address(Attr.XOR_RELAYED_ADDRESS)
            permit(c, peer.getsockname())
            config.write_text(f'user = ["{TURN_USER}:new-password"]\nallow-peer = ["127.0.0.0/8"]\n'
                              f'realm = "{TURN_REALM}"\n')
            node.process.send_signal(signal.SIGHUP)
            fresh = client(node, "new-password")
            deadline = time.monotonic() + 10
            while fresh.allocate().cls != Class.SUCCESS:
                assert time.monotonic() < deadline, node.log()
                time.sleep(0.2)
            fresh.close()
            assert relay_round_trip(c, peer, relayed) == b"to the client"
            config.write_text("this is = not [valid toml\n")
            node.process.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert node.process.poll() is None
            assert "reload refused" in node.log()
            assert relay_round_trip(c, peer, relayed) == b"to the client"
    finally:
        c.close()
        stop_node(node)


def test_users_from_the_account_store(tmp_path):
    """A relay started with --accounts authenticates users from the SQLite store."""
    from rendezvous.node.accounts import AccountStore

    path = tmp_path / "accounts.sqlite"
    store = AccountStore(path)
    store.add("dora", "explorer-pw", TURN_REALM)
    store.close()
    node = start_node(tmp_path, "--accounts", str(path), "--realm", TURN_REALM, alternate=False, command="relay")
    try:
        good = UdpTurnClient((node.ip, node.port), "dora", "explorer-pw", TURN_REALM)
        bad = UdpTurnClient((node.ip, node.port), "dora", "wrong", TURN_REALM)
        assert good.allocate().cls == Class.SUCCESS
        assert code(bad.allocate()) == 401
        good.close()
        bad.close()
    finally:
        stop_node(node)


def tcp_client(node):
    return TcpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)


def tcp_allocate(control):
    response = control.allocate_tcp()
    assert response.cls == Class.SUCCESS, response
    return response.address(Attr.XOR_RELAYED_ADDRESS)


def connection_bind(node, connection_id: bytes) -> TcpTurnClient:
    data = tcp_client(node)
    data.nonce = None
    response = data.request(Method.CONNECTION_BIND, (Attr.CONNECTION_ID, connection_id))
    assert response.cls == Class.SUCCESS
    return data


def test_rfc6062_connect_and_bind(relay_node):
    """Connect opens TCP from the relayed address to a peer; ConnectionBind splices a data connection."""
    with socket.create_server((PRIMARY_IP, 0)) as listener:
        listener.settimeout(5)
        control = tcp_client(relay_node)
        relayed = tcp_allocate(control)
        msg = Message(Method.CONNECT, Class.REQUEST)
        msg.add_address(Attr.XOR_PEER_ADDRESS, listener.getsockname())
        response = control.request(Method.CONNECT, *msg.attributes, tid=msg.transaction_id)
        assert response.cls == Class.SUCCESS
        peer, source = listener.accept()
        assert source == relayed
        data = connection_bind(relay_node, response.get(Attr.CONNECTION_ID))
        data.sock.sendall(b"client to peer")
        peer.settimeout(5)
        assert peer.recv(100) == b"client to peer"
        peer.sendall(b"peer to client")
        assert data.sock.recv(100) == b"peer to client"
        again = control.request(Method.CONNECT, *msg.attributes, tid=msg.transaction_id)
        assert code(again) == 446
        peer.close()
        assert data.sock.recv(100) == b""
        control.close()


def test_rfc6062_incoming_connection(relay_node):
    """A permitted peer connecting to the relayed address is announced by ConnectionAttempt."""
    control = tcp_client(relay_node)
    relayed = tcp_allocate(control)
    assert permit(control, (PRIMARY_IP, 1)).cls == Class.SUCCESS
    peer = socket.create_connection(relayed, timeout=5)
    attempt = control.next_message()
    assert (attempt.method, attempt.cls) == (Method.CONNECTION_ATTEMPT, Class.INDICATION)
    assert attempt.address(Attr.XOR_PEER_ADDRESS) == peer.getsockname()
    data = connection_bind(relay_node, attempt.get(Attr.CONNECTION_ID))
    peer.sendall(b"hello from the peer")
    assert data.sock.recv(100) == b"hello from the peer"
    control.close()
    assert data.sock.recv(100) == b""
    peer.close()


def test_rfc6062_errors(relay_node):
    """TCP allocations refuse channels; unknown CONNECTION-IDs and unpermitted peers are refused."""
    control = tcp_client(relay_node)
    tcp_allocate(control)
    assert code(bind(control, 0x4001, (PRIMARY_IP, 9))) == 400
    stranger = tcp_client(relay_node)
    assert code(stranger.request(Method.CONNECTION_BIND, (Attr.CONNECTION_ID, b"\0\0\0\x07"))) == 400
    udp = client(relay_node)
    assert code(udp.allocate_tcp()) == 442
    udp.close()
    stranger.close()
    control.close()


def test_turn_echo_example_runs(relay_node):
    """docs/examples/turn_echo.py relays a message to a local peer and back through our relay."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "turn_echo.py"), relay_node.ip, str(relay_node.port),
         TURN_USER, TURN_PASSWORD, TURN_REALM],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "relayed address: ('127.0.0.1'," in result.stdout
    assert "echo from ('127.0.0.1'," in result.stdout and "hello through the relay" in result.stdout


def test_even_port_reservation_and_advertised_address(tmp_path):
    """EVEN-PORT reserves the next port for a RESERVATION-TOKEN; --advertise-relay-ip names the public address."""
    from rendezvous.stun.attributes import encode_even_port

    node = start_node(tmp_path, "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM,
                      "--relay-ip", "127.0.0.1", "--advertise-relay-ip", "198.18.7.7",
                      alternate=False, command="relay")
    first, second = client(node), client(node)
    try:
        response = first.allocate((Attr.EVEN_PORT, encode_even_port(True)))
        host, port = response.address(Attr.XOR_RELAYED_ADDRESS)
        assert host == "198.18.7.7" and port % 2 == 0
        reserved = second.allocate((Attr.RESERVATION_TOKEN, response.get(Attr.RESERVATION_TOKEN)))
        assert reserved.address(Attr.XOR_RELAYED_ADDRESS) == ("198.18.7.7", port + 1)
    finally:
        first.close()
        second.close()
        stop_node(node)


def test_rest_secret_rotation(tmp_path):
    """With two --auth-secret values, credentials signed by either are accepted, by neither refused."""
    from relay.credentials import RestSecrets

    node = start_node(tmp_path, "--auth-secret", "old-secret", "--auth-secret", "new-secret",
                      "--realm", TURN_REALM, alternate=False, command="relay")
    try:
        username = f"{int(time.time()) + 600}:app-user"
        for secret, expected in (("old-secret", Class.SUCCESS), ("new-secret", Class.SUCCESS),
                                 ("other-secret", Class.ERROR)):
            c = UdpTurnClient((node.ip, node.port), username, RestSecrets.password(secret, username), TURN_REALM)
            assert c.allocate().cls == expected
            c.close()
    finally:
        stop_node(node)


def test_sighup_reloads_the_tls_certificate(tmp_path):
    """After the certificate files change, SIGHUP makes new TLS connections present the new one."""
    import shutil
    import ssl

    from rendezvous.node.tls import self_signed

    old_cert, old_key = self_signed(tmp_path / "old")
    new_cert, new_key = self_signed(tmp_path / "new")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    node = start_node(tmp_path, "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--cert", str(cert), "--key", str(key),
                      alternate=False, command="relay")

    def presented() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((node.ip, node.tls_port), timeout=5) as raw, \
                context.wrap_socket(raw) as s:
            return s.getpeercert(binary_form=True)

    def der(path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(path.read_text())

    try:
        assert presented() == der(old_cert)
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        node.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while presented() != der(new_cert):
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
    finally:
        stop_node(node)
