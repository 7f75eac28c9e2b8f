"""The account database on a PostgreSQL server that several nodes share (``--database postgresql://...``).

psycopg 3 speaks to the server. A connection that fails is dropped and the
next transaction connects again, so a node rides out a database restart;
until then every operation raises StoreUnavailable. CONNECT_SECONDS and
TCP_USER_TIMEOUT_MS bound how long a call waits for a host that is gone,
unless the URL sets them. A connection idle for IDLE_CHECK_SECONDS is
checked before use, so a server that restarted meanwhile costs a reconnect,
not a failed call. Schema changes take an advisory lock, so nodes starting
together make the tables once.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rendezvous.node.accounts import StoreUnavailable

CONNECT_SECONDS = 5
TCP_USER_TIMEOUT_MS = 5000
IDLE_CHECK_SECONDS = 5  # a connection idle this long is checked (SELECT 1) before use: the server may have restarted
SCHEMA_LOCK = 0x7478_7264  # pg_advisory_xact_lock key of schema changes ("txrd")


def _driver():
    try:
        import psycopg
    except ImportError:
        raise StoreUnavailable("a postgresql:// database needs psycopg: pip install 'txrendezvous[postgresql]'") \
            from None
    return psycopg


class _Cursor:
    """A psycopg cursor taking the ``?`` placeholders the store's statements use."""

    def __init__(self, cursor) -> None:
        self.cursor = cursor

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def execute(self, sql: str, params: tuple = ()) -> "_Cursor":
        self.cursor.execute(sql.replace("?", "%s"), params)
        return self

    def fetchone(self) -> tuple | None:
        return self.cursor.fetchone()

    def fetchall(self) -> list[tuple]:
        return self.cursor.fetchall()


class PostgresDatabase:
    """One connection (made when first needed, and again after a failure) to a PostgreSQL database."""

    schema_package = "rendezvous.node.schema.postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.psycopg = _driver()
        self.connection = None
        self.used_at = 0.0

    def __str__(self) -> str:
        """The URL without its password."""
        try:
            info = self.psycopg.conninfo.conninfo_to_dict(self.url)
        except self.psycopg.ProgrammingError:
            return "postgresql://(unparsable URL)"
        user, host, port, name = (info.get(key, "") for key in ("user", "host", "port", "dbname"))
        return f"postgresql://{user}@{host}:{port}/{name}"

    def _connect(self):
        options = {"connect_timeout": CONNECT_SECONDS, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
        info = self.psycopg.conninfo.conninfo_to_dict(self.url)
        return self.psycopg.connect(self.url, **{k: v for k, v in options.items() if k not in info})

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[_Cursor]:  # PostgreSQL's readers never wait
        psycopg = self.psycopg
        try:
            self._check_idle()
            if self.connection is None or self.connection.closed:
                self.connection = self._connect()
            cursor = self.connection.cursor()
        except psycopg.Error as e:
            self.connection = None
            raise StoreUnavailable(f"{self}: {e}") from None
        self.used_at = time.monotonic()
        try:
            yield _Cursor(cursor)
            self.connection.commit()
        except BaseException as e:
            if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
                self._drop()
            else:
                try:
                    self.connection.rollback()
                except psycopg.Error:
                    self._drop()
            if isinstance(e, psycopg.Error):
                raise StoreUnavailable(f"{self}: {e}") from None
            raise

    def _check_idle(self) -> None:
        """Drop an idle connection that no longer answers (the next step connects again)."""
        if self.connection is None or time.monotonic() - self.used_at < IDLE_CHECK_SECONDS:
            return
        try:
            self.connection.execute("SELECT 1")
            self.connection.rollback()
        except self.psycopg.Error:
            self._drop()

    def _drop(self) -> None:
        try:
            self.connection.close()
        except self.psycopg.Error:
            pass
        self.connection = None

    def schema_version(self, cursor: _Cursor) -> int | None:
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        if cursor.execute("SELECT to_regclass('version')").fetchone()[0] is None:
            return None
        return cursor.execute("SELECT version FROM version").fetchone()[0]

    def run_script(self, cursor: _Cursor, sql: str) -> None:
        cursor.cursor.execute(sql)  # no parameters: psycopg runs several statements

    def close(self) -> None:
        if self.connection is not None:
            self._drop()
