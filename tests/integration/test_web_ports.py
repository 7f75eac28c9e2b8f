"""The firewall ports: STUN/TURN, signaling, HTTP and WebSocket on one plain and one TLS port."""

import json
import os
import socket
import ssl
import struct
import urllib.request

import pytest
import pytest_twisted
import websocket

from rendezvous.node.accounts import AccountStore
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.wire.frames import MAX_FRAME_BYTES
from tests.conftest import free_port, start_node, stop_node
from tests.signaling_helpers import login

pytestmark = pytest.mark.integration


def _node(tmp, *ports):
    store = AccountStore(tmp / "state" / "accounts.sqlite")
    store.add("webby", "webby-pw", "txrendezvous")
    store.close()
    return start_node(tmp, *ports, alternate=False)


@pytest.fixture(scope="module")
def web_node(tmp_path_factory):
    """A super node with unprivileged stand-ins for TCP 80 and 443."""
    http_port = free_port()
    https_port = free_port(exclude={http_port})
    node = _node(tmp_path_factory.mktemp("web"), "--http-port", str(http_port), "--https-port", str(https_port))
    node.http_port, node.https_port = http_port, https_port
    yield node
    stop_node(node)


def tls_context(node):
    context = ssl.create_default_context(cafile=str(node.state_dir / "tls" / "self-signed.pem"))
    return context


def test_healthz_over_http_and_https(web_node):
    """/healthz answers on the plain and the TLS firewall port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_node.http_port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"ok\n"
    context = tls_context(web_node)
    context.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{web_node.https_port}/healthz", timeout=5,
                                context=context) as r:
        assert r.read() == b"ok\n"


@pytest.mark.parametrize("secure", [False, True], ids=["port-80", "port-443"])
def test_stun_on_the_firewall_ports(web_node, secure):
    """A STUN Binding over the plain or TLS firewall port learns the mapping."""
    raw = socket.create_connection(("127.0.0.1", web_node.https_port if secure else web_node.http_port), timeout=5)
    s = tls_context(web_node).wrap_socket(raw, server_hostname="localhost") if secure else raw
    with s:
        s.sendall(Message(Method.BINDING, Class.REQUEST).encode())
        response = Message.decode(s.recv(2048))
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()


@pytest.mark.parametrize("secure", [False, True], ids=["port-80", "port-443"])
@pytest_twisted.ensureDeferred
async def test_signaling_frames_on_the_firewall_ports(web_node, secure):
    """A signaling client that can only reach 80/443 logs in."""
    client = await login(web_node, "webby", tls=secure, port=web_node.https_port if secure else web_node.http_port)
    assert client.mapped_address == client.local_address
    await client.close()


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_websocket_signaling(web_node, secure):
    """Signaling over WebSocket at /signaling: login, then a bad message gets an error."""
    if secure:
        url = f"wss://localhost:{web_node.https_port}/signaling"
        options = {"sslopt": {"ca_certs": str(web_node.state_dir / "tls" / "self-signed.pem")}}
    else:
        url, options = f"ws://127.0.0.1:{web_node.http_port}/signaling", {}
    ws = websocket.create_connection(url, timeout=5, **options)
    try:
        ws.send(json.dumps({"op": "login", "id": 1, "user": "webby", "password": "webby-pw"}))
        messages = []
        while not any(m.get("op") == "welcome" for m in messages):
            messages.append(json.loads(ws.recv()))
        ws.send("not json")
        error = json.loads(ws.recv())
        while error["op"] != "error":
            error = json.loads(ws.recv())
        assert error["code"] == "bad-request"
    finally:
        ws.close()


def test_websocket_message_over_the_limit_gets_close_1009(web_node):
    """A WebSocket message over MAX_FRAME_BYTES gets a close frame with 1009 (message too big), not a bare drop."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{web_node.http_port}/signaling", timeout=5)
    try:
        ws.send(json.dumps({"op": "ping", "token": "x" * MAX_FRAME_BYTES}))
        opcode, data = ws.recv_data(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:
            opcode, data = ws.recv_data(control_frame=True)
        assert struct.unpack("!H", data[:2])[0] == 1009
        assert b"exceeds payload limit of 16384" in data[2:]
    finally:
        ws.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="binding TCP 80 and 443 needs root (CI runs as root)")
def test_real_ports_80_and_443(tmp_path):
    """With --web-ports as root, the node serves TCP 80 and 443 on loopback."""
    node = _node(tmp_path, "--web-ports")
    try:
        with urllib.request.urlopen("http://127.0.0.1:80/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
        raw = socket.create_connection(("127.0.0.1", 443), timeout=5)
        with tls_context(node).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(Message(Method.BINDING, Class.REQUEST).encode())
            assert Message.decode(s.recv(2048)).cls == Class.SUCCESS
    finally:
        stop_node(node)
