"""RFC 6062 data connections on the stream adapter: a ConnectionBind splices the client's connection
to its peer connection, in memory (StringTransport, MemoryReactorClock), with the real TURN core."""

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relay.credentials import Credentials, StaticUsers
from relay.listeners import IDLE_TIMEOUT_SECONDS, ServerStreamFactory
from relay.peer_policy import PeerPolicy
from relay.server import RelayPolicy, TurnServer
from relay.tcp_relay import PeerConnection, TcpRelay
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_uint32
from rendezvous.stun.binding import Addresses, BindingServer
from tests.turn_helpers import TurnRequests

REALM = "example.org"
LOCAL = ("127.0.0.1", 3478)
CLIENT_IP = "127.0.0.1"
# A complete ChannelData frame, then the first bytes of another (pipelined client data).
COMPLETE = b"\x40\x00\x00\x04abcd"
PARTIAL = b"\x40\x01\x00\x10xy"


class Control(TurnRequests):
    """An RFC 6062 control connection talking to the TURN core directly."""

    def __init__(self, turn) -> None:
        super().__init__("alice", "secret", REALM)
        self.turn = turn
        self.five_tuple = ("tcp", (CLIENT_IP, 40000), LOCAL)
        self.received = []

    def ask(self, msg):
        data = self.turn.handle(msg, self.five_tuple, self.received.append)
        return None if data is None else Message.decode(data)


def spliced_pair(transport_name="tcp"):
    """A TCP allocation with one peer connection waiting, and a fresh data leg; returns
    (clock, tcp relay, the data leg, its transport, the peer connection, the ConnectionBind bytes)."""
    clock = MemoryReactorClock()
    tcp = TcpRelay(clock, {4: "127.0.0.1"}, 50000, 50999)
    turn = TurnServer(RelayPolicy(realm=REALM), Credentials([StaticUsers({"alice": "secret"}, REALM)]),
                      PeerPolicy(), ports=None, clock=clock, tcp=tcp)
    control = Control(turn)
    assert control.allocate_tcp().cls == Class.SUCCESS
    endpoint = turn.allocations[control.five_tuple].relays[4]
    peer = PeerConnection(tcp, endpoint, ("127.0.0.1", 9), incoming=True)
    peer.makeConnection(StringTransport())
    factory = ServerStreamFactory(BindingServer(Addresses(ip=LOCAL[0], port=LOCAL[1])), turn, LOCAL, transport_name)
    leg = factory.buildProtocol(None)
    leg.callLater = clock.callLater
    leg_transport = StringTransport(peerAddress=IPv4Address("TCP", CLIENT_IP, 40001))
    leg.makeConnection(leg_transport)
    bind = control.raw(Method.CONNECTION_BIND, (Attr.CONNECTION_ID, encode_uint32(peer.connection_id)))
    endpoint.port.stopListening()
    return clock, tcp, leg, leg_transport, peer, bind.raw or bind.encode()


def test_spliced_connection_has_no_idle_timer():
    """After ConnectionBind the data connection is not cut by the 300 s idle timer."""
    clock, _, leg, leg_transport, peer, bind = spliced_pair()
    leg.dataReceived(bind)
    assert Message.decode(leg_transport.value()).cls == Class.SUCCESS and leg.pipe is peer
    clock.advance(IDLE_TIMEOUT_SECONDS + 1)
    leg.dataReceived(b"later")
    clock.advance(IDLE_TIMEOUT_SECONDS + 1)
    assert not leg_transport.disconnecting
    assert peer.transport.value() == b"later"


def test_pipelined_bytes_keep_their_order():
    """Bytes arriving with the ConnectionBind (whole frames, then part of one) reach the peer in order."""
    _, _, leg, _, peer, bind = spliced_pair()
    leg.dataReceived(bind + COMPLETE + PARTIAL)
    assert peer.transport.value() == COMPLETE + PARTIAL
    leg.dataReceived(b"z")
    assert peer.transport.value() == COMPLETE + PARTIAL + b"z"


def test_handoff_carries_every_byte_after_the_connection_bind(tmp_path):
    """A ConnectionBind for another worker's connection goes to it with all the bytes read after it
    (whole frames and the partial one), and none is handled here."""
    _, tcp, leg, leg_transport, peer, bind = spliced_pair("tls")
    tcp.worker_index = 1  # the peer connection's CONNECTION-ID names worker 0: it is "elsewhere"
    path = tmp_path / "owner.fd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as owner:
        owner.bind(str(path))
        owner.listen(1)
        owner.settimeout(5)
        tcp.handoff_paths = {0: path}
        leg.dataReceived(bind + COMPLETE + PARTIAL)
        channel, _ = owner.accept()
        with channel:
            data, fds, _, _ = socket.recv_fds(channel, 70_000, 1)
            for fd in fds:
                socket.socket(fileno=fd).close()
            while chunk := channel.recv(70_000):
                data += chunk
    header, _, replay = data.partition(b"\n")
    assert replay == bind + COMPLETE + PARTIAL and len(fds) == 1
    assert leg_transport.value() == b"" and peer.transport.value() == b""
