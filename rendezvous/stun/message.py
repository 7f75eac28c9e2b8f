"""The STUN message: header, ordered attributes, and the bytes it came from.

RFC 8489 §5 (header and message type), §14 (attribute TLV layout and
padding), §6.3 (what a receiver checks); RFC 3489 §11.1 (classic header: no
magic cookie, 128-bit transaction id).

A decoded message keeps the exact bytes it arrived as and where each
attribute started, so integrity and fingerprint are verified over what
arrived and never over a re-encoding.
"""

import os
import struct

from . import integrity
from .addresses import (
    PLAIN_ADDRESS_TYPES,
    XOR_ADDRESS_TYPES,
    Address,
    decode_address,
    decode_xor_address,
    encode_address,
    encode_xor_address,
)
from .constants import (
    HEADER_LENGTH,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    TRANSACTION_ID_LENGTH,
    Attr,
    Class,
)
from .errors import CodecError

_HEADER = struct.Struct("!HHI12s")
_TLV = struct.Struct("!HH")
# Plain ints, for hashed membership tests on the decode and encode loops.
_TRAILERS = frozenset(int(a) for a in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT))
_FINGERPRINT = int(Attr.FINGERPRINT)
_CLASSES = tuple(Class(bits) for bits in range(4))  # indexed by the C1/C0 bits: no Enum call per message


def message_type(method: int, cls: int) -> int:
    """Interleave method and class bits into the 14-bit type (RFC 8489 §5)."""
    return (
        (method & 0x0F80) << 2
        | (method & 0x0070) << 1
        | (method & 0x000F)
        | (cls & 0b10) << 7
        | (cls & 0b01) << 4
    )


def split_type(msg_type: int) -> tuple[int, Class]:
    """Return (method, class) of a 14-bit message type."""
    method = (msg_type & 0x3E00) >> 2 | (msg_type & 0x00E0) >> 1 | (msg_type & 0x000F)
    return method, _CLASSES[(msg_type & 0x0100) >> 7 | (msg_type & 0x0010) >> 4]


def new_transaction_id() -> bytes:
    """A fresh, uniformly random 96-bit transaction id (RFC 8489 §6)."""
    return os.urandom(TRANSACTION_ID_LENGTH)


