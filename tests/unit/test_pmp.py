"""NAT-PMP (RFC 6886) and PCP (RFC 6887) codecs, the retransmission schedule and
the default-gateway reader, on bytes (no sockets); the codecs fuzzed."""

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upnp_helper import natpmp, pcp
from upnp_helper.pmp import MAX_SENDS, default_gateway, send_times

ports = st.integers(1, 65535)
lifetimes = st.integers(0, 0xFFFFFFFF)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


# -- NAT-PMP ------------------------------------------------------------------


def test_natpmp_requests_have_the_rfc_layout():
    """§3.2 is two bytes; §3.3 is version, opcode, reserved, ports and lifetime in 12 bytes."""
    assert natpmp.external_address_request() == b"\x00\x00"
    assert natpmp.map_request("udp", 40000, 40001, 7200) == bytes.fromhex("00010000" "9c40" "9c41" "00001c20")
    assert natpmp.map_request("TCP", 5000, 0, 0)[:2] == b"\x00\x02"


def test_natpmp_map_request_rejects_bad_fields():
    """A bad protocol, port or lifetime is a ValueError, not a packet."""
    for args in (("sctp", 1, 1, 1), ("UDP", 0, 1, 1), ("UDP", 1, 65536, 1), ("UDP", 1, 1, -1)):
        with pytest.raises(ValueError):
            natpmp.map_request(*args)


@given(st.integers(0, 2**32 - 1), ipv4)
def test_natpmp_external_address_response_decodes(epoch, address):
    """A success to opcode 0 yields the epoch and the external address."""
    data = struct.pack("!BBHI", 0, 128, 0, epoch) + ipaddress.IPv4Address(address).packed
    response = natpmp.decode_response(data)
    assert (response.opcode, response.result, response.epoch_seconds, response.external_address) == (
        0, 0, epoch, address)


@given(st.sampled_from([1, 2]), ports, st.integers(0, 65535), lifetimes)
def test_natpmp_map_response_decodes(opcode, internal, external, lifetime):
    """A success to a map yields its protocol, ports and granted lifetime."""
    data = struct.pack("!BBHIHHI", 0, 128 + opcode, 0, 7, internal, external, lifetime)
    response = natpmp.decode_response(data)
    assert response.protocol == ("UDP" if opcode == 1 else "TCP")
    assert (response.internal_port, response.external_port, response.lifetime_seconds) == (
        internal, external, lifetime)


def test_natpmp_failure_needs_only_the_header():
    """A failure (§3.5) decodes from its 8-byte header, with its result code."""
    response = natpmp.decode_response(struct.pack("!BBHI", 0, 129, 2, 5))
    assert response.result == natpmp.Result.NOT_AUTHORIZED and response.external_port is None
    assert natpmp.result_text(2) == "not authorized" and natpmp.result_text(99) == "unknown result 99"


@pytest.mark.parametrize("data", [b"", b"\x00\x80", struct.pack("!BBHI", 1, 128, 0, 0) + bytes(4),
                                  struct.pack("!BBHI", 0, 0, 0, 0) + bytes(4),
                                  struct.pack("!BBHI", 0, 128 + 9, 0, 0) + bytes(4),
                                  struct.pack("!BBHI", 0, 128, 0, 0), struct.pack("!BBHI", 0, 129, 0, 0)])
def test_natpmp_bad_responses_are_codec_errors(data):
    """Short, wrong-version, request, unknown-opcode and truncated answers are refused."""
    with pytest.raises(natpmp.NatPmpCodecError):
        natpmp.decode_response(data)


@given(st.binary(max_size=64))
def test_natpmp_decoder_takes_any_bytes(data):
    """Any datagram decodes or raises NatPmpCodecError, nothing else."""
    try:
        natpmp.decode_response(data)
    except natpmp.NatPmpCodecError:
        pass


# -- PCP ----------------------------------------------------------------------

NONCE = bytes(range(12))


def test_pcp_announce_has_the_rfc_header():
    """§7.1: version 2, opcode 0, lifetime 0, then the client's IPv4-mapped address."""
    data = pcp.announce_request("192.168.1.2")
    assert len(data) == 24
    assert data[:8] == bytes.fromhex("0200000000000000")
    assert data[8:] == bytes(10) + b"\xff\xff" + bytes([192, 168, 1, 2])


def test_pcp_map_request_has_the_rfc_payload():
    """§11.1: nonce, protocol, reserved, internal and suggested external port, suggested address."""
    data = pcp.map_request("192.168.1.2", NONCE, "udp", 40000, 40001, 600)
    assert len(data) == 60 and len(data) % 4 == 0
    assert data[1] == pcp.Opcode.MAP and struct.unpack_from("!I", data, 4)[0] == 600
    assert data[24:36] == NONCE
    assert data[36] == 17 and data[37:40] == bytes(3)
    assert struct.unpack_from("!HH", data, 40) == (40000, 40001)
    assert data[44:] == bytes(10) + b"\xff\xff" + bytes(4)


