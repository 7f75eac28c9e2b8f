"""Stateless, expiring nonces bound to the client's address.

RFC 8489 §9.2 (long-term credentials: the server picks the nonce and
rejects a stale one with 438) and §9.2.1 (the nonce cookie "obMatJos2" plus
four base64 characters of security feature bits; we announce the password
algorithms feature). The rest is 11 base64url characters: a 24-bit issue
time (seconds, wrapping every 194 days) and a 40-bit MAC over it and the
client IP, keyed BLAKE2s (RFC 7693 §2.5: one call into hashlib, where an
HMAC object's copy, update and digest were four Python calls). The server
keeps no state per nonce, so a flood of
unauthenticated requests costs no memory, and the whole nonce is 24
characters, which keeps a 401 under 4 times the smallest Allocate
(``relay.server_auth``). The MAC only binds the nonce to the client's
address and issue time: a request still needs the user's key. A client
sends the same nonce with every request, so the last ``CHECKED`` nonces
issued here or found genuine are remembered with their address and issue
time: checking one again (the Allocate that answers a 401, and every
request after it) is a dict lookup, not a MAC and two base64 passes.
"""

import base64
import binascii
import hashlib
import hmac
import os

NONCE_COOKIE = "obMatJos2"
# Security feature set (RFC 8489 §9.2.1): bit 0, the most significant of the
# 24, is "password algorithms"; username anonymity is not offered.
FEATURES = base64.b64encode(bytes([0x80, 0, 0])).decode("ascii")
_PREFIX = NONCE_COOKIE + FEATURES
_TIME_BYTES = 3
_MAC_BYTES = 5
_TIME_MASK = (1 << 8 * _TIME_BYTES) - 1
_TOKEN_CHARS = 11  # base64 of 8 bytes, without its padding
_URLSAFE = bytes.maketrans(b"+/", b"-_")
# Nonces issued or found genuine remembered (about 150 bytes each), the oldest forgotten first.
CHECKED = 1024


class Nonces:
    """Issues and checks nonces; ``lifetime_seconds`` (under 2**24) after issue they go stale."""

    def __init__(self, lifetime_seconds: float = 600, secret: bytes | None = None) -> None:
        self.lifetime_seconds = lifetime_seconds
        self._key = hashlib.blake2s(secret or os.urandom(32)).digest()  # BLAKE2s takes keys up to 32 bytes
        self._checked: dict[str, tuple[str, int]] = {}  # genuine nonce -> (client IP, issue time)

    def _mac(self, issued: bytes, client_ip: str) -> bytes:
        return hashlib.blake2s(issued + client_ip.encode(), digest_size=_MAC_BYTES, key=self._key).digest()

    def issue(self, client_ip: str, now: float) -> str:
        issued_at = int(now) & _TIME_MASK
        issued = issued_at.to_bytes(_TIME_BYTES, "big")
        # base64url (RFC 4648 §5) without its padding, written by binascii without base64's two Python calls.
        token = binascii.b2a_base64(issued + self._mac(issued, client_ip), newline=False).translate(_URLSAFE)
        nonce = _PREFIX + token[:_TOKEN_CHARS].decode("ascii")
        self._remember(nonce, client_ip, issued_at)
        return nonce

    def check(self, nonce: str, client_ip: str, now: float) -> str:
        """'valid', 'stale' (ours but expired: answer 438) or 'invalid'."""
        checked = self._checked.get(nonce)
        if checked is not None and checked[0] == client_ip:
            return self._age(checked[1], now)
        token = nonce[len(_PREFIX):]
        if not nonce.startswith(_PREFIX) or len(token) != _TOKEN_CHARS:
            return "invalid"
        try:
            raw = base64.urlsafe_b64decode(token + "=")
        except (binascii.Error, ValueError):
            return "invalid"
        if base64.urlsafe_b64encode(raw).decode("ascii")[:_TOKEN_CHARS] != token:
            return "invalid"  # another spelling of the same bytes
        issued, mac = raw[:_TIME_BYTES], raw[_TIME_BYTES:]
        if not hmac.compare_digest(mac, self._mac(issued, client_ip)):
            return "invalid"
        issued_at = int.from_bytes(issued, "big")
        self._remember(nonce, client_ip, issued_at)
        return self._age(issued_at, now)

    def valid(self, nonce: str, client_ip: str, now: float) -> bool:
        """Whether check says 'valid', a remembered nonce (a client's every request after its first) aged
        without check's frame."""
        checked = self._checked.get(nonce)
        if checked is None or checked[0] != client_ip:
            return self.check(nonce, client_ip, now) == "valid"
        return self._age(checked[1], now) == "valid"

    def _remember(self, nonce: str, client_ip: str, issued_at: int) -> None:
        checked = self._checked
        if len(checked) >= CHECKED:
            del checked[next(iter(checked))]
        checked[nonce] = (client_ip, issued_at)

    def _age(self, issued: int, now: float) -> str:
        age = (int(now) - issued) & _TIME_MASK
        return "valid" if age <= self.lifetime_seconds else "stale"
