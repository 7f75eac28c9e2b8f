"""The message codec: header, type bits, attributes, trailers, addresses."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun.addresses import decode_xor_address, encode_xor_address, pack_ip
from rendezvous.stun.constants import MAGIC_COOKIE
from rendezvous.stun.message import message_type, split_type


@pytest.mark.parametrize(
    "method, cls, expected",
    [
        (Method.BINDING, Class.REQUEST, 0x0001),
        (Method.BINDING, Class.INDICATION, 0x0011),
        (Method.BINDING, Class.SUCCESS, 0x0101),
        (Method.BINDING, Class.ERROR, 0x0111),
        (Method.ALLOCATE, Class.REQUEST, 0x0003),
        (Method.SEND, Class.INDICATION, 0x0016),
        (Method.DATA, Class.INDICATION, 0x0017),
        (Method.CHANNEL_BIND, Class.ERROR, 0x0119),
        (0xFFF, Class.ERROR, 0x3FFF),
    ],
)
def test_message_type_bits(method, cls, expected):
    """Method and class interleave into the type as RFC 8489 §5 draws it."""
    assert message_type(method, cls) == expected
    assert split_type(expected) == (method, cls)


def test_round_trip_keeps_order_and_repeats():
    """Attributes come back in wire order, repeats included."""
    msg = Message(Method.CREATE_PERMISSION, Class.REQUEST)
    msg.add_address(Attr.XOR_PEER_ADDRESS, ("198.51.100.1", 1))
    msg.add(Attr.SOFTWARE, b"x")
    msg.add_address(Attr.XOR_PEER_ADDRESS, ("2001:db8::7", 65535))
    decoded = Message.decode(msg.encode())
    assert [t for t, _ in decoded.attributes] == [
        Attr.XOR_PEER_ADDRESS, Attr.SOFTWARE, Attr.XOR_PEER_ADDRESS]
    assert decoded.addresses(Attr.XOR_PEER_ADDRESS) == [("198.51.100.1", 1), ("2001:db8::7", 65535)]
    assert decoded.get(Attr.SOFTWARE) == b"x"
    assert decoded.get(Attr.REALM) is None
    assert decoded.transaction_id == msg.transaction_id


def test_padding_is_zero_and_length_counts_it():
    """A 1-byte value is padded with three zero bytes and the length includes them."""
    raw = Message(Method.BINDING, Class.REQUEST, b"\0" * 12).add(Attr.SOFTWARE, b"a").encode()
    assert struct.unpack("!H", raw[2:4])[0] == 8
    assert raw[20:] == b"\x80\x22\x00\x01a\x00\x00\x00"


def test_plain_and_xor_addresses():
    """MAPPED-ADDRESS is stored in clear, XOR-MAPPED-ADDRESS XOR-ed with the cookie."""
    msg = Message(Method.BINDING, Class.SUCCESS, bytes(range(12)))
    msg.add_address(Attr.MAPPED_ADDRESS, ("192.0.2.1", 32853))
    msg.add_address(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))
    plain, xored = msg.get(Attr.MAPPED_ADDRESS), msg.get(Attr.XOR_MAPPED_ADDRESS)
    assert plain == bytes([0, 1]) + struct.pack("!H", 32853) + bytes([192, 0, 2, 1])
    assert xored == bytes.fromhex("0001a147e112a643")
    decoded = Message.decode(msg.encode())
    assert decoded.address(Attr.MAPPED_ADDRESS) == decoded.address(Attr.XOR_MAPPED_ADDRESS)


def test_classic_header_keeps_128_bit_transaction_id():
    """An RFC 3489 message (no cookie) keeps all 16 transaction id bytes."""
    tid = bytes(range(16))
    raw = struct.pack("!HH", 0x0001, 0) + tid
    msg = Message.decode(raw)
    assert msg.classic
    assert msg.transaction_id == tid
    assert msg.encode() == raw


def test_attributes_after_integrity_are_ignored():
    """Only -SHA256 and FINGERPRINT count after MESSAGE-INTEGRITY (RFC 8489 §14.5)."""
    raw = Message(Method.BINDING, Class.REQUEST).encode(integrity_key=b"k")
    extra = struct.pack("!HH", Attr.SOFTWARE, 4) + b"evil"
    raw = raw[:2] + struct.pack("!H", len(raw) - 20 + 8) + raw[4:] + extra
    msg = Message.decode(raw)
    assert Attr.SOFTWARE not in msg
    assert msg.check_integrity(b"k")


def test_integrity_checked_over_arrived_bytes():
    """Flipping one byte before MESSAGE-INTEGRITY fails the check."""
    raw = bytearray(Message(Method.BINDING, Class.REQUEST).add(Attr.USERNAME, b"u").encode(
        integrity_key=b"k", integrity_sha256_key=b"k", fingerprint=True))
    assert Message.decode(bytes(raw)).check_integrity(b"k")
    raw[24] ^= 1
    assert not Message.decode(bytes(raw)).check_integrity(b"k")
    assert Message.decode(bytes(raw)).check_fingerprint() is False


def test_sha1_integrity_alone_and_unsigned():
    """MESSAGE-INTEGRITY alone verifies; a message with neither does not."""
    signed = Message.decode(Message(Method.BINDING, Class.REQUEST).encode(integrity_key=b"k"))
    assert signed.check_integrity(b"k") and not signed.check_integrity(b"j")
    assert not Message.decode(Message(Method.BINDING, Class.REQUEST).encode()).check_integrity(b"k")
    assert not Message(Method.BINDING, Class.REQUEST).check_integrity(b"k")


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "shorter"),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\0" * 11, "shorter"),
        (b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + b"\0" * 12, "first two bits"),
        (b"\x00\x01\x00\x02\x21\x12\xa4\x42" + b"\0" * 12 + b"\0\0", "multiple of 4"),
        (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"\0" * 12, "does not match"),
        (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"\0" * 12 + b"\x80\x22\x00\x08", "overruns"),
        (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\0" * 12 + b"\x80\x22\x00\x05abcd", "overruns"),
    ],
)
def test_malformed_headers_raise_codec_error(raw, why):
    """Each malformation raises CodecError naming the problem."""
    with pytest.raises(CodecError, match=why):
        Message.decode(raw)


def test_nothing_may_follow_fingerprint():
    """An attribute after FINGERPRINT makes the message malformed."""
    raw = Message(Method.BINDING, Class.REQUEST).encode(fingerprint=True)
    raw = raw[:2] + struct.pack("!H", len(raw) - 20 + 4) + raw[4:] + b"\x80\x22\x00\x00"
    with pytest.raises(CodecError, match="after FINGERPRINT"):
        Message.decode(raw)


def test_bad_address_family_raises():
    """An address attribute with family 3 is a CodecError, not a crash."""
    msg = Message(Method.BINDING, Class.SUCCESS).add(Attr.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01abcd")
    with pytest.raises(CodecError):
        Message.decode(msg.encode()).address(Attr.XOR_MAPPED_ADDRESS)


def test_cookie_constant():
    """Encoded messages carry the magic cookie at bytes 4-8."""
    assert Message(Method.BINDING, Class.REQUEST).encode()[4:8] == MAGIC_COOKIE.to_bytes(4, "big")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789.x: %abf\n", max_size=20),
                 st.ip_addresses().map(str), st.ip_addresses(v=4).map(lambda a: str(a) + "0")))
def test_pack_ip_reads_what_ipaddress_reads(text):
    """pack_ip (inet_pton for IPv4) accepts exactly the literals ipaddress accepts, to the same bytes."""
    try:
        expected = ipaddress.ip_address(text).packed
    except ValueError:
        with pytest.raises(CodecError):
            pack_ip(text)
    else:
        assert pack_ip(text) == expected


@given(st.ip_addresses(), st.integers(0, 65535), st.binary(min_size=12, max_size=12))
def test_xor_addresses_round_trip(address, port, transaction_id):
    """An XOR-MAPPED-ADDRESS value decodes to the address it was encoded from, XOR-ed on the wire (RFC 8489 §14.2)."""
    value = encode_xor_address((str(address), port), transaction_id)
    assert decode_xor_address(value, transaction_id) == (str(address), port)
    assert value[4:] != address.packed
