"""Credentials and message integrity.

RFC 8489 §9.1 (short-term credentials), §9.2.2 (long-term key, MD5 and
SHA-256), §14.3 (USERHASH), §14.5 (MESSAGE-INTEGRITY), §14.6
(MESSAGE-INTEGRITY-SHA256), §14.7 (FINGERPRINT); RFC 8265 §4.2
(OpaqueString, applied to usernames and passwords).

Integrity is always computed over bytes: over the encoded message when
sending, over the bytes that arrived when checking. Comparisons run in
constant time.
"""

import functools
import hashlib
import hmac
import struct
import unicodedata
import zlib

from .constants import FINGERPRINT_XOR, PasswordAlgorithm
from .errors import CodecError


def opaque_string(text: str) -> str:
    """Prepare a username or password per RFC 8265 §4.2 (OpaqueString).

    Non-ASCII spaces become ASCII space, the result is NFC-normalised, and
    empty strings or control characters are refused.
    """
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in text)
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared or any(unicodedata.category(c) == "Cc" for c in prepared):
        raise CodecError("not a valid OpaqueString")
    return prepared


def short_term_key(password: str) -> bytes:
    """The HMAC key for short-term credentials (RFC 8489 §9.1.1)."""
    return opaque_string(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5,
) -> bytes:
    """The HMAC key for long-term credentials (RFC 8489 §9.2.2)."""
    material = b":".join(
        (
            opaque_string(username).encode("utf-8"),
            realm.encode("utf-8"),
            opaque_string(password).encode("utf-8"),
        )
    )
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(material).digest()
    return hashlib.md5(material).digest()


def userhash(username: str, realm: str) -> bytes:
    """The USERHASH value, SHA-256 of "username:realm" (RFC 8489 §14.4)."""
    return hashlib.sha256(
        opaque_string(username).encode("utf-8") + b":" + realm.encode("utf-8")
    ).digest()


def _with_length(raw: bytes, end: int) -> bytes:
    """raw[:end] with the header length rewritten as if the message ended at end."""
    return raw[:2] + struct.pack("!H", end - 20) + raw[4:end]


@functools.lru_cache(maxsize=256)
def _keyed(key: bytes, digest: str):
    """An HMAC keyed with key, copied for each message: keying it (hashing the RFC 2104 pads) costs
    more than the message, and a server checks and signs many messages with each long-term key."""
    return hmac.new(key, digestmod=digest)


def _hmac(key: bytes, digest: str, data: bytes) -> bytes:
    mac = _keyed(key, digest).copy()
    mac.update(data)
    return mac.digest()


def hmac_sha1(raw: bytes, mac_offset: int, key: bytes) -> bytes:
    """MESSAGE-INTEGRITY over raw[:mac_offset] (RFC 8489 §14.5)."""
    return _hmac(key, "sha1", _with_length(raw, mac_offset + 24)[:mac_offset])


def hmac_sha256(raw: bytes, mac_offset: int, key: bytes, size: int = 32) -> bytes:
    """MESSAGE-INTEGRITY-SHA256 over raw[:mac_offset], truncated to size (RFC 8489 §14.6)."""
    return _hmac(key, "sha256", _with_length(raw, mac_offset + 4 + size)[:mac_offset])[:size]


def fingerprint(raw: bytes, fingerprint_offset: int) -> int:
    """FINGERPRINT over raw[:fingerprint_offset] (RFC 8489 §14.7)."""
    data = _with_length(raw, fingerprint_offset + 8)[:fingerprint_offset]
    return zlib.crc32(data) ^ FINGERPRINT_XOR


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality."""
    return hmac.compare_digest(a, b)
