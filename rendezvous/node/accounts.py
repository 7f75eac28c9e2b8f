"""The account store: users and buddy lists in SQLite or PostgreSQL, passwords hashed with scrypt.

``AccountStore`` holds the logic once, over a ``Database`` back end: an
SQLite file (``accounts_sqlite``, the embedded default) or a PostgreSQL
server that several nodes share (``accounts_postgres``). Its methods block;
the node calls them in a thread pool (``accounts_async``).

Schemas are versioned SQL files, ``rendezvous/node/schema`` for SQLite and
``schema/postgresql`` for PostgreSQL: ``vN.sql`` makes a fresh database at
version N and ``upgrade-to-vN.sql`` takes version N-1 to N, so a store
opened by newer code is upgraded in place, inside one transaction.

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
import time
from contextlib import AbstractContextManager
from importlib import resources
from pathlib import Path
from typing import Protocol

from relay.credentials import Keys
from rendezvous.stun import CodecError
from rendezvous.stun.integrity import opaque_string

SCHEMA_VERSION = 5
MAX_BUDDIES = 500
BUDDY_PAGE = 50  # buddy-list entries per answer: 50 of at most ~200 bytes fit a 16 KB frame
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_NAME_BYTES = 128


# Rules for accounts made over signaling or with ``txrendezvous accounts``
# (docs/PROTOCOL.md, register): lower-case names, so no two look alike.
USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
MIN_PASSWORD_CHARS = 8


class AccountError(ValueError):
    """A refused account operation; the message says why."""


class StoreUnavailable(Exception):
    """The database cannot be reached or failed; the operation may work later."""


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


class Cursor(Protocol):
    """A DB-API cursor whose statements use ``?`` placeholders, in either back end."""

    rowcount: int

    def execute(self, sql: str, params: tuple = ()) -> "Cursor": ...

    def fetchone(self) -> tuple | None: ...

    def fetchall(self) -> list[tuple]: ...


class Database(Protocol):
    """One connection to an account database (used by one thread at a time)."""

    schema_package: str  # where its vN.sql and upgrade-to-vN.sql files are

    def transaction(self, write: bool = True) -> AbstractContextManager[Cursor]:
        """A cursor in a transaction, committed on leaving, rolled back on an error; StoreUnavailable when
        the database cannot be reached (the next transaction connects again). ``write=False`` for reads
        only: they then never wait for a writer (SQLite's WAL readers)."""

    def schema_version(self, cursor: Cursor) -> int | None:
        """The version in the version table; None when there are no tables yet (take the schema lock first)."""

    def run_script(self, cursor: Cursor, sql: str) -> None:
        """Run a schema file's statements in the transaction."""

    def close(self) -> None: ...


def open_database(database: "str | Path") -> Database:
    """``postgresql://...`` (or ``postgres://``) is a PostgreSQL server; anything else an SQLite file path."""
    if str(database).startswith(("postgresql://", "postgres://")):
        from rendezvous.node.accounts_postgres import PostgresDatabase

        return PostgresDatabase(str(database))
    from rendezvous.node.accounts_sqlite import SQLiteDatabase

    return SQLiteDatabase(Path(database))


def migrate(db: Database) -> None:
    """Make db's tables at SCHEMA_VERSION, or upgrade older ones step by step, in one transaction."""
    with db.transaction() as cursor:
        version = db.schema_version(cursor)
        if version is None:
            db.run_script(cursor, _schema(db.schema_package, f"v{SCHEMA_VERSION}.sql"))
            cursor.execute("INSERT INTO version VALUES (?)", (SCHEMA_VERSION,))
            return
        if version > SCHEMA_VERSION:
            raise AccountError(f"{db} has schema v{version}, newer than this code (v{SCHEMA_VERSION})")
        while version < SCHEMA_VERSION:
            version += 1
            db.run_script(cursor, _schema(db.schema_package, f"upgrade-to-v{version}.sql"))
            cursor.execute("UPDATE version SET version = ?", (version,))


def _schema(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


class AccountStore:
    """Accounts and buddy lists in one database; also a TURN credential source. Every call blocks."""

    def __init__(self, database: "str | Path | Database", upgrade: bool = True) -> None:
        """Open database (a path, a postgresql:// URL or a Database); with upgrade, make or upgrade its schema."""
        self.db = open_database(database) if isinstance(database, (str, Path)) else database
        if upgrade:
            migrate(self.db)

    def __str__(self) -> str:
        return str(self.db)

    def close(self) -> None:
        self.db.close()

    def version(self) -> int | None:
        """The schema version of the database."""
        with self.db.transaction(write=False) as cursor:
            return self.db.schema_version(cursor)

    def _one(self, sql: str, params: tuple = ()) -> tuple | None:
        with self.db.transaction(write=False) as cursor:
            return cursor.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.db.transaction(write=False) as cursor:
            return [tuple(row) for row in cursor.execute(sql, params).fetchall()]

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
        row = self._row(name, password, realm)  # hashed before the transaction, which stays short
        with self.db.transaction() as cursor:
            cursor.execute("INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                           (name, *row, time.time()))
            if cursor.rowcount == 0:
                raise AccountError(f"user {name!r} already exists")

    def set_password(self, name: str, password: str, realm: str) -> None:
        """Reset a password (and the TURN keys, for realm)."""
        name = self._name(name)
        row = self._row(name, password, realm)
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE accounts SET password_hash=?, salt=?, scrypt_n=?, scrypt_r=?, scrypt_p=?, "
                           "turn_realm=?, turn_key_md5=?, turn_key_sha256=? WHERE name=?", (*row, name))
            if cursor.rowcount == 0:
                raise AccountError(f"no user {name!r}")

    def remove(self, name: str) -> None:
        """Delete an account, its buddy rows and the rows naming it; AccountError if there is none."""
        name = self._name(name)
        with self.db.transaction() as cursor:
            if cursor.execute("DELETE FROM accounts WHERE name=?", (name,)).rowcount == 0:
                raise AccountError(f"no user {name!r}")
            cursor.execute("DELETE FROM buddies WHERE buddy=?", (name,))

    def names(self) -> list[tuple[str, str, float]]:
        """(name, TURN realm, created_at) of every account, by name."""
        return self._all("SELECT name, turn_realm, created_at FROM accounts ORDER BY name")

    def check_password(self, name: str, password: str) -> bool:
        """Whether password is the account's, compared in constant time."""
        try:
            name = self._name(name)
        except AccountError:
            return False
        row = self._one("SELECT password_hash, salt, scrypt_n, scrypt_r, scrypt_p FROM accounts WHERE name=?",
                        (name,))
        if row is None:
            # Spend the same work for unknown users, so timing does not tell.
            _scrypt(password, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
            return False
        stored, salt, n, r, p = row
        return hmac.compare_digest(bytes(stored), _scrypt(password, bytes(salt), n, r, p))

    def keys(self, username: str, realm: str, now: float) -> Keys | None:
        """The TURN keys of username, if they were made for realm."""
        row = self._one("SELECT turn_key_md5, turn_key_sha256 FROM accounts WHERE name=? AND turn_realm=?",
                        (username, realm))
        return Keys(bytes(row[0]), bytes(row[1])) if row else None

    def all_keys(self, realm: str) -> dict[str, Keys]:
        """The TURN keys of every account made for realm, by name."""
        return {name: Keys(bytes(md5), bytes(sha256)) for name, md5, sha256 in self._all(
            "SELECT name, turn_key_md5, turn_key_sha256 FROM accounts WHERE turn_realm=?", (realm,))}

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
        with self.db.transaction() as cursor:
            count = cursor.execute("SELECT COUNT(*) FROM buddies WHERE owner=?", (owner,)).fetchone()[0]
            if count >= MAX_BUDDIES:
                raise AccountError("buddy list is full")
            reverse = cursor.execute("SELECT state FROM buddies WHERE owner=? AND buddy=?", (buddy, owner)).fetchone()
            if reverse is not None:
                return self._accept(cursor, owner, buddy)
            cursor.execute("INSERT INTO buddies VALUES (?, ?, 'requested', ?) ON CONFLICT (owner, buddy) DO NOTHING",
                           (owner, buddy, time.time()))
            return cursor.execute("SELECT state FROM buddies WHERE owner=? AND buddy=?", (owner, buddy)).fetchone()[0]

    def accept_buddy(self, owner: str, requester: str) -> str:
        """owner accepts requester's request; AccountError without one."""
        with self.db.transaction() as cursor:
            if cursor.execute("SELECT 1 FROM buddies WHERE owner=? AND buddy=?", (requester, owner)).fetchone() is None:
                raise AccountError(f"no buddy request from {requester!r}")
            return self._accept(cursor, owner, requester)

    @staticmethod
    def _accept(cursor: Cursor, owner: str, requester: str) -> str:
        now = time.time()
        cursor.execute("UPDATE buddies SET state='accepted', since=? WHERE owner=? AND buddy=?",
                       (now, requester, owner))
        cursor.execute("INSERT INTO buddies VALUES (?, ?, 'accepted', ?) ON CONFLICT (owner, buddy) DO UPDATE "
                       "SET state=excluded.state, since=excluded.since", (owner, requester, now))
        return "accepted"

    def remove_buddy(self, owner: str, buddy: str) -> None:
        """End the relation (or request) both ways."""
        with self.db.transaction() as cursor:
            cursor.execute("DELETE FROM buddies WHERE (owner=? AND buddy=?) OR (owner=? AND buddy=?)",
                           (owner, buddy, buddy, owner))

    def buddies(self, owner: str, after: str = "", limit: int = BUDDY_PAGE) -> tuple[list[tuple[str, str]], bool]:
        """One page of owner's list, by name after ``after``, and whether more follow.

        Entries are (name, state): 'accepted' or 'requested' (owner asked)
        for owner's own rows, 'incoming' for requests to owner. A name is in
        one of these at most (crossed requests are accepted at once).
        """
        rows = self._all(
            "SELECT name, relation FROM (SELECT buddy AS name, state AS relation FROM buddies WHERE owner=? "
            "UNION ALL SELECT owner, 'incoming' FROM buddies WHERE buddy=? AND state='requested') AS entries "
            "WHERE name > ? ORDER BY name LIMIT ?", (owner, owner, after, limit + 1))
        return rows[:limit], len(rows) > limit

    def accepted(self, owner: str) -> list[str]:
        """The names of owner's accepted buddies."""
        return [name for (name,) in self._all("SELECT buddy FROM buddies WHERE owner=? AND state='accepted'",
                                              (owner,))]

    def are_buddies(self, a: str, b: str) -> bool:
        return self._one("SELECT 1 FROM buddies WHERE owner=? AND buddy=? AND state='accepted'", (a, b)) is not None
