"""The codec's one error type."""


class CodecError(ValueError):
    """Bytes that are not a well-formed STUN message, attribute or frame.

    Every decoder in ``rendezvous.stun`` raises this, and only this, for bad
    input, so a caller can drop and count the datagram (or close the stream)
    with one ``except``.
    """
