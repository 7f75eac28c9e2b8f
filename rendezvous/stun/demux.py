"""First-byte demultiplexing of packets sharing one port.

RFC 7983 §7, as updated by RFC 9443 §3 (QUIC): the first byte of a packet
tells STUN, ZRTP, DTLS, TURN ChannelData, RTP/RTCP and QUIC apart.
"""

from enum import Enum


class Kind(Enum):
    STUN = "stun"
    ZRTP = "zrtp"
    DTLS = "dtls"
    CHANNEL_DATA = "channel-data"
    QUIC = "quic"
    RTP = "rtp"
    UNKNOWN = "unknown"


def _table() -> tuple[Kind, ...]:
    table = [Kind.UNKNOWN] * 256
    for ranges, kind in (
        ((0, 3), Kind.STUN),
        ((16, 19), Kind.ZRTP),
        ((20, 63), Kind.DTLS),
        ((64, 79), Kind.CHANNEL_DATA),
        ((80, 127), Kind.QUIC),
        ((128, 191), Kind.RTP),
        ((192, 255), Kind.QUIC),
    ):
        low, high = ranges
        for byte in range(low, high + 1):
            table[byte] = kind
    return tuple(table)


_KINDS = _table()


def classify(packet: bytes) -> Kind:
    """The kind of a packet by its first byte; UNKNOWN for an empty one."""
    return _KINDS[packet[0]] if packet else Kind.UNKNOWN
