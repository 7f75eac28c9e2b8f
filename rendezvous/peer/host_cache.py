"""A client's own host cache: super nodes it has heard of, kept in a file.

A client tries super nodes in this order: those from its cache file (most
recently seen first, then the least loaded), then the bootstrap list built
into the application as the last resort. After each login it merges the
``host_cache`` of the ``welcome`` (docs/PROTOCOL.md) and saves the file, so
it can find the network again even when its bootstrap nodes are gone, as
Skype clients did with their host caches. A dual-stack node's entry keeps
all its addresses (``ips``) and the one the last login reached it at
(``via``), which happy eyeballs tries first next time (RFC 8305 §4,
``rendezvous.peer.happy_eyeballs``).
"""

import json
import os
import tempfile
import time
from pathlib import Path

from rendezvous.wire.host_entries import host_entry

MAX_ENTRIES = 200
MAX_AGE_SECONDS = 30 * 24 * 3600


class HostCache:
    """Super nodes a client knows, loaded from and saved to ``path``."""

    def __init__(self, path: Path, bootstrap: list[tuple[str, int]] = ()) -> None:
        self.path = Path(path)
        self.bootstrap = [(str(host), int(port)) for host, port in bootstrap]
        self.entries: dict[tuple[str, int], dict] = {}

    def load(self) -> "HostCache":
        """Read the file; a missing or damaged file leaves an empty cache."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return self
        self.merge(data.get("hosts", []) if isinstance(data, dict) else [], keep_seen=True)
        return self

    def merge(self, hosts, now: float | None = None, keep_seen: bool = False) -> None:
        """Add or refresh entries {host, port, load?, seen?}; ignore malformed ones."""
        now = time.time() if now is None else now
        for entry in hosts if isinstance(hosts, list) else []:
            clean = host_entry(entry)
            if clean is None:
                continue
            seen = entry.get("seen", now) if keep_seen else now
            clean["seen"] = seen if isinstance(seen, (int, float)) else now
            key = (clean["host"], clean["port"])
            via = entry.get("via", self.entries.get(key, {}).get("via"))
            if via in self.addresses(key, clean):
                clean["via"] = via
            self.entries[key] = clean
        self._trim(now)

    def _trim(self, now: float) -> None:
        for key in [k for k, e in self.entries.items() if now - e["seen"] > MAX_AGE_SECONDS]:
            del self.entries[key]
        if len(self.entries) > MAX_ENTRIES:
            newest = sorted(self.entries.values(), key=lambda e: -e["seen"])[:MAX_ENTRIES]
            self.entries = {(e["host"], e["port"]): e for e in newest}

    def candidates(self) -> list[tuple[str, int]]:
        """Super nodes to try, best first, ending with the bootstrap list."""
        cached = sorted(self.entries.values(), key=lambda e: (-e["seen"], e["load"]))
        order = [(e["host"], e["port"]) for e in cached]
        return order + [b for b in self.bootstrap if b not in order]

    def addresses(self, server: tuple[str, int], entry: dict | None = None) -> list[str]:
        """Every address of a node (its entry's ``ips``, else its host)."""
        entry = entry if entry is not None else self.entries.get(server, {})
        return list(entry.get("ips") or [server[0]])

    def reached_via(self, server: tuple[str, int]) -> str | None:
        """The address the last login reached this node at, if it is cached."""
        return self.entries.get(server, {}).get("via")

    def remember(self, server: tuple[str, int], ip: str) -> None:
        """The login to ``server`` won the race at ``ip`` (one of its addresses): try it first next time."""
        entry = self.entries.get(server)
        if entry is not None and ip in self.addresses(server):
            entry["via"] = ip

    def save(self) -> None:
        """Write the file atomically (a crash leaves the old one whole)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".hosts-")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "hosts": list(self.entries.values())}, f)
        os.replace(temporary, self.path)
