"""Typed values of the non-address attributes.

Each pair of functions turns one attribute's value into Python and back,
raising CodecError on a malformed value. Sections: RFC 8489 §14.3-§14.14,
RFC 5780 §7.2 and §7.5, RFC 8656 §18, RFC 6062 §6.2, RFC 8445 §16.1,
RFC 7982 §3 (TRANSACTION-TRANSMIT-COUNTER).
"""

import struct

from .constants import CHANGE_IP, CHANGE_PORT, AddressFamily
from .errors import CodecError

# Bounds on text attributes, RFC 8489 §14.3 (USERNAME), §14.9 (REALM),
# §14.10 (NONCE), §14.14 (SOFTWARE): 128 characters of at most 6 bytes.
USERNAME_MAX_BYTES = 512
TEXT_MAX_BYTES = 763


def decode_text(value: bytes, max_bytes: int = TEXT_MAX_BYTES) -> str:
    """A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN)."""
    if len(value) > max_bytes:
        raise CodecError("text attribute too long")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError("text attribute is not UTF-8") from e


def encode_uint32(number: int) -> bytes:
    """LIFETIME, PRIORITY, CONNECTION-ID, CACHE-TIMEOUT: one 32-bit integer."""
    return struct.pack("!I", number)


def decode_uint32(value: bytes) -> int:
    if len(value) != 4:
        raise CodecError("32-bit attribute is not 4 bytes")
    return struct.unpack("!I", value)[0]


def encode_uint64(number: int) -> bytes:
    """ICE-CONTROLLED / ICE-CONTROLLING tie-breaker (RFC 8445 §16.1)."""
    return struct.pack("!Q", number)


def decode_uint64(value: bytes) -> int:
    if len(value) != 8:
        raise CodecError("64-bit attribute is not 8 bytes")
    return struct.unpack("!Q", value)[0]


def encode_uint16(number: int) -> bytes:
    """RESPONSE-PORT, CHANNEL-NUMBER: 16 bits then 16 reserved bits."""
    return struct.pack("!HH", number, 0)


def decode_uint16(value: bytes) -> int:
    if len(value) != 4:
        raise CodecError("16-bit attribute is not 4 bytes")
    return struct.unpack("!H", value[:2])[0]


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE: class and number, then a UTF-8 reason (RFC 8489 §14.8)."""
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} is outside 300-699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")[:763]


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise CodecError("ERROR-CODE shorter than 4 bytes")
    cls, number = value[2] & 0x07, value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise CodecError("ERROR-CODE out of range")
    return cls * 100 + number, decode_text(value[4:])


def encode_unknown_attributes(types: list[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES: a list of 16-bit types (RFC 8489 §14.13)."""
    return struct.pack(f"!{len(types)}H", *types)


def decode_unknown_attributes(value: bytes) -> list[int]:
    if len(value) & 1:
        raise CodecError("UNKNOWN-ATTRIBUTES has an odd length")
    return list(struct.unpack(f"!{len(value) // 2}H", value))


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    """CHANGE-REQUEST flags (RFC 5780 §7.2)."""
    return struct.pack("!I", (CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0))


def decode_change_request(value: bytes) -> tuple[bool, bool]:
    """Return (change_ip, change_port)."""
    flags = decode_uint32(value)
    return bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT)


def encode_requested_transport(protocol: int) -> bytes:
    """REQUESTED-TRANSPORT: IP protocol number, 17 for UDP (RFC 8656 §18.7)."""
    return struct.pack("!B3x", protocol)


def decode_requested_transport(value: bytes) -> int:
    if len(value) != 4:
        raise CodecError("REQUESTED-TRANSPORT is not 4 bytes")
    return value[0]


def encode_address_family(family: AddressFamily) -> bytes:
    """REQUESTED- and ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.8, §18.11)."""
    return struct.pack("!B3x", family)


def decode_address_family(value: bytes) -> AddressFamily:
    if len(value) != 4:
        raise CodecError("address family attribute is not 4 bytes")
    try:
        return AddressFamily(value[0])
    except ValueError as e:
        raise CodecError(f"unknown address family {value[0]:#x}") from e


