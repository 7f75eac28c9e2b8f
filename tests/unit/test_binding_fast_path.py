"""The C fast path for Binding (relay/_binding.c) answers byte for byte as the Python core does."""

import ipaddress
import struct
import sys
import zlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay.datagrams import _mmsg
from rendezvous.stun import Attr
from rendezvous.stun.binding import Addresses, BindingServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relay._mmsg is built on Linux only")

MAGIC = 0x2112A442
ATTRIBUTE_TYPES = [
    Attr.SOFTWARE, 0x8029, 0x802A, 0x8000, 0xFFFF, Attr.FINGERPRINT,  # optional (FINGERPRINT anywhere)
    Attr.USERNAME, Attr.PRIORITY, Attr.CHANGE_REQUEST, Attr.PADDING, Attr.RESPONSE_PORT,
    Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, 0x7F00, Attr.MAPPED_ADDRESS,
]


def tlv(attr_type, value, pad):
    return struct.pack("!HH", attr_type, len(value)) + value + pad[: -len(value) % 4]


@st.composite
def requests(draw):
    """Datagrams near a Binding request: mostly well-formed, some with other types, cookies,
    lengths, trailing bytes, attributes or FINGERPRINTs (valid, wrong, misplaced)."""
    msg_type = draw(st.sampled_from([0x0001] * 6 + [0x0011, 0x0101, 0x0003, 0x4001, 0x0201]))
    cookie = MAGIC if draw(st.integers(0, 5)) else draw(st.integers(0, 2**32 - 1))
    tid = draw(st.binary(min_size=12, max_size=12))
    pad = draw(st.binary(min_size=3, max_size=3))
    body = b"".join(
        tlv(draw(st.sampled_from(ATTRIBUTE_TYPES) | st.integers(0x8000, 0xFFFF)), value, pad)
        for value in draw(st.lists(st.binary(max_size=24), max_size=3))
    )
    header = struct.pack("!HHI", msg_type, len(body) + 8, cookie) + tid
    fingerprint = draw(st.sampled_from(["none", "valid", "wrong", "long"]))
    if fingerprint == "none":
        raw = header[:2] + struct.pack("!H", len(body)) + header[4:] + body
    elif fingerprint == "long":
        raw = header[:2] + struct.pack("!H", len(body) + 12) + header[4:] + body + tlv(Attr.FINGERPRINT, b"\0" * 8, pad)
    else:
        crc = zlib.crc32(header + body) ^ 0x5354554E ^ (0 if fingerprint == "valid" else 1)
        raw = header + body + struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)
    mutation = draw(st.sampled_from(["none"] * 6 + ["length", "truncate", "trail"]))
    if mutation == "length":
        raw = raw[:2] + struct.pack("!H", draw(st.integers(0, 0xFFFF))) + raw[4:]
    elif mutation == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "trail":
        raw += draw(st.binary(min_size=1, max_size=8))
    return raw


sources = st.one_of(
    st.builds(lambda ip, port: (str(ipaddress.IPv4Address(ip)), port), st.integers(0, 2**32 - 1),
              st.integers(0, 65535)),
    st.builds(lambda ip, port: (str(ipaddress.IPv6Address(ip)), port), st.integers(0, 2**128 - 1),
              st.integers(0, 65535)),
    st.builds(lambda ip, port: (f"::ffff:{ipaddress.IPv4Address(ip)}", port), st.integers(0, 2**32 - 1),
              st.integers(0, 65535)),
)


@st.composite
def servers(draw):
    """A Binding server with or without an alternate, advertised addresses and SOFTWARE, and a local endpoint."""
    alternate = draw(st.booleans())
    advertise = draw(st.sampled_from([(None, None), ("198.51.100.1", "198.51.100.2")]))
    software = draw(st.none() | st.text(max_size=40))
    if alternate:
        addresses = Addresses("192.0.2.1", 3478, "192.0.2.2", 3479, *advertise)
    else:
        addresses = Addresses(draw(st.sampled_from(["192.0.2.1", "0.0.0.0", "::", "2001:db8::1"])), 3478,
                              advertise_ip=advertise[0])
    local = draw(st.sampled_from(addresses.endpoints()))
    return BindingServer(addresses, software=software or None), local


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), sources, servers())
def test_fast_answers_are_the_python_answers(data, source, server_and_local):
    """Whatever the C fast path answers is byte for byte what the Python core answers, from the socket
    the request came to and back to its source; what it leaves, Python handles."""
    server, local = server_and_local
    answer = _mmsg.answer_binding(data, source, server.plain_answer_tail(local))
    reply = server.handle_datagram(data, source, local)
    if answer is not None:
        assert reply is not None
        assert (answer, local, source) == (reply.data, reply.source, reply.destination)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.lists(st.integers(0x8000, 0xFFFF).filter(
    lambda t: t != Attr.FINGERPRINT), max_size=3), st.booleans(), sources, servers())
def test_plain_requests_are_answered_in_c(tid, optional, fingerprint, source, server_and_local):
    """A Binding request with only comprehension-optional attributes, and a valid FINGERPRINT or none,
    never falls back to Python."""
    server, local = server_and_local
    body = b"".join(tlv(attr_type, b"v" * (attr_type % 7), b"\0\0\0") for attr_type in optional)
    header = struct.pack("!HHI", 1, len(body) + (8 if fingerprint else 0), MAGIC) + tid
    data = header + body
    if fingerprint:
        data += struct.pack("!HHI", Attr.FINGERPRINT, 4, zlib.crc32(data) ^ 0x5354554E)
    tail = server.plain_answer_tail(local)
    assume(len(tail) < 900)
    answer = _mmsg.answer_binding(data, source, tail)
    assert answer is not None and answer == server.handle_datagram(data, source, local).data


def test_an_answer_too_long_for_the_fast_path_is_left_to_python():
    """A SOFTWARE so long the answer would not fit the fast path's buffer makes it step aside, not truncate."""
    server = BindingServer(Addresses("192.0.2.1", 3478), software="x" * 1000)
    data = struct.pack("!HHI", 1, 0, MAGIC) + bytes(12)
    assert _mmsg.answer_binding(data, ("203.0.113.1", 1), server.plain_answer_tail(("192.0.2.1", 3478))) is None
    assert server.handle_datagram(data, ("203.0.113.1", 1), ("192.0.2.1", 3478)) is not None
