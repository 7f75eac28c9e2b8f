"""Stateless, expiring nonces bound to the client's address.

RFC 8489 §9.2 (long-term credentials: the server picks the nonce and
rejects a stale one with 438) and §9.2.1 (the nonce cookie "obMatJos2" plus
four base64 characters of security feature bits; we announce the password
algorithms feature). The rest of the nonce is an issue time and an HMAC over
it and the client IP, so the server keeps no state per nonce and a flood of
unauthenticated requests costs no memory.
"""

import base64
import hashlib
import hmac
import os
import struct

NONCE_COOKIE = "obMatJos2"
# Security feature set (RFC 8489 §9.2.1): bit 0, the most significant of the
# 24, is "password algorithms"; username anonymity is not offered.
FEATURES = base64.b64encode(bytes([0x80, 0, 0])).decode("ascii")
_MAC_BYTES = 12


class Nonces:
    """Issues and checks nonces; ``lifetime_seconds`` after issue they go stale."""

    def __init__(self, lifetime_seconds: float = 600, secret: bytes | None = None) -> None:
        self.lifetime_seconds = lifetime_seconds
        self._secret = secret or os.urandom(32)

    def _mac(self, issued: bytes, client_ip: str) -> bytes:
        return hmac.new(self._secret, issued + client_ip.encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, client_ip: str, now: float) -> str:
        issued = struct.pack("!I", int(now) & 0xFFFFFFFF)
        token = base64.urlsafe_b64encode(issued + self._mac(issued, client_ip)).decode("ascii")
        return NONCE_COOKIE + FEATURES + token

    def check(self, nonce: str, client_ip: str, now: float) -> str:
        """'valid', 'stale' (ours but expired: answer 438) or 'invalid'."""
        prefix = NONCE_COOKIE + FEATURES
        if not nonce.startswith(prefix):
            return "invalid"
        try:
            raw = base64.urlsafe_b64decode(nonce[len(prefix):].encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return "invalid"
        if len(raw) != 4 + _MAC_BYTES:
            return "invalid"
        issued, mac = raw[:4], raw[4:]
        if not hmac.compare_digest(mac, self._mac(issued, client_ip)):
            return "invalid"
        age = (int(now) - struct.unpack("!I", issued)[0]) & 0xFFFFFFFF
        return "valid" if age <= self.lifetime_seconds else "stale"
