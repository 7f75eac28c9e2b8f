"""Typed attribute values: each encodes, decodes back, and rejects bad bytes."""

import pytest

from rendezvous.stun import AddressFamily, CodecError
from rendezvous.stun import attributes as a


@pytest.mark.parametrize(
    "encode, decode, value",
    [
        (a.encode_uint32, a.decode_uint32, 600),
        (a.encode_uint64, a.decode_uint64, 0x932FF9B151263B36),
        (a.encode_uint16, a.decode_uint16, 0x4001),
        (lambda v: a.encode_error_code(*v), a.decode_error_code, (420, "Unknown Attribute")),
        (a.encode_unknown_attributes, a.decode_unknown_attributes, [0x0003, 0x7FFF, 0x0027]),
        (lambda v: a.encode_change_request(*v), a.decode_change_request, (True, False)),
        (lambda v: a.encode_change_request(*v), a.decode_change_request, (False, True)),
        (a.encode_requested_transport, a.decode_requested_transport, 17),
        (a.encode_address_family, a.decode_address_family, AddressFamily.IPV6),
        (a.encode_even_port, a.decode_even_port, True),
        (lambda v: a.encode_address_error_code(*v), a.decode_address_error_code,
         (AddressFamily.IPV6, 440, "Address Family not Supported")),
        (lambda v: a.encode_icmp(*v), a.decode_icmp, (3, 13, 1400)),
        (a.encode_password_algorithms, a.decode_password_algorithms, [(1, b""), (2, b"abc")]),
        (lambda v: a.encode_password_algorithm(*v), a.decode_password_algorithm, (2, b"")),
        (lambda v: a.encode_transmit_counter(*v), a.decode_transmit_counter, (3, 1)),
    ],
)
def test_round_trip(encode, decode, value):
    """Decoding an encoded value gives the value back."""
    assert decode(encode(value)) == value


def test_change_request_bits():
    """CHANGE-REQUEST puts change-IP at 0x4 and change-port at 0x2 (RFC 5780 §7.2)."""
    assert a.encode_change_request(True, True) == b"\0\0\0\x06"


def test_error_code_layout():
    """ERROR-CODE 438 is class 4, number 38, then the reason."""
    assert a.encode_error_code(438, "Stale Nonce") == b"\0\0\x04\x26Stale Nonce"
    with pytest.raises(ValueError):
        a.encode_error_code(200, "no")


@pytest.mark.parametrize(
    "decode, raw",
    [
        (a.decode_uint32, b"\0\0\0"),
        (a.decode_uint64, b"\0" * 4),
        (a.decode_uint16, b"\0\0"),
        (a.decode_error_code, b"\0\0\x04"),
        (a.decode_error_code, b"\0\0\x02\x00"),
        (a.decode_error_code, b"\0\0\x04\x64"),
        (a.decode_error_code, b"\0\0\x04\x00\xff"),
        (a.decode_unknown_attributes, b"\0\0\0"),
        (a.decode_requested_transport, b"\x11"),
        (a.decode_address_family, b"\x03\0\0\0"),
        (a.decode_even_port, b"\x80\0"),
        (a.decode_reservation_token, b"1234567"),
        (a.decode_address_error_code, b"\x01\0"),
        (a.decode_icmp, b"\0" * 7),
        (a.decode_password_algorithms, b"\0\x01\0\x08abc"),
        (a.decode_password_algorithms, b"\0\x01"),
        (a.decode_password_algorithm, b"\0\x01\0\x01"),
        (a.decode_transmit_counter, b"\0"),
        (a.decode_text, b"\xff\xfe"),
        (a.decode_text, b"a" * 764),
    ],
)
def test_bad_values_raise_codec_error(decode, raw):
    """A malformed value raises CodecError."""
    with pytest.raises(CodecError):
        decode(raw)