class Message:
    """A STUN message: method, class, transaction id and ordered attributes.

    ``attributes`` is a list of ``(type, value)`` pairs in wire order; a type
    may repeat. Attributes that follow MESSAGE-INTEGRITY (other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are ignored on decode, as
    RFC 8489 §14.5 requires. ``raw`` holds the bytes a decoded message came
    from. ``cookie`` is the magic cookie, or for an RFC 3489 classic
    message the first 32 bits of its 128-bit transaction id.
    """

    __slots__ = ("method", "cls", "transaction_id", "attributes", "cookie", "raw", "_offsets")

    def __init__(
        self,
        method: int,
        cls: Class,
        transaction_id: bytes | None = None,
        attributes: list[tuple[int, bytes]] | None = None,
        cookie: int = MAGIC_COOKIE,
    ) -> None:
        self.method = method
        self.cls = cls
        self.transaction_id = transaction_id or new_transaction_id()
        self.attributes = attributes if attributes is not None else []
        self.cookie = cookie
        self.raw: bytes | None = None
        self._offsets: dict[int, int] = {}

    def __repr__(self) -> str:
        names = ", ".join(_name(t) for t, _ in self.attributes)
        return f"<Message method={self.method:#x} {self.cls.name} [{names}]>"

    @property
    def classic(self) -> bool:
        """True for an RFC 3489 message (no magic cookie)."""
        return self.cookie != MAGIC_COOKIE

    # -- attributes -----------------------------------------------------

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of this type, or None."""
        for t, value in self.attributes:
            if t == attr_type:
                return value
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        """The values of every attribute of this type, in wire order."""
        return [value for t, value in self.attributes if t == attr_type]

    def __contains__(self, attr_type: int) -> bool:
        for t, _ in self.attributes:
            if t == attr_type:
                return True
        return False

    def add(self, attr_type: int, value: bytes) -> "Message":
        """Append an attribute; returns self so calls chain."""
        if len(value) > 0xFFFF:
            raise CodecError("attribute value longer than 65535 bytes")
        self.attributes.append((attr_type, value))
        return self

    def add_address(self, attr_type: int, address: Address) -> "Message":
        """Append an address attribute, XOR-ed when its type says so."""
        if attr_type in XOR_ADDRESS_TYPES:
            return self.add(attr_type, encode_xor_address(address, self.transaction_id))
        return self.add(attr_type, encode_address(address))

    def address(self, attr_type: int) -> Address | None:
        """Decode the first address attribute of this type, or None."""
        return next(iter(self.addresses(attr_type)), None)

    def addresses(self, attr_type: int) -> list[Address]:
        """Decode every address attribute of this type (XOR-PEER-ADDRESS repeats)."""
        if attr_type in XOR_ADDRESS_TYPES:
            return [decode_xor_address(v, self.transaction_id) for v in self.get_all(attr_type)]
        if attr_type in PLAIN_ADDRESS_TYPES:
            return [decode_address(v) for v in self.get_all(attr_type)]
        raise ValueError(f"{attr_type:#x} is not an address attribute")

    # -- codec ----------------------------------------------------------

    @classmethod
    def decode(cls, data: bytes) -> "Message":
        """Decode exactly one message; raise CodecError if it is malformed."""
        size = len(data)
        if size < HEADER_LENGTH:
            raise CodecError("shorter than a STUN header")
        msg_type, length, cookie, tid = _HEADER.unpack_from(data)
        if msg_type & 0xC000:
            raise CodecError("first two bits are not zero")
        if length & 3:
            raise CodecError("length is not a multiple of 4")
        if length + HEADER_LENGTH != size:
            raise CodecError("length field does not match the data")
        method, klass = split_type(msg_type)
        if cookie != MAGIC_COOKIE:
            tid = data[4:20]
        msg = cls(method, klass, tid, [], cookie)
        msg.raw = bytes(data)
        attributes = msg.attributes
        offsets = msg._offsets
        offset = HEADER_LENGTH
        seen_integrity = False
        while offset < size:
            if size - offset < 4:
                raise CodecError("truncated attribute header")
            attr_type, attr_length = _TLV.unpack_from(data, offset)
            end = offset + 4 + attr_length
            if end > size:
                raise CodecError(f"attribute {_name(attr_type)} overruns the message")
            if _FINGERPRINT in offsets:
                raise CodecError("attribute after FINGERPRINT")
            if attr_type in _TRAILERS:
                offsets.setdefault(attr_type, offset)
                seen_integrity = seen_integrity or attr_type != _FINGERPRINT
                attributes.append((attr_type, data[offset + 4 : end]))
            elif not seen_integrity:
                attributes.append((attr_type, data[offset + 4 : end]))
            # size is a multiple of 4, so the padding always fits.
            offset = end + (-attr_length & 3)
        return msg

    def encode(
        self,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """Encode, appending MESSAGE-INTEGRITY, -SHA256 and FINGERPRINT as asked.

        Trailer attributes already in ``attributes`` are dropped and
        recomputed, so a decoded message can be re-signed.
        """
        parts = []
        for attr_type, value in self.attributes:
            if attr_type in _TRAILERS:
                continue
            n = len(value)
            parts.append(_TLV.pack(attr_type, n))
            parts.append(value)
            if n & 3:
                parts.append(b"\0" * (4 - (n & 3)))
        body = b"".join(parts)
        tid = self.transaction_id if self.classic else MAGIC_COOKIE_BYTES + self.transaction_id
        raw = struct.pack("!HH", message_type(self.method, self.cls), len(body)) + tid + body
        if integrity_key is not None:
            mac = integrity.hmac_sha1(raw, len(raw), integrity_key)
            raw = _append(raw, Attr.MESSAGE_INTEGRITY, mac)
        if integrity_sha256_key is not None:
            mac = integrity.hmac_sha256(raw, len(raw), integrity_sha256_key)
            raw = _append(raw, Attr.MESSAGE_INTEGRITY_SHA256, mac)
        if fingerprint:
            crc = integrity.fingerprint(raw, len(raw))
            raw = _append(raw, Attr.FINGERPRINT, struct.pack("!I", crc))
        return raw

    # -- verification over the bytes that arrived -------------------------

    def check_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY.

        False when the message carries neither, was not decoded, or does not
        verify (RFC 8489 §9.2.4: prefer the SHA-256 variant).
        """
        raw = self.raw
        if raw is None:
            return False
        offset = self._offsets.get(Attr.MESSAGE_INTEGRITY_SHA256)
        if offset is not None:
            size = struct.unpack_from("!H", raw, offset + 2)[0]
            if size < 16 or size > 32 or size & 3:
                return False
            expected = raw[offset + 4 : offset + 4 + size]
            return integrity.same(integrity.hmac_sha256(raw, offset, key, size), expected)
        offset = self._offsets.get(Attr.MESSAGE_INTEGRITY)
        if offset is None:
            return False
        if struct.unpack_from("!H", raw, offset + 2)[0] != 20:
            return False
        expected = raw[offset + 4 : offset + 24]
        return integrity.same(integrity.hmac_sha1(raw, offset, key), expected)

    def check_fingerprint(self) -> bool | None:
        """None when there is no FINGERPRINT; else whether it matches."""
        offset = self._offsets.get(Attr.FINGERPRINT)
        if offset is None or self.raw is None:
            return None
        value = self.raw[offset + 4 : offset + 8]
        if len(value) != 4 or struct.unpack_from("!H", self.raw, offset + 2)[0] != 4:
            return False
        return integrity.same(struct.pack("!I", integrity.fingerprint(self.raw, offset)), value)


def _append(raw: bytes, attr_type: int, value: bytes) -> bytes:
    """Append one attribute to an encoded message and fix its length field."""
    raw = raw + _TLV.pack(attr_type, len(value)) + value
    return raw[:2] + struct.pack("!H", len(raw) - HEADER_LENGTH) + raw[4:]


def _name(attr_type: int) -> str:
    try:
        return Attr(attr_type).name
    except ValueError:
        return f"{attr_type:#06x}"
