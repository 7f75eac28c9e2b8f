"""The account store: users in an SQLite file, passwords hashed with scrypt.

Schemas are versioned SQL files in ``rendezvous/node/schema``: ``vN.sql`` makes a
fresh database at version N and ``upgrade-to-vN.sql`` takes version N-1 to
N, so a store opened by newer code is upgraded in place.

A TURN server cannot verify a long-term credential from a password hash:
it needs the RFC 8489 §9.2.2 key, MD5 or SHA-256 of "user:realm:password".
So each account also keeps those two keys for the realm they were made for
(as coturn's database does); they are derived from the password, so a
password change or a realm change must go through ``set_password``.
"""

import hashlib
import hmac
import os
import re
import sqlite3
import time
from importlib import resources
from pathlib import Path

from relay.credentials import Keys
from rendezvous.stun import CodecError
from rendezvous.stun.integrity import opaque_string

SCHEMA_VERSION = 4
MAX_BUDDIES = 500
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_NAME_BYTES = 128


# Rules for accounts made over signaling or with ``txrendezvous accounts``
# (docs/PROTOCOL.md, register): lower-case names, so no two look alike.
USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
MIN_PASSWORD_CHARS = 8


class AccountError(ValueError):
    """A refused account operation; the message says why."""


class AccountPolicyError(AccountError):
    """A new name or password breaks the rules; ``code`` is bad-user-name or bad-password."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_new_account(name: str | None, password: str) -> None:
    """Raise AccountPolicyError unless name (None: not checked) and password may make a new account.

    A name is 1-32 of a-z 0-9 . _ - starting with a letter or digit; a
    password has at least MIN_PASSWORD_CHARS characters and no control
    characters (it must prepare as an RFC 8265 OpaqueString, as TURN keys need).
    """
    if name is not None and not USER_NAME.fullmatch(name):
        raise AccountPolicyError("bad-user-name", f"user name {name!r} must match {USER_NAME.pattern}: 1-32 of "
                                 "a-z0-9._- starting with a letter or digit")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountPolicyError("bad-password", f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    try:
        opaque_string(password)
    except CodecError:
        raise AccountPolicyError("bad-password", "the password contains control characters") from None


def _schema(name: str) -> str:
    return resources.files("rendezvous.node.schema").joinpath(name).read_text()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


class AccountStore:
    """Accounts in one SQLite file; also a TURN credential source."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "version" not in tables:
            self.db.executescript(_schema(f"v{SCHEMA_VERSION}.sql"))
            self.db.execute("INSERT INTO version VALUES (?)", (SCHEMA_VERSION,))
            return
        version = self.db.execute("SELECT version FROM version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise AccountError(f"{self.path} has schema v{version}, newer than this code (v{SCHEMA_VERSION})")
        while version < SCHEMA_VERSION:
            version += 1
            self.db.executescript(_schema(f"upgrade-to-v{version}.sql"))
            self.db.execute("UPDATE version SET version = ?", (version,))

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _name(name: str) -> str:
        try:
            prepared = opaque_string(name)
        except CodecError:
            raise AccountError(f"{name!r} is not a valid user name") from None
        if len(prepared.encode("utf-8")) > MAX_NAME_BYTES or ":" in prepared:
            raise AccountError(f"user name {name!r} is too long or contains ':'")
        return prepared

    def _row(self, name: str, password: str, realm: str) -> tuple:
        if not password:
            raise AccountError("the password is empty")
        salt = os.urandom(16)
        try:
            keys = Keys.from_password(name, realm, password)
        except CodecError:
            raise AccountError("the password contains characters a TURN key cannot use") from None
        return (_scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P,
                realm, keys.md5, keys.sha256)

    def add(self, name: str, password: str, realm: str) -> None:
        """Create an account; AccountError if the name is taken or invalid."""
        name = self._name(name)
        try:
            self.db.execute(
                "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, *self._row(name, password, realm), time.time()),
            )
        except sqlite3.IntegrityError:
            raise AccountError(f"user {name!r} already exists") from None

    def set_password(self, name: str, password: str, realm: str) -> None:
        """Reset a password (and the TURN keys, for realm)."""
        name = self._name(name)
        cursor = self.db.execute(
            "UPDATE accounts SET password_hash=?, salt=?, scrypt_n=?, scrypt_r=?, scrypt_p=?, "
            "turn_realm=?, turn_key_md5=?, turn_key_sha256=? WHERE name=?",
            (*self._row(name, password, realm), name),
        )
        if cursor.rowcount == 0:
            raise AccountError(f"no user {name!r}")

    def remove(self, name: str) -> None:
        """Delete an account, its buddy rows and the rows naming it; AccountError if there is none."""
        name = self._name(name)
        if self.db.execute("DELETE FROM accounts WHERE name=?", (name,)).rowcount == 0:
            raise AccountError(f"no user {name!r}")
        self.db.execute("DELETE FROM buddies WHERE buddy=?", (name,))

    def names(self) -> list[tuple[str, str, float]]:
        """(name, TURN realm, created_at) of every account, by name."""
        return list(self.db.execute("SELECT name, turn_realm, created_at FROM accounts ORDER BY name"))

    def check_password(self, name: str, password: str) -> bool:
        """Whether password is the account's, compared in constant time."""
        try:
            name = self._name(name)
        except AccountError:
            return False
        row = self.db.execute(
            "SELECT password_hash, salt, scrypt_n, scrypt_r, scrypt_p FROM accounts WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            # Spend the same work for unknown users, so timing does not tell.
            _scrypt(password, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
            return False
        stored, salt, n, r, p = row
        return hmac.compare_digest(stored, _scrypt(password, salt, n, r, p))

    def keys(self, username: str, realm: str, now: float) -> Keys | None:
        """The TURN keys of username, if they were made for realm."""
        row = self.db.execute(
            "SELECT turn_key_md5, turn_key_sha256 FROM accounts WHERE name=? AND turn_realm=?", (username, realm)
        ).fetchone()
        return Keys(row[0], row[1]) if row else None

    # -- buddy lists ---------------------------------------------------------

    def request_buddy(self, owner: str, buddy: str) -> str:
        """owner asks buddy; returns the resulting state ('requested' or 'accepted').

        If buddy had already asked owner, the two become buddies at once. A
        request to a name with no account is kept like any other, so the
        answer does not tell who exists. AccountError when owner asks
        themself or owner's list is full.
        """
        if owner == buddy:
            raise AccountError("one cannot be one's own buddy")
        count = self.db.execute("SELECT COUNT(*) FROM buddies WHERE owner=?", (owner,)).fetchone()[0]
        if count >= MAX_BUDDIES:
            raise AccountError("buddy list is full")
        reverse = self.db.execute("SELECT state FROM buddies WHERE owner=? AND buddy=?", (buddy, owner)).fetchone()
        if reverse is not None:
            return self.accept_buddy(owner, buddy)
        self.db.execute("INSERT OR IGNORE INTO buddies VALUES (?, ?, 'requested', ?)", (owner, buddy, time.time()))
        return self.db.execute("SELECT state FROM buddies WHERE owner=? AND buddy=?", (owner, buddy)).fetchone()[0]

    def accept_buddy(self, owner: str, requester: str) -> str:
        """owner accepts requester's request; AccountError without one."""
        if self.db.execute("SELECT 1 FROM buddies WHERE owner=? AND buddy=?", (requester, owner)).fetchone() is None:
            raise AccountError(f"no buddy request from {requester!r}")
        now = time.time()
        self.db.execute("BEGIN")
        try:
            self.db.execute("UPDATE buddies SET state='accepted', since=? WHERE owner=? AND buddy=?",
                            (now, requester, owner))
            self.db.execute("INSERT OR REPLACE INTO buddies VALUES (?, ?, 'accepted', ?)", (owner, requester, now))
            self.db.execute("COMMIT")
        except sqlite3.Error:
            self.db.execute("ROLLBACK")
            raise
        return "accepted"

    def remove_buddy(self, owner: str, buddy: str) -> None:
        """End the relation (or request) both ways."""
        self.db.execute("DELETE FROM buddies WHERE (owner=? AND buddy=?) OR (owner=? AND buddy=?)",
                        (owner, buddy, buddy, owner))

    def buddies(self, owner: str) -> list[tuple[str, str]]:
        """(name, state) for owner's buddies and outgoing requests, and ('name', 'incoming') requests."""
        rows = list(self.db.execute("SELECT buddy, state FROM buddies WHERE owner=? ORDER BY buddy", (owner,)))
        incoming = self.db.execute(
            "SELECT owner FROM buddies WHERE buddy=? AND state='requested' ORDER BY owner", (owner,))
        return rows + [(name, "incoming") for (name,) in incoming]

    def accepted(self, owner: str) -> list[str]:
        return [name for (name,) in self.db.execute(
            "SELECT buddy FROM buddies WHERE owner=? AND state='accepted'", (owner,))]

    def are_buddies(self, a: str, b: str) -> bool:
        return self.db.execute("SELECT 1 FROM buddies WHERE owner=? AND buddy=? AND state='accepted'",
                               (a, b)).fetchone() is not None
