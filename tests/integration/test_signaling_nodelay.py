"""TCP_NODELAY on signaling streams, read back with getsockopt from real loopback connections.

Without it a small frame (a connect-request, a punch) can wait behind
Nagle's algorithm for the ACK of the frame before, which the peer's delayed
ACK holds back for up to 40 ms. The node here runs in the test's reactor so
both ends' sockets can be inspected.
"""

import json
import socket

import pytest
import pytest_twisted
import websocket
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory

from rendezvous.node.accounts import AccountStore
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.signaling import SignalingConfig, SignalingNode
from rendezvous.node.signaling_protocol import DemuxFactory, SignalingFactory
from rendezvous.node.tls import WEB_ALPN_PROTOCOLS, ReloadableTLS
from rendezvous.node.web import site
from rendezvous.peer.signaling_client import SignalingClient

pytestmark = pytest.mark.integration


def no_delay(transport) -> bool:
    """Whether the socket under transport (under its TLS layer, if any) has TCP_NODELAY set."""
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket):  # TLS: the handle is the OpenSSL connection
        handle = transport.transport.getHandle()
    return handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.fixture
def node(tmp_path):
    """A signaling node in this process, on a plain and a TLS port demultiplexed as the firewall ports are."""
    store = AccountStore(tmp_path / "accounts.sqlite")
    store.add("alice", "alice-pw", "txrendezvous")
    core = SignalingNode(AsyncAccounts.inline(store), reactor, SignalingConfig())
    demux = DemuxFactory(Factory(), SignalingFactory(core), site(core))
    plain = reactor.listenTCP(0, demux, interface="127.0.0.1")
    secure = reactor.listenSSL(0, demux, ReloadableTLS(None, None, tmp_path, WEB_ALPN_PROTOCOLS),
                               interface="127.0.0.1")
    core.ports = (plain.getHost().port, secure.getHost().port)
    yield core
    plain.stopListening()
    secure.stopListening()
    store.close()


def server_transport(node):
    """The transport under alice's session on the node (the adapter behind session.send)."""
    return node.sessions["alice"].send.__self__.transport


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_both_ends_of_a_signaling_stream_send_at_once(node, tls):
    """The node's accepted signaling connection and the client's both have TCP_NODELAY, over TCP and TLS."""
    client = await SignalingClient.login(reactor, "alice", "alice-pw", servers=[("127.0.0.1", node.ports[tls])],
                                         tls=tls, tls_verify=False, timeout_seconds=5)
    try:
        assert no_delay(server_transport(node))
        assert no_delay(client._write.__self__.transport)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_websocket_signaling_sends_at_once(node):
    """The node's WebSocket signaling connection has TCP_NODELAY (autobahn sets it; this keeps it so)."""
    def log_in():
        ws = websocket.create_connection(f"ws://127.0.0.1:{node.ports[0]}/signaling", timeout=5)
        ws.send(json.dumps({"op": "login", "id": 1, "user": "alice", "password": "alice-pw"}))
        while json.loads(ws.recv())["op"] != "welcome":
            pass
        return ws

    ws = await threads.deferToThread(log_in)
    try:
        assert no_delay(server_transport(node))
    finally:
        ws.close()
