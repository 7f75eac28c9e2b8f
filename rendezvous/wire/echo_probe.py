"""The echo service's probe format, spoken by the service (node) and nat-check (peer).

A probe is any payload followed by a 28-byte trailer: ``MAGIC`` and 20 zero
bytes. The answer is the payload exactly as received followed by ``MAGIC``,
the address family (4 or 6), a zero byte, the source port and the source
address (16 bytes, IPv4 in the first 4): as long as the probe, never longer.
"""

import ipaddress
import struct

MAGIC = b"\x00TXECHO\x00"
TRAILER_BYTES = len(MAGIC) + 20
PROBE_TRAILER = MAGIC + bytes(20)
MAX_PROBE_BYTES = 4096


class EchoCodecError(ValueError):
    """Not an echo answer."""


def probe(payload: bytes) -> bytes:
    """The datagram (or stream) that asks the echo service about payload."""
    return payload + PROBE_TRAILER


def reply(payload: bytes, source: tuple[str, int]) -> bytes:
    """payload followed by the trailer naming source (the same length as the probe)."""
    ip = ipaddress.ip_address(source[0])
    return payload + MAGIC + struct.pack("!BBH", ip.version, 0, source[1]) + ip.packed.ljust(16, b"\0")


def decode_reply(data: bytes) -> tuple[bytes, tuple[str, int]]:
    """(payload as the service received it, our address as it saw it); EchoCodecError otherwise."""
    if len(data) < TRAILER_BYTES or data[-TRAILER_BYTES:-20] != MAGIC:
        raise EchoCodecError("no echo trailer")
    version, _, port = struct.unpack_from("!BBH", data, len(data) - 20)
    packed = data[-16:]
    if version == 4:
        address = str(ipaddress.IPv4Address(packed[:4]))
    elif version == 6:
        address = str(ipaddress.IPv6Address(packed))
    else:
        raise EchoCodecError(f"address family {version}")
    return data[:-TRAILER_BYTES], (address, port)
