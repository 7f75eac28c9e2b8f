"""NAT-PMP (RFC 6886) wire format, sans-IO: requests to encode, responses to decode.

§3.2 external address (opcode 0), §3.3 map UDP (1) and TCP (2), §3.4
destroying a mapping (lifetime 0, suggested external port 0), §3.5 result
codes. Every request goes to the default gateway's UDP port 5351.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

PORT = 5351
VERSION = 0
RESPONSE_BIT = 128
# §3.3: what a client asks for when it has no better idea.
RECOMMENDED_LIFETIME_SECONDS = 7200


class Opcode(IntEnum):
    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class Result(IntEnum):
    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


class NatPmpCodecError(ValueError):
    """Bytes that are not a NAT-PMP response we can use."""


MAP_OPCODES = {"UDP": Opcode.MAP_UDP, "TCP": Opcode.MAP_TCP}


@dataclass(frozen=True)
class Response:
    """A decoded response. ``result`` is an int (unknown codes kept as they came);
    the address or mapping fields are None unless the result is SUCCESS."""

    opcode: int
    result: int
    epoch_seconds: int
    external_address: str | None = None
    internal_port: int | None = None
    external_port: int | None = None
    lifetime_seconds: int | None = None

    @property
    def protocol(self) -> str | None:
        return {Opcode.MAP_UDP: "UDP", Opcode.MAP_TCP: "TCP"}.get(self.opcode)


def external_address_request() -> bytes:
    """§3.2: version 0, opcode 0."""
    return struct.pack("!BB", VERSION, Opcode.EXTERNAL_ADDRESS)


def map_request(protocol: str, internal_port: int, external_port: int, lifetime_seconds: int) -> bytes:
    """§3.3: map internal_port (suggesting external_port) for lifetime_seconds;
    lifetime 0 with external port 0 destroys the mapping (§3.4)."""
    opcode = MAP_OPCODES.get(protocol.upper())
    if opcode is None:
        raise ValueError(f"protocol must be UDP or TCP, not {protocol!r}")
    if not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535:
        raise ValueError("ports must be 1-65535 (external 0-65535)")
    if not 0 <= lifetime_seconds <= 0xFFFFFFFF:
        raise ValueError("lifetime_seconds must fit 32 bits")
    return struct.pack("!BBHHHI", VERSION, opcode, 0, internal_port, external_port, lifetime_seconds)


def decode_response(data: bytes) -> Response:
    """A response (§3.2, §3.3); NatPmpCodecError when it is not one.

    A failure response only needs its 8-byte header (§3.5: the rest is
    undefined); a success must be complete.
    """
    if len(data) < 8:
        raise NatPmpCodecError(f"{len(data)} bytes is shorter than a NAT-PMP response header")
    version, op, result, epoch = struct.unpack_from("!BBHI", data)
    if version != VERSION:
        raise NatPmpCodecError(f"NAT-PMP version {version}, expected {VERSION}")
    if not op & RESPONSE_BIT:
        raise NatPmpCodecError("a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if opcode not in (Opcode.EXTERNAL_ADDRESS, Opcode.MAP_UDP, Opcode.MAP_TCP):
        raise NatPmpCodecError(f"unknown NAT-PMP opcode {opcode}")
    if result != Result.SUCCESS:
        return Response(opcode, result, epoch)
    if opcode == Opcode.EXTERNAL_ADDRESS:
        if len(data) < 12:
            raise NatPmpCodecError("external address response shorter than 12 bytes")
        return Response(opcode, result, epoch, str(ipaddress.IPv4Address(data[8:12])))
    if len(data) < 16:
        raise NatPmpCodecError("mapping response shorter than 16 bytes")
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    return Response(opcode, result, epoch, None, internal, external, lifetime)


def result_text(result: int) -> str:
    """The RFC 6886 §3.5 name of a result code."""
    try:
        return Result(result).name.replace("_", " ").lower()
    except ValueError:
        return f"unknown result {result}"
