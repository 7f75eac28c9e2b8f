"""The real ``twistd relay`` process: relaying, peer refusal, reload on SIGHUP."""

import signal
import socket
import time

import pytest

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_address_family, encode_uint32
from rendezvous.stun.constants import AddressFamily
from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_REALM, TURN_USER, start_node, stop_node
from tests.turn_helpers import UdpTurnClient, bind, code, permit

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
    """CreatePermission and ChannelBind to a denied peer, in any address form, get 403."""
    c = client(strict_relay)
    try:
        response = c.allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
        assert len(response.addresses(Attr.XOR_RELAYED_ADDRESS)) == 2
        assert code(permit(c, (peer, 5000))) == 403
        assert code(bind(c, 0x4001, (peer, 5000))) == 403
    finally:
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
    from rendezvous.accounts import AccountStore

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