def encode_even_port(reserve_next: bool) -> bytes:
    """EVEN-PORT with its R bit (RFC 8656 §18.6)."""
    return b"\x80" if reserve_next else b"\x00"


def decode_even_port(value: bytes) -> bool:
    if len(value) != 1:
        raise CodecError("EVEN-PORT is not 1 byte")
    return bool(value[0] & 0x80)


def decode_reservation_token(value: bytes) -> bytes:
    """RESERVATION-TOKEN: 8 opaque bytes (RFC 8656 §18.9)."""
    if len(value) != 8:
        raise CodecError("RESERVATION-TOKEN is not 8 bytes")
    return value


def encode_address_error_code(family: AddressFamily, code: int, reason: str) -> bytes:
    """ADDRESS-ERROR-CODE: family, then an ERROR-CODE body (RFC 8656 §18.12)."""
    return bytes([family]) + encode_error_code(code, reason)[1:]


def decode_address_error_code(value: bytes) -> tuple[AddressFamily, int, str]:
    if len(value) < 4:
        raise CodecError("ADDRESS-ERROR-CODE shorter than 4 bytes")
    family = decode_address_family(value[:1] + b"\0\0\0")
    code, reason = decode_error_code(b"\0" + value[1:])
    return family, code, reason


def encode_icmp(icmp_type: int, icmp_code: int, error_data: int = 0) -> bytes:
    """ICMP: type, code and error data of a relayed ICMP packet (RFC 8656 §18.13)."""
    return struct.pack("!HBBI", 0, icmp_type & 0x7F, icmp_code, error_data)


def decode_icmp(value: bytes) -> tuple[int, int, int]:
    if len(value) != 8:
        raise CodecError("ICMP is not 8 bytes")
    _, icmp_type, icmp_code, data = struct.unpack("!HBBI", value)
    return icmp_type & 0x7F, icmp_code, data


def encode_password_algorithms(algorithms: list[tuple[int, bytes]]) -> bytes:
    """PASSWORD-ALGORITHMS: (algorithm, parameters) pairs (RFC 8489 §14.11)."""
    parts = []
    for algorithm, params in algorithms:
        parts.append(struct.pack("!HH", algorithm, len(params)) + params)
        parts.append(b"\0" * (-len(params) % 4))
    return b"".join(parts)


def decode_password_algorithms(value: bytes) -> list[tuple[int, bytes]]:
    result = []
    offset = 0
    while offset < len(value):
        if len(value) - offset < 4:
            raise CodecError("truncated PASSWORD-ALGORITHMS entry")
        algorithm, size = struct.unpack_from("!HH", value, offset)
        params = value[offset + 4 : offset + 4 + size]
        if len(params) != size:
            raise CodecError("PASSWORD-ALGORITHMS parameters overrun")
        result.append((algorithm, params))
        offset += 4 + size + (-size % 4)
    return result


def encode_password_algorithm(algorithm: int, params: bytes = b"") -> bytes:
    """PASSWORD-ALGORITHM: one (algorithm, parameters) pair (RFC 8489 §14.12)."""
    return struct.pack("!HH", algorithm, len(params)) + params


def decode_password_algorithm(value: bytes) -> tuple[int, bytes]:
    if len(value) < 4:
        raise CodecError("PASSWORD-ALGORITHM shorter than 4 bytes")
    algorithm, size = struct.unpack_from("!HH", value)
    if len(value) != 4 + size:
        raise CodecError("PASSWORD-ALGORITHM length mismatch")
    return algorithm, value[4:]


def encode_transmit_counter(request: int, response: int) -> bytes:
    """TRANSACTION-TRANSMIT-COUNTER (RFC 7982 §3.1)."""
    return struct.pack("!HBB", 0, request, response)


def decode_transmit_counter(value: bytes) -> tuple[int, int]:
    if len(value) != 4:
        raise CodecError("TRANSACTION-TRANSMIT-COUNTER is not 4 bytes")
    return value[2], value[3]
