"""RFC 7983 / RFC 9443 first-byte demultiplexing."""

import pytest

from rendezvous.stun.demux import Kind, classify


@pytest.mark.parametrize(
    "first, kind",
    [
        (0, Kind.STUN), (3, Kind.STUN), (4, Kind.UNKNOWN), (16, Kind.ZRTP), (19, Kind.ZRTP),
        (20, Kind.DTLS), (63, Kind.DTLS), (64, Kind.CHANNEL_DATA), (79, Kind.CHANNEL_DATA),
        (80, Kind.QUIC), (127, Kind.QUIC), (128, Kind.RTP), (191, Kind.RTP), (192, Kind.QUIC),
        (255, Kind.QUIC),
    ],
)
def test_ranges(first, kind):
    """Each boundary byte falls in the range the RFCs give it."""
    assert classify(bytes([first, 0])) is kind


def test_empty_packet():
    """An empty packet is UNKNOWN, not an IndexError."""
    assert classify(b"") is Kind.UNKNOWN
