"""TurnClient.close() over TLS against a real ``twistd relay``: a clean close, never a hang."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from relay import client as turn_client
from relay.client_transports import _StreamAdapter
from tests.conftest import TURN_PASSWORD, TURN_REALM, TURN_USER

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_close_over_tls_ends_the_connection(relay_node):
    """close() deletes the allocation and the TLS connection ends by close_notify, not by the abort timer."""
    client = await turn_client.connect(reactor, (relay_node.ip, relay_node.tls_port), "tls", username=TURN_USER,
                                       password=TURN_PASSWORD, realm=TURN_REALM, tls_verify=False)
    await client.allocate()
    frozen = Clock()  # the abort timer runs on the client's clock: frozen, only a clean close can end it
    client.clock = frozen
    await client.close().addTimeout(10, reactor)
    assert frozen.getDelayedCalls() == []  # the abort timer was set and cancelled by connectionLost
    assert client.relayed_address is None


class RecordingTransport(StringTransport):
    """A StringTransport that counts abortConnection calls."""

    aborts = 0

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()


def test_disconnect_unregisters_the_producer_then_aborts_a_stuck_close():
    """The stream adapter drops its producer before closing, and aborts when the peer never closes."""
    clock = Clock()
    client = turn_client.TurnClient(clock, ("192.0.2.1", 5349), "tls", "u", "p")
    adapter = _StreamAdapter(client, tls=True)
    transport = RecordingTransport()
    adapter.makeConnection(transport)
    assert transport.producer is adapter
    adapter.disconnect()
    assert transport.producer is None and transport.disconnecting and transport.aborts == 0
    clock.advance(turn_client.CLOSE_TIMEOUT_SECONDS)
    assert transport.aborts == 1 and clock.getDelayedCalls() == []
    adapter.disconnect()  # a second close does nothing more
    assert clock.getDelayedCalls() == []
