"""Key derivation (RFC 8489 §9) and OpaqueString preparation (RFC 8265)."""

import hashlib

import pytest

from rendezvous.stun import CodecError, PasswordAlgorithm
from rendezvous.stun.integrity import long_term_key, opaque_string, short_term_key, userhash


def test_long_term_md5_key():
    """The MD5 key is MD5("user:realm:pass") (RFC 8489 §9.2.2)."""
    assert long_term_key("user", "realm", "pass") == hashlib.md5(b"user:realm:pass").digest()


def test_long_term_sha256_key():
    """The SHA-256 key is SHA-256("user:realm:pass") (RFC 8489 §9.2.2)."""
    key = long_term_key("user", "realm", "pass", PasswordAlgorithm.SHA256)
    assert key == hashlib.sha256(b"user:realm:pass").digest()


def test_short_term_key_is_prepared_password():
    """The short-term key is the OpaqueString-prepared password."""
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"


def test_opaque_string_maps_spaces_and_normalises():
    """Non-ASCII spaces become ASCII and text is NFC-normalised."""
    assert opaque_string("a\u00a0b") == "a b"
    assert opaque_string("e\u0301") == "\u00e9"


@pytest.mark.parametrize("bad", ["", "a\x00b", "tab\there"])
def test_opaque_string_refuses_controls_and_empty(bad):
    """Empty strings and control characters are refused."""
    with pytest.raises(CodecError):
        opaque_string(bad)


def test_userhash():
    """USERHASH is SHA-256 of "username:realm" (RFC 8489 §14.4)."""
    assert userhash("user", "realm") == hashlib.sha256(b"user:realm").digest()
