"""aioice (the ICE agent under aiortc) gathers relayed candidates from our relay and runs ICE through it.

RFC 8656 allocation over UDP, TCP and TLS client legs, then a full RFC 8445
exchange between two agents restricted to relayed candidates
(``TransportPolicy.RELAY``), so every check and every datagram crosses our
relay. aioice is asyncio; each test runs its coroutine with ``asyncio.run``.
"""

import asyncio
import ssl

import pytest
from aioice import Candidate, Connection, TransportPolicy

from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_USER

pytestmark = pytest.mark.interop
TIMEOUT_SECONDS = 30


def agent(relay_node, controlling: bool, transport: str) -> Connection:
    port = relay_node.tls_port if transport == "tls" else relay_node.port
    return Connection(
        ice_controlling=controlling,
        components=1,
        turn_server=(PRIMARY_IP, port),
        turn_username=TURN_USER,
        turn_password=TURN_PASSWORD,
        turn_transport="udp" if transport == "udp" else "tcp",
        turn_ssl=transport == "tls",
        use_ipv6=False,
        transport_policy=TransportPolicy.RELAY,
    )


def relayed(connection: Connection) -> list[Candidate]:
    return [c for c in connection.local_candidates if c.type == "relay"]


@pytest.fixture(autouse=True)
def trust_self_signed(monkeypatch):
    """Let aioice's TLS client accept the relay's generated certificate (it takes no context)."""
    original = ssl.create_default_context

    def unverified(*args, **kwargs):
        context = original(*args, **kwargs)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    monkeypatch.setattr(ssl, "create_default_context", unverified)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_gathers_a_relayed_candidate(relay_node, transport):
    """aioice's TURN client allocates on our relay and reports the relayed address."""

    async def gather():
        connection = agent(relay_node, True, transport)
        try:
            await asyncio.wait_for(connection.gather_candidates(), TIMEOUT_SECONDS)
            return relayed(connection)
        finally:
            await connection.close()

    candidates = asyncio.run(gather())
    assert len(candidates) == 1
    assert candidates[0].host == PRIMARY_IP and 49152 <= candidates[0].port <= 65535


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_ice_through_the_relay(relay_node, transport):
    """Two relay-only agents complete ICE and exchange data through our relay."""

    async def exchange():
        a, b = agent(relay_node, True, transport), agent(relay_node, False, transport)
        try:
            await asyncio.wait_for(asyncio.gather(a.gather_candidates(), b.gather_candidates()), TIMEOUT_SECONDS)
            for mine, theirs in ((a, b), (b, a)):
                for candidate in theirs.local_candidates:
                    await mine.add_remote_candidate(candidate)
                await mine.add_remote_candidate(None)
                mine.remote_username, mine.remote_password = theirs.local_username, theirs.local_password
            await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), TIMEOUT_SECONDS)
            await a.send(b"ping through the relay")
            received = await asyncio.wait_for(b.recv(), TIMEOUT_SECONDS)
            await b.send(b"pong")
            answer = await asyncio.wait_for(a.recv(), TIMEOUT_SECONDS)
            pair = a._nominated[1]
            return received, answer, pair.local_candidate.type, pair.remote_candidate.type
        finally:
            await a.close()
            await b.close()

    received, answer, local_type, remote_type = asyncio.run(exchange())
    assert (received, answer) == (b"ping through the relay", b"pong")
    assert (local_type, remote_type) == ("relay", "relay")
