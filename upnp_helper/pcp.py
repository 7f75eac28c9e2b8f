"""PCP (RFC 6887) wire format, sans-IO: ANNOUNCE and MAP requests, responses decoded.

§7.1 request header, §7.2 response header, §7.3 options (skipped, length
checked), §7.4 result codes, §11.1 MAP payload, §14.1 ANNOUNCE. Addresses
are 128-bit; IPv4 ones are IPv4-mapped (``::ffff:a.b.c.d``, §5). A PCP
server that only speaks NAT-PMP answers with a NAT-PMP "unsupported
version" (RFC 6887 §9): ``decode_response`` raises ``NotPcp`` for it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

PORT = 5351
VERSION = 2
RESPONSE_BIT = 0x80
HEADER_BYTES = 24
MAP_PAYLOAD_BYTES = 36
NONCE_BYTES = 12
MAX_MESSAGE_BYTES = 1100  # §7


class Opcode(IntEnum):
    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class Result(IntEnum):
    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


# IANA protocol numbers (§11.1: 0 means all protocols).
PROTOCOL_NUMBERS = {"UDP": 17, "TCP": 6}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}


class PcpCodecError(ValueError):
    """Bytes that are not a PCP response we can use."""


class NotPcp(PcpCodecError):
    """The answer is NAT-PMP (version 0): the server does not speak PCP."""


@dataclass(frozen=True)
class Response:
    """A decoded response; ``nonce`` and the port/address fields only for MAP."""

    opcode: int
    result: int
    lifetime_seconds: int
    epoch_seconds: int
    nonce: bytes | None = None
    protocol: str | None = None
    internal_port: int | None = None
    external_port: int | None = None
    external_address: str | None = None


def _address_bytes(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed


def _address_text(packed: bytes) -> str:
    ip = ipaddress.IPv6Address(packed)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def _header(opcode: Opcode, lifetime_seconds: int, client_ip: str) -> bytes:
    if not 0 <= lifetime_seconds <= 0xFFFFFFFF:
        raise ValueError("lifetime_seconds must fit 32 bits")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime_seconds) + _address_bytes(client_ip)


def announce_request(client_ip: str) -> bytes:
    """§14.1: ANNOUNCE, lifetime 0 (answers tell whether the server speaks PCP)."""
    return _header(Opcode.ANNOUNCE, 0, client_ip)


def map_request(client_ip: str, nonce: bytes, protocol: str, internal_port: int, external_port: int,
                lifetime_seconds: int, external_ip: str = "0.0.0.0") -> bytes:
    """§11.1: MAP internal_port (suggesting external_ip:external_port, 0 for any)
    for lifetime_seconds; lifetime 0 deletes the mapping of this nonce (§15)."""
    number = PROTOCOL_NUMBERS.get(protocol.upper())
    if number is None:
        raise ValueError(f"protocol must be UDP or TCP, not {protocol!r}")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a mapping nonce is {NONCE_BYTES} bytes")
    if not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535:
        raise ValueError("ports must be 1-65535 (external 0-65535)")
    payload = nonce + struct.pack("!B3xHH", number, internal_port, external_port) + _address_bytes(external_ip)
    return _header(Opcode.MAP, lifetime_seconds, client_ip) + payload


def decode_response(data: bytes) -> Response:
    """A response (§7.2, §11.1 for MAP); PcpCodecError (NotPcp for NAT-PMP) otherwise.

    Options after the payload are walked to check their lengths, then ignored.
    """
    if len(data) >= 2 and data[0] == 0:
        raise NotPcp("the server answered in NAT-PMP (version 0): no PCP")
    if len(data) < HEADER_BYTES:
        raise PcpCodecError(f"{len(data)} bytes is shorter than a PCP response header")
    if len(data) > MAX_MESSAGE_BYTES or len(data) % 4:
        raise PcpCodecError(f"a PCP message is a multiple of 4 bytes up to {MAX_MESSAGE_BYTES}, not {len(data)}")
    version, op, _, result, lifetime, epoch = struct.unpack_from("!BBBBII", data)
    if version != VERSION:
        raise PcpCodecError(f"PCP version {version}, expected {VERSION}")
    if not op & RESPONSE_BIT:
        raise PcpCodecError("a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if opcode == Opcode.ANNOUNCE:
        _walk_options(data, HEADER_BYTES)
        return Response(opcode, result, lifetime, epoch)
    if opcode != Opcode.MAP:
        raise PcpCodecError(f"unexpected PCP opcode {opcode}")
    if len(data) < HEADER_BYTES + MAP_PAYLOAD_BYTES:
        # §7.2: an error response may come without the payload.
        if result == Result.SUCCESS:
            raise PcpCodecError("MAP response without its payload")
        return Response(opcode, result, lifetime, epoch)
    at = HEADER_BYTES
    nonce = data[at:at + NONCE_BYTES]
    number, internal, external = struct.unpack_from("!B3xHH", data, at + NONCE_BYTES)
    address = _address_text(data[at + 20:at + 36])
    _walk_options(data, HEADER_BYTES + MAP_PAYLOAD_BYTES)
    return Response(opcode, result, lifetime, epoch, nonce, PROTOCOL_NAMES.get(number, str(number)), internal,
                    external, address)


def _walk_options(data: bytes, at: int) -> None:
    """§7.3: code, reserved, length, then length bytes padded to 4."""
    while at < len(data):
        if at + 4 > len(data):
            raise PcpCodecError("truncated PCP option header")
        length = struct.unpack_from("!H", data, at + 2)[0]
        at += 4 + (length + 3) // 4 * 4
        if at > len(data):
            raise PcpCodecError("a PCP option runs past the end of the message")


def result_text(result: int) -> str:
    """The RFC 6887 §7.4 name of a result code."""
    try:
        return Result(result).name
    except ValueError:
        return f"unknown result {result}"