def test_pcp_map_request_rejects_bad_fields():
    """A bad protocol, nonce, port or lifetime is a ValueError."""
    for kwargs in ({"protocol": "icmp"}, {"nonce": b"short"}, {"internal_port": 0}, {"lifetime_seconds": 2**32}):
        args = {"client_ip": "192.168.1.2", "nonce": NONCE, "protocol": "UDP", "internal_port": 1,
                "external_port": 1, "lifetime_seconds": 1, **kwargs}
        with pytest.raises(ValueError):
            pcp.map_request(**args)


def _pcp_response(opcode, result, lifetime, epoch, payload=b"", options=b""):
    return struct.pack("!BBBBII", 2, 0x80 | opcode, 0, result, lifetime, epoch) + bytes(12) + payload + options


@given(st.sampled_from(["UDP", "TCP"]), ports, ports, lifetimes, ipv4)
def test_pcp_map_response_decodes(protocol, internal, external, lifetime, address):
    """A MAP success yields nonce, protocol, ports, address and lifetime; options are skipped."""
    payload = (NONCE + struct.pack("!B3xHH", pcp.PROTOCOL_NUMBERS[protocol], internal, external)
               + bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(address).packed)
    option = struct.pack("!BBH", 0x80, 0, 5) + bytes(8)  # 5 bytes of data padded to 8
    response = pcp.decode_response(_pcp_response(1, 0, lifetime, 9, payload, option))
    assert (response.nonce, response.protocol, response.internal_port, response.external_port,
            response.external_address, response.lifetime_seconds) == (
        NONCE, protocol, internal, external, address, lifetime)


def test_pcp_announce_and_error_responses_decode():
    """ANNOUNCE success carries the epoch; a MAP error may come without its payload."""
    assert pcp.decode_response(_pcp_response(0, 0, 0, 1234)).epoch_seconds == 1234
    error = pcp.decode_response(_pcp_response(1, pcp.Result.NOT_AUTHORIZED, 30, 1))
    assert error.result == pcp.Result.NOT_AUTHORIZED and error.nonce is None
    assert pcp.result_text(2) == "NOT_AUTHORIZED"


def test_pcp_answer_in_natpmp_is_not_pcp():
    """A NAT-PMP "unsupported version" answer (RFC 6887 §9) raises NotPcp."""
    with pytest.raises(pcp.NotPcp):
        pcp.decode_response(struct.pack("!BBHI", 0, 128, 1, 0))


@pytest.mark.parametrize("data", [
    bytes(23), _pcp_response(0, 0, 0, 0) + b"\x00", _pcp_response(0, 0, 0, 0)[:1] + b"\x00" + bytes(22),
    b"\x03" + _pcp_response(0, 0, 0, 0)[1:], _pcp_response(1, 0, 0, 0), _pcp_response(2, 0, 0, 0),
    _pcp_response(0, 0, 0, 0, options=struct.pack("!BBH", 1, 0, 40)), bytes([2, 0x80]) + bytes(1200),
])
def test_pcp_bad_responses_are_codec_errors(data):
    """Short, unaligned, request, wrong version, MAP success without payload, PEER,
    an option past the end and oversize messages are refused."""
    with pytest.raises(pcp.PcpCodecError):
        pcp.decode_response(data)


@given(st.binary(max_size=200))
def test_pcp_decoder_takes_any_bytes(data):
    """Any datagram decodes or raises PcpCodecError, nothing else."""
    try:
        pcp.decode_response(data)
    except pcp.PcpCodecError:
        pass


@given(st.binary(max_size=160).map(lambda b: b[: len(b) // 4 * 4]))
def test_pcp_decoder_takes_any_aligned_response(tail):
    """Any 4-aligned body behind a valid response header decodes or raises PcpCodecError."""
    try:
        pcp.decode_response(_pcp_response(1, 0, 0, 0) + tail)
    except pcp.PcpCodecError:
        pass


# -- the client's sans-IO parts -----------------------------------------------


def test_send_times_double_from_250_ms_within_the_timeout():
    """RFC 6886 §3.1: sends at 0, 0.25, 0.75, 1.75 s ... before the timeout, at most nine."""
    assert send_times(2) == [0, 0.25, 0.75, 1.75]
    assert send_times(0.1) == [0]
    assert len(send_times(1000)) == MAX_SENDS


ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
)


def test_default_gateway_comes_from_the_default_route():
    """The default route's gateway, in /proc/net/route's little-endian hex, is 192.168.1.1."""
    assert default_gateway(ROUTES) == "192.168.1.1"
    assert default_gateway(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[1]) is None
    assert default_gateway("header\nbroken line\n") is None
