"""Signaling frames: a 4-byte header and a UTF-8 JSON object (docs/PROTOCOL.md).

    +--------+---------+-----------------+------------------------+
    |  0xF5  | version |  length (16 bit) |  JSON object (length)  |
    +--------+---------+-----------------+------------------------+

The first byte 0xF5 tells a signaling stream apart from STUN (first two bits
00), TURN ChannelData (01), TLS (0x16) and HTTP (ASCII) on a shared port.
Frames are bounded (``MAX_FRAME_BYTES``); sans-IO like the STUN codec.
"""

import json
import struct
from collections.abc import Iterable

MAGIC = 0xF5
VERSION = 1
MAX_FRAME_BYTES = 16 * 1024
_HEADER = struct.Struct("!BBH")


class FrameError(ValueError):
    """A frame that cannot be read; the stream cannot continue when ``fatal``."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


def encode(message: dict) -> bytes:
    """One frame carrying message."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError("signaling frame too large")
    return _HEADER.pack(MAGIC, VERSION, len(body)) + body


def fitting(entries: Iterable[dict], budget: int) -> tuple[list[dict], bool]:
    """The leading entries whose JSON, as ``encode`` writes it (a comma each), fits in budget bytes; and
    whether any were left out."""
    kept, size = [], 0
    for entry in entries:
        size += len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1
        if size > budget:
            return kept, True
        kept.append(entry)
    return kept, False


def is_signaling(first_byte: int) -> bool:
    return first_byte == MAGIC


class FrameReader:
    """Cuts a byte stream into decoded JSON objects, never buffering more than one frame.

    ``feed`` returns, in stream order, a dict for each frame, a FrameError
    for a frame that was cut out but is not a JSON object (the stream goes
    on), and last a fatal FrameError when a bad header follows: the stream
    is out of step, so the frames before it are handed over and nothing
    after it is read (later feeds return that error again).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fatal: FrameError | None = None

    def feed(self, data: bytes) -> list:
        if self._fatal is not None:
            return [self._fatal]
        buffer = self._buffer
        buffer += data
        out = []
        while len(buffer) >= 4:
            magic, version, length = _HEADER.unpack_from(buffer)
            if magic != MAGIC:
                self._fatal = FrameError("not a signaling frame", fatal=True)
            elif version != VERSION:
                self._fatal = FrameError(f"unsupported signaling version {version}", fatal=True)
            elif length > MAX_FRAME_BYTES:
                self._fatal = FrameError(f"frame too large ({length} bytes, at most {MAX_FRAME_BYTES})", fatal=True)
            if self._fatal is not None:
                buffer.clear()
                out.append(self._fatal)
                break
            if len(buffer) < 4 + length:
                break
            body = bytes(buffer[4 : 4 + length])
            del buffer[: 4 + length]
            out.append(_decode(body))
        return out


def _decode(body: bytes):
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return FrameError("frame is not UTF-8 JSON")
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        return FrameError("frame is not a JSON object with an op")
    return message
