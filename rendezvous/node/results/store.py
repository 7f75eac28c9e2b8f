"""Field-test records in the account store's database (schema v4, ``results``)."""

from __future__ import annotations

import json
import sqlite3

from rendezvous.node.results.records import new_id


class ResultsStore:
    """Records by id, in the ``results`` table of the account store's database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def add(self, record: dict, network: str, now: float) -> str:
        """Store record; returns its new permanent id."""
        record_id = new_id()
        self.db.execute("INSERT INTO results (id, kind, received, network, body) VALUES (?, ?, ?, ?, ?)",
                        (record_id, record["kind"], now, network, json.dumps(record, separators=(",", ":"))))
        return record_id

    def get(self, record_id: str) -> dict | None:
        """The record with this id, with its ``id`` and ``received`` time; None when unknown."""
        row = self.db.execute("SELECT id, received, body FROM results WHERE id=?", (record_id,)).fetchone()
        return None if row is None else _record(row)

    def records(self) -> list[dict]:
        """Every record, oldest first."""
        return [_record(row) for row in self.db.execute("SELECT id, received, body FROM results ORDER BY received")]

    def networks(self) -> int:
        """How many distinct /24 or /48 networks submitted."""
        return self.db.execute("SELECT COUNT(DISTINCT network) FROM results").fetchone()[0]

    def revision(self) -> tuple:
        """Changes whenever a record is added or removed."""
        return tuple(self.db.execute("SELECT COUNT(*), MAX(received) FROM results").fetchone())

    def expire(self, before: float) -> int:
        """Remove records received before the given time; returns how many."""
        return self.db.execute("DELETE FROM results WHERE received < ?", (before,)).rowcount


def _record(row: tuple) -> dict:
    record_id, received, body = row
    return {"id": record_id, "received": received, **json.loads(body)}
