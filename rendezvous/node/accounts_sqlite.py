"""The account database in an SQLite file: the embedded default (``rendezvous.node.accounts``).

WAL mode lets the node's threads read while one writes; a writer waits up
to BUSY_SECONDS for another's lock.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rendezvous.node.accounts import StoreUnavailable

BUSY_SECONDS = 10


class SQLiteDatabase:
    """One connection to an SQLite file (made, with its directory, when missing)."""

    schema_package = "rendezvous.node.schema"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_SECONDS,
                                              check_same_thread=False)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(f"cannot open {self.path}: {e}") from None

    def __str__(self) -> str:
        return str(self.path)

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        """A writer takes the write lock at once (BEGIN IMMEDIATE: no upgrade deadlock); a reader
        begins deferred and reads the last commit beside any writer (WAL)."""
        try:
            cursor = self.connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: {e}") from None
        try:
            yield cursor
            self.connection.execute("COMMIT")
        except BaseException as e:
            self.connection.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreUnavailable(f"{self.path}: {e}") from None
            raise

    def schema_version(self, cursor: sqlite3.Cursor) -> int | None:
        if cursor.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='version'").fetchone() is None:
            return None
        return cursor.execute("SELECT version FROM version").fetchone()[0]

    def run_script(self, cursor: sqlite3.Cursor, sql: str) -> None:
        """Each statement of sql in turn (``executescript`` would commit the transaction first)."""
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                cursor.execute(statement)
                statement = ""

    def close(self) -> None:
        self.connection.close()
