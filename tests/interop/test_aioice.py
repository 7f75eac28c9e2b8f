"""aioice (the ICE agent under aiortc) as a STUN client of our node, and as a parser of our bytes.

RFC 8489 Binding over UDP, TCP and TLS (§6.2), RFC 5780 CHANGE-REQUEST,
RESPONSE-ORIGIN and OTHER-ADDRESS, RFC 3489 classic responses, FINGERPRINT
(§14.7) and ERROR-CODE (§14.8), each encoded by aioice or decoded by
``aioice.stun.parse_message``, never by our own codec.

aioice speaks STUN over TCP only inside its TURN client, so the stream tests
drive ``aioice.turn.TurnClientTcpProtocol.request`` with a plain Binding: it
frames, retransmits and matches transactions exactly as it would for a TURN
server. aioice is asyncio; each test runs its coroutine with ``asyncio.run``.
"""

import asyncio
import os
import socket
import ssl

import pytest
from aioice import stun
from aioice.ice import Connection, StunProtocol
from aioice.turn import TurnClientTcpProtocol

pytestmark = pytest.mark.interop

TEST_TIMEOUT_SECONDS = 20
RECEIVE_TIMEOUT_SECONDS = 3


def run(coroutine):
    """Run a coroutine to completion on a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coroutine, TEST_TIMEOUT_SECONDS))


def binding_request(**attributes) -> stun.Message:
    return stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        attributes=attributes,
    )


async def udp_request(
    server: tuple[str, int], request: stun.Message
) -> tuple[stun.Message, tuple[str, int], tuple[str, int]]:
    """One aioice UDP transaction from 127.0.0.1: (response, who sent it, our address)."""
    loop = asyncio.get_running_loop()
    connection = Connection(ice_controlling=True, use_ipv6=False)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(connection), local_addr=("127.0.0.1", 0)
    )
    try:
        response, sender = await protocol.request(request, server)
        return response, sender, transport.get_extra_info("sockname")
    finally:
        await protocol.close()


class ClosingTcpProtocol(TurnClientTcpProtocol):
    """aioice's STUN-over-TCP client protocol, with a future that fires when the connection is gone."""

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server, username=None, password=None, lifetime=600, channel_refresh_time=500)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


