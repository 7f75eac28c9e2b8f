"""Peers' certificate fingerprints, pinned on first use (trust on first use, as SSH's known_hosts).

The first session with a buddy records the fingerprint the node passed on;
every later one must present the same, so a node that swaps fingerprints
after the first meeting is caught. The file (JSON, written atomically) sits
beside the host cache by default.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rendezvous.wire.fingerprints import FINGERPRINT

MAX_PINS = 10_000
FINGERPRINT_CHANGED = "fingerprint-changed"  # the reason of a connect-decline for a changed fingerprint


class FingerprintChanged(Exception):
    """A peer presented a fingerprint other than the one pinned for it."""

    def __init__(self, peer: str, pinned: str, presented: str) -> None:
        super().__init__(f"{peer}'s certificate fingerprint changed: pinned {pinned}, presented {presented}; "
                         f"if {peer} really has a new key, connect with allow_new_fingerprint=True "
                         f"(or forget the pin) to accept it")
        self.peer, self.pinned, self.presented = peer, pinned, presented


class PinStore:
    """``{user: fingerprint}`` kept in ``path``; a missing or damaged file is an empty store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.pins: dict[str, str] = self._read()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        pins = data.get("pins") if isinstance(data, dict) else None
        if not isinstance(pins, dict):
            return {}
        return {user: value for user, value in pins.items()
                if isinstance(user, str) and isinstance(value, str) and FINGERPRINT.fullmatch(value)}

    def check(self, peer: str, presented: str, allow_change: bool = False) -> None:
        """Raise FingerprintChanged if ``peer`` has a pin other than ``presented`` (unless ``allow_change``)."""
        pinned = self.pins.get(peer)
        if pinned is not None and pinned != presented and not allow_change:
            raise FingerprintChanged(peer, pinned, presented)

    def pin(self, peer: str, presented: str, allow_change: bool = False) -> None:
        """Record ``presented`` as ``peer``'s fingerprint (after the peer proved it), checked again
        against the file as it is now: another session or process may have pinned meanwhile."""
        self.pins = {**self.pins, **self._read()}  # the file wins: another process may have pinned since
        self.check(peer, presented, allow_change)
        if self.pins.get(peer) == presented:
            return
        if peer not in self.pins and len(self.pins) >= MAX_PINS:
            self.pins.pop(next(iter(self.pins)))
        self.pins[peer] = presented
        self.save()

    def forget(self, peer: str) -> None:
        """Drop ``peer``'s pin (its next fingerprint is pinned anew)."""
        if self.pins.pop(peer, None) is not None:
            self.save()

    def save(self) -> None:
        """Write the file atomically (a crash leaves the old one whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "pins": self.pins}, f, indent=1, sort_keys=True)
        os.replace(temporary, self.path)
