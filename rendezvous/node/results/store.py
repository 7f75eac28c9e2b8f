"""Field-test records in the account store's database (schema v5, ``results``), either back end.

The functions take a blocking ``AccountStore`` (one connection); ``ResultsStore``
runs them on the account store's thread pool (``AsyncAccounts.run``), so the
reactor never waits on SQLite or PostgreSQL.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred

from rendezvous.node.accounts import AccountStore
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.results.records import new_id
from rendezvous.node.results.summary import summarize


def add(store: AccountStore, record: dict, network: str, now: float) -> str:
    """Store record; returns its new permanent id."""
    record_id = new_id()
    with store.db.transaction() as cursor:
        cursor.execute("INSERT INTO results (id, kind, received, network, body) VALUES (?, ?, ?, ?, ?)",
                       (record_id, record["kind"], now, network, json.dumps(record, separators=(",", ":"))))
    return record_id


def get(store: AccountStore, record_id: str) -> dict | None:
    """The record with this id, with its ``id`` and ``received`` time; None when unknown."""
    with store.db.transaction(write=False) as cursor:
        row = cursor.execute("SELECT id, received, body FROM results WHERE id = ?", (record_id,)).fetchone()
    return None if row is None else _record(row)


def snapshot(store: AccountStore) -> tuple[tuple, list[dict], int]:
    """(revision, every record oldest first, how many distinct /24 or /48 networks), read together;
    the revision changes whenever a record is added or removed."""
    with store.db.transaction(write=False) as cursor:
        revision = tuple(cursor.execute("SELECT COUNT(*), MAX(received) FROM results").fetchone())
        rows = cursor.execute("SELECT id, received, body FROM results ORDER BY received").fetchall()
        networks = cursor.execute("SELECT COUNT(DISTINCT network) FROM results").fetchone()[0]
    return revision, [_record(row) for row in rows], networks


def summary(store: AccountStore) -> tuple[tuple, dict]:
    """(revision, the summary of every record): counted where the records are read, off the reactor."""
    revision, records, networks = snapshot(store)
    return revision, summarize(records, networks)


def revision(store: AccountStore) -> tuple:
    with store.db.transaction(write=False) as cursor:
        return tuple(cursor.execute("SELECT COUNT(*), MAX(received) FROM results").fetchone())


def expire(store: AccountStore, before: float) -> int:
    """Remove records received before the given time; returns how many."""
    with store.db.transaction() as cursor:
        return cursor.execute("DELETE FROM results WHERE received < ?", (before,)).rowcount


def _record(row: tuple) -> dict:
    record_id, received, body = row
    return {"id": record_id, "received": received, **json.loads(body)}


class ResultsStore:
    """The functions above as Deferreds, run where the account store runs its calls."""

    def __init__(self, accounts: AsyncAccounts) -> None:
        self.accounts = accounts

    def add(self, record: dict, network: str, now: float) -> Deferred:
        return self.accounts.run(add, record, network, now)

    def get(self, record_id: str) -> Deferred:
        return self.accounts.run(get, record_id)

    def revision(self) -> Deferred:
        return self.accounts.run(revision)

    def summary(self) -> Deferred:
        """Fires with (revision, summary of every record)."""
        return self.accounts.run(summary)

    def expire(self, before: float) -> Deferred:
        return self.accounts.run(expire, before)
