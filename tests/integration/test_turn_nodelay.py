"""TCP_NODELAY on TURN's TCP and TLS connections (RFC 8656 §12.5 framing), read back with getsockopt.

A framed datagram (an ICE check, a QUIC handshake flight) that waits behind
Nagle's algorithm for the ACK of the one before, which the other side's
delayed ACK holds back for up to 40 ms, costs a session through a
TCP or TLS relay tens of ms per round trip. The relay listener runs in the
test's reactor so both ends' sockets can be inspected.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor

from relay import client as turn_client
from relay.credentials import Credentials, StaticUsers
from relay.listeners import ServerStreamFactory
from relay.peer_policy import PeerPolicy
from relay.server import RelayPolicy, TurnServer
from rendezvous.node.tls import WEB_ALPN_PROTOCOLS, ReloadableTLS
from rendezvous.stun.binding import Addresses, BindingServer
from tests.integration.test_signaling_nodelay import no_delay

pytestmark = pytest.mark.integration

REALM = "example.org"


class Recording(ServerStreamFactory):
    """The relay's stream factory, keeping the connections it made."""

    def __init__(self, *args):
        super().__init__(*args)
        self.made = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.made.append(protocol)
        return protocol


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_both_ends_of_a_turn_stream_send_at_once(tmp_path, transport):
    """The relay's accepted TCP/TLS connection and the TURN client's both have TCP_NODELAY."""
    turn = TurnServer(RelayPolicy(realm=REALM), Credentials([StaticUsers({"alice": "secret"}, REALM)]),
                      PeerPolicy(), ports=None, clock=reactor)
    factory = Recording(BindingServer(Addresses(ip="127.0.0.1", port=0)), turn, ("127.0.0.1", 0), transport)
    if transport == "tls":
        port = reactor.listenSSL(0, factory, ReloadableTLS(None, None, tmp_path, WEB_ALPN_PROTOCOLS),
                                 interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = await turn_client.connect(reactor, ("127.0.0.1", port.getHost().port), transport, username="alice",
                                       password="secret", realm=REALM, tls_verify=False)
    try:
        (accepted,) = factory.made
        assert no_delay(accepted.transport)
        assert no_delay(client._disconnect.__self__.transport)  # the client's stream adapter's
    finally:
        await client.close()
        await port.stopListening()
