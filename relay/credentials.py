"""Where long-term credentials come from (RFC 8489 §9.2).

A credential source maps a username (and realm) to ``Keys``: the MD5 and
SHA-256 long-term keys and, for time-limited credentials, when they expire.
Sources: static users (``--user NAME:PASSWORD``), REST-API ephemeral
credentials (``--auth-secret``: username ``expiry:userid``, password
base64(HMAC-SHA1(secret, username)), as in coturn and the IETF
draft-uberti-behave-turn-rest), and any object with the same ``keys``
method (the SQLite account store is one).
"""

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from rendezvous.stun import CodecError, PasswordAlgorithm
from rendezvous.stun.integrity import long_term_key, userhash


@dataclass(frozen=True)
class Keys:
    """Long-term keys of one user in one realm."""

    md5: bytes
    sha256: bytes
    expires_at: float | None = None

    @classmethod
    def from_password(cls, username: str, realm: str, password: str, expires_at: float | None = None) -> "Keys":
        return cls(
            long_term_key(username, realm, password, PasswordAlgorithm.MD5),
            long_term_key(username, realm, password, PasswordAlgorithm.SHA256),
            expires_at,
        )

    def for_algorithm(self, algorithm: int) -> bytes:
        return self.sha256 if algorithm == PasswordAlgorithm.SHA256 else self.md5


class CredentialSource(Protocol):
    def keys(self, username: str, realm: str, now: float) -> Keys | None:
        """The user's keys, or None for an unknown or expired user."""


class StaticUsers:
    """Users given on the command line or in the config file."""

    def __init__(self, users: dict[str, str], realm: str) -> None:
        self._keys = {}
        self._by_hash = {}
        for name, password in users.items():
            try:
                self._keys[name] = Keys.from_password(name, realm, password)
                self._by_hash[userhash(name, realm)] = name
            except CodecError as e:
                raise ValueError(f"user {name!r}: {e}") from None
        self.realm = realm

    def keys(self, username: str, realm: str, now: float) -> Keys | None:
        return self._keys.get(username) if realm == self.realm else None

    def username_for_hash(self, value: bytes) -> str | None:
        """The user whose USERHASH (RFC 8489 §14.4) this is."""
        return self._by_hash.get(value)


class RestSecrets:
    """Ephemeral credentials signed with one of several shared secrets.

    Several secrets are accepted at once so an operator can rotate them.
    A client signs every request with the same credential, so the keys of
    the last ``DERIVED`` usernames are kept rather than derived again (two
    HMACs and two hashes per secret).
    """

    DERIVED = 1024

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [s.encode("utf-8") for s in secrets]
        self._derive = functools.lru_cache(maxsize=self.DERIVED)(self._derive_keys)

    @staticmethod
    def password(secret: str, username: str) -> str:
        """The password a REST API hands out for username."""
        digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")

    def candidates(self, username: str, realm: str, now: float) -> list[Keys]:
        """Keys for each secret; empty when the username is expired or not ephemeral."""
        expiry_text = username.split(":", 1)[0]
        if not expiry_text.isdigit():
            return []
        expires_at = float(expiry_text)
        if expires_at <= now:
            return []
        return list(self._derive(username, realm, expires_at))

    def _derive_keys(self, username: str, realm: str, expires_at: float) -> tuple[Keys, ...]:
        return tuple(
            Keys.from_password(username, realm, self.password(s.decode("utf-8"), username), expires_at)
            for s in self._secrets
        )


class Credentials:
    """All credential sources of a relay, asked in order."""

    def __init__(self, sources: Iterable[CredentialSource] = (), rest: RestSecrets | None = None) -> None:
        self.sources = list(sources)
        self.rest = rest

    def candidates(self, username: str, realm: str, now: float) -> list[Keys]:
        """Every key set that could verify this username's request."""
        for source in self.sources:
            keys = source.keys(username, realm, now)
            if keys is not None:
                return [keys]
        return self.rest.candidates(username, realm, now) if self.rest else []

    def username_for_hash(self, value: bytes) -> str | None:
        for source in self.sources:
            lookup = getattr(source, "username_for_hash", None)
            name = lookup(value) if lookup else None
            if name is not None:
                return name
        return None