async def stream_request(
    server: tuple[str, int], request: stun.Message, tls: ssl.SSLContext | None = None
) -> tuple[stun.Message, tuple[str, int]]:
    """One aioice transaction over TCP (or TLS): (response, our address)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        lambda: ClosingTcpProtocol(server),
        host=server[0],
        port=server[1],
        ssl=tls,
        server_hostname="localhost" if tls else None,
    )
    try:
        response, _ = await protocol.request(request)
        return response, transport.get_extra_info("sockname")
    finally:
        transport.close()
        await protocol.closed


def raw_exchange(server: tuple[str, int], data: bytes) -> tuple[bytes, tuple[str, int], tuple[str, int]]:
    """Send bytes from a plain UDP socket: (the bytes back, who sent them, our address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(RECEIVE_TIMEOUT_SECONDS)
        s.sendto(data, server)
        reply, sender = s.recvfrom(4096)
        return reply, sender, s.getsockname()


# -- aioice as a client --------------------------------------------------------


def test_ice_gathering_gets_a_server_reflexive_candidate(node):
    """aioice's candidate gathering on 127.0.0.1 learns its srflx candidate from our node."""

    async def gather():
        connection = Connection(
            ice_controlling=True, stun_server=(node.ip, node.port), use_ipv6=False
        )
        try:
            return await connection.get_component_candidates(1, ["127.0.0.1"])
        finally:
            await connection.close()

    candidates = run(gather())
    host = [c for c in candidates if c.type == "host"]
    srflx = [c for c in candidates if c.type == "srflx"]
    assert len(host) == 1 and len(srflx) == 1, candidates
    assert (srflx[0].host, srflx[0].port) == (host[0].host, host[0].port)
    assert (srflx[0].related_address, srflx[0].related_port) == (host[0].host, host[0].port)


def test_udp_transaction_decodes_every_address(node):
    """An aioice UDP transaction gets XOR-MAPPED, MAPPED, RESPONSE-ORIGIN and OTHER-ADDRESS right."""
    response, sender, local = run(udp_request((node.ip, node.port), binding_request()))
    assert sender == (node.ip, node.port)
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    assert response.attributes["MAPPED-ADDRESS"] == local
    assert response.attributes["RESPONSE-ORIGIN"] == (node.ip, node.port)
    assert response.attributes["OTHER-ADDRESS"] == (node.alt_ip, node.alt_port)


@pytest.mark.parametrize(
    "flags, expected",
    [(0x4, ("alt_ip", "port")), (0x2, ("ip", "alt_port")), (0x6, ("alt_ip", "alt_port"))],
    ids=["change-ip", "change-port", "change-both"],
)
def test_udp_change_request_from_aioice(node, flags, expected):
    """aioice's CHANGE-REQUEST is answered from the changed endpoint, which RESPONSE-ORIGIN names."""
    changed = (getattr(node, expected[0]), getattr(node, expected[1]))
    request = binding_request(**{"CHANGE-REQUEST": flags})
    response, sender, local = run(udp_request((node.ip, node.port), request))
    assert sender == changed
    assert response.attributes["RESPONSE-ORIGIN"] == changed
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    # OTHER-ADDRESS is relative to the endpoint the request reached.
    assert response.attributes["OTHER-ADDRESS"] == (node.alt_ip, node.alt_port)


def test_change_request_without_alternate_fails_the_transaction_with_420(plain_node):
    """On a node without --alt-ip aioice's CHANGE-REQUEST transaction fails with 420."""
    request = binding_request(**{"CHANGE-REQUEST": 0x6})
    with pytest.raises(stun.TransactionFailed) as failed:
        run(udp_request((plain_node.ip, plain_node.port), request))
    assert failed.value.response.error_code == 420


@pytest.mark.parametrize("which", ["primary", "alternate-ip", "alternate-port"])
def test_tcp_transaction(node, which):
    """aioice's STUN-over-TCP framing gets the connection's mapping on each of our TCP listeners."""
    server = {
        "primary": (node.ip, node.port),
        "alternate-ip": (node.alt_ip, node.port),
        "alternate-port": (node.ip, node.alt_port),
    }[which]
    response, local = run(stream_request(server, binding_request()))
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    assert response.attributes["RESPONSE-ORIGIN"] == server


def test_tls_transaction_verifies_our_certificate(node):
    """aioice over TLS, verifying the node's self-signed certificate, gets its mapping."""
    tls = ssl.create_default_context(cafile=str(node.state_dir / "tls" / "self-signed.pem"))
    response, local = run(stream_request((node.ip, node.tls_port), binding_request(), tls))
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    assert response.attributes["RESPONSE-ORIGIN"] == (node.ip, node.tls_port)


def test_change_request_over_tcp_fails_with_400(node):
    """CHANGE-REQUEST over TCP fails aioice's transaction with 400 and a reason it can decode."""
    request = binding_request(**{"CHANGE-REQUEST": 0x6})
    with pytest.raises(stun.TransactionFailed) as failed:
        run(stream_request((node.ip, node.port), request))
    code, reason = failed.value.response.attributes["ERROR-CODE"]
    assert code == 400
    assert "UDP" in reason


# -- aioice as a parser of our bytes --------------------------------------------


def test_fingerprint_in_the_request_gets_one_that_aioice_verifies(node):
    """A request with FINGERPRINT is answered with a FINGERPRINT that aioice's parser checks."""
    request = binding_request()
    request.add_fingerprint()
    data, sender, local = raw_exchange((node.ip, node.port), bytes(request))
    response = stun.parse_message(data)  # raises ValueError on a bad FINGERPRINT
    assert "FINGERPRINT" in response.attributes
    assert data[-8:-4] == b"\x80\x28\x00\x04"
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local


def test_ice_connectivity_check_shape_is_answered(node):
    """An ICE check (USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, FINGERPRINT) is answered."""
    request = binding_request(
        **{"USERNAME": "abcd:efgh", "PRIORITY": 1853824767, "ICE-CONTROLLING": 0x0123456789ABCDEF}
    )
    request.add_message_integrity(b"the-remote-ice-password")
    data, sender, local = raw_exchange((node.ip, node.port), bytes(request))
    response = stun.parse_message(data)
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    assert "FINGERPRINT" in response.attributes


def test_change_request_response_bytes_parse(node):
    """The bytes of a CHANGE-REQUEST answer, read from a raw socket, parse in aioice with the changed origin."""
    request = binding_request(**{"CHANGE-REQUEST": 0x6})
    data, sender, local = raw_exchange((node.ip, node.port), bytes(request))
    response = stun.parse_message(data)
    assert sender == (node.alt_ip, node.alt_port)
    assert response.message_method == stun.Method.BINDING
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    assert response.attributes["RESPONSE-ORIGIN"] == (node.alt_ip, node.alt_port)
    assert response.attributes["OTHER-ADDRESS"] == (node.alt_ip, node.alt_port)


def test_classic_response_bytes_parse(node):
    """A cookieless RFC 3489 request's answer parses in aioice: MAPPED, SOURCE and CHANGED-ADDRESS, no XOR."""
    transaction_id = os.urandom(16)
    data, sender, local = raw_exchange((node.ip, node.port), b"\x00\x01\x00\x00" + transaction_id)
    assert data[4:20] == transaction_id
    response = stun.parse_message(data)
    assert response.message_class == stun.Class.RESPONSE
    assert "XOR-MAPPED-ADDRESS" not in response.attributes
    assert response.attributes["MAPPED-ADDRESS"] == local
    assert response.attributes["SOURCE-ADDRESS"] == (node.ip, node.port)
    assert response.attributes["CHANGED-ADDRESS"] == (node.alt_ip, node.alt_port)
