"""Stream framing of STUN and ChannelData over TCP/TLS, and ChannelData itself."""

import pytest

from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun.framing import StreamFramer, decode_channel_data, encode_channel_data


def _stream():
    first = Message(Method.BINDING, Class.REQUEST).add(Attr.SOFTWARE, b"abc").encode()
    channel = encode_channel_data(0x4001, b"hello", stream=True)
    second = Message(Method.BINDING, Class.INDICATION).encode(fingerprint=True)
    return first, channel, second


def test_channel_data_padding_only_on_streams():
    """ChannelData is padded to 4 bytes over streams, not over UDP (RFC 8656 §12.5)."""
    assert encode_channel_data(0x4000, b"abcde") == b"\x40\x00\x00\x05abcde"
    assert encode_channel_data(0x4000, b"abcde", stream=True) == b"\x40\x00\x00\x05abcde\0\0\0"
    assert decode_channel_data(b"\x40\x00\x00\x05abcde\0\0\0") == (0x4000, b"abcde")


@pytest.mark.parametrize("frame", [b"\x40\x00\x00", b"\x80\x00\x00\x00", b"\x40\x00\x00\x09abc"])
def test_bad_channel_data(frame):
    """Short, out-of-range or overrunning ChannelData raises CodecError."""
    with pytest.raises(CodecError):
        decode_channel_data(frame)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_frames_survive_any_chunking(chunk):
    """Frames come out whole whatever sizes the stream arrives in."""
    first, channel, second = _stream()
    data = first + channel + second
    framer = StreamFramer()
    frames = []
    for i in range(0, len(data), chunk):
        frames += framer.feed(data[i : i + chunk])
    assert frames == [first, channel[:9], second]
    assert framer.buffered == 0


def test_partial_frame_is_held():
    """A partial frame is kept until the rest arrives."""
    first, _, _ = _stream()
    framer = StreamFramer()
    assert framer.feed(first[:-1]) == []
    assert framer.buffered == len(first) - 1
    assert framer.feed(first[-1:]) == [first]


@pytest.mark.parametrize(
    "data", [b"\x80\x00\x00\x00", b"\x16\x03\x01\x02\x00", b"\x00\x01\x00\x03" + b"\0" * 16, b"\xc0\x00\x00\x00"]
)
def test_garbage_stream_raises(data):
    """Bytes that are neither STUN nor ChannelData raise CodecError."""
    with pytest.raises(CodecError):
        StreamFramer().feed(data)
