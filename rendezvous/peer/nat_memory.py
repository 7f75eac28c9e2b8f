"""The last NAT check's verdict, kept in the state directory for the field test's outcome reports.

``txrendezvous nat-check`` saves its report as ``STATE_DIR/nat-check.json``; a
Client reporting a session's outcome (``report_outcome``) names this side's NAT
by it while it is recent (MAX_AGE_SECONDS), else by the mapping its own
gathering measured.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

FILE = "nat-check.json"
MAX_AGE_SECONDS = 24 * 3600
FIELDS = ("nat_type", "mapping", "filtering")


def save(state_dir: Path, report: dict, now: float) -> Path:
    """Write report (``NatReport.to_dict()``) with the time it was made, atomically; returns the path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILE
    fd, temporary = tempfile.mkstemp(dir=state_dir, prefix=".nat-check-")
    with os.fdopen(fd, "w") as f:
        json.dump({"checked_at": now, "report": report}, f)
    os.replace(temporary, path)
    return path


def recent(state_dir: Path, now: float, max_age_seconds: float = MAX_AGE_SECONDS) -> dict | None:
    """{nat_type, mapping, filtering} of the saved report when it is younger than max_age_seconds, else None."""
    try:
        saved = json.loads((state_dir / FILE).read_text())
        if not 0 <= now - float(saved["checked_at"]) < max_age_seconds:
            return None
        report = saved["report"]
        return {name: report[name] if isinstance(report.get(name), str) else None for name in FIELDS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
