"""ChannelData and stream framing for STUN over TCP and TLS.

RFC 8656 §12.4 (ChannelData message) and §12.5 (padding over streams),
RFC 8489 §6.2.2 (STUN over TCP/TLS: messages back to back, length-delimited).
"""

import struct

from .constants import HEADER_LENGTH
from .errors import CodecError

# RFC 8656 §12 allows 0x4000-0x4FFF; RFC 5766 allowed up to 0x7FFF and its
# clients (coturn's among them) still pick numbers there, so we accept both.
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x7FFF
_CHANNEL_HEADER = struct.Struct("!HH")


def encode_channel_data(channel: int, data: bytes, stream: bool = False) -> bytes:
    """A ChannelData frame; padded to 4 bytes when sent over a stream."""
    frame = _CHANNEL_HEADER.pack(channel, len(data)) + data
    if stream and len(data) & 3:
        frame += b"\0" * (4 - (len(data) & 3))
    return frame


def decode_channel_data(frame: bytes) -> tuple[int, bytes]:
    """Return (channel, application data) of one ChannelData datagram or frame."""
    if len(frame) < 4:
        raise CodecError("ChannelData shorter than its header")
    channel, length = _CHANNEL_HEADER.unpack_from(frame)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise CodecError(f"channel number {channel:#06x} out of range")
    if 4 + length > len(frame):
        raise CodecError("ChannelData length overruns the frame")
    return channel, frame[4 : 4 + length]


class StreamFramer:
    """Cut a byte stream, fed in arbitrary chunks, into whole frames.

    ``feed`` returns complete STUN messages and ChannelData frames (the
    latter with stream padding removed) and keeps any partial frame for the
    next call. Anything that is neither raises CodecError: the caller closes
    the connection. The buffer never holds more than one maximum-size frame.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def take(self) -> bytes:
        """Hand over (and forget) the bytes held back, when the stream stops being STUN."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        end = len(buffer)
        while end - start >= 4:
            first = buffer[start] >> 6
            length = (buffer[start + 2] << 8) | buffer[start + 3]
            if first == 0:
                if length & 3:
                    raise CodecError("STUN length is not a multiple of 4")
                size = HEADER_LENGTH + length
                if end - start < size:
                    break
                frames.append(bytes(buffer[start : start + size]))
            elif first == 1:
                size = 4 + length + (-length % 4)
                if end - start < size:
                    break
                frames.append(bytes(buffer[start : start + 4 + length]))
            else:
                raise CodecError("stream is neither STUN nor ChannelData")
            start += size
        del buffer[:start]
        return frames
