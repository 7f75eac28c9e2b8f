"""Allocation counts behind the quotas of RFC 8656 §7.2 step 8 (486 per user, 508 in total).

``AllocationCounts`` counts in this process. With ``--workers N`` every
worker counts in a file it shares with the others (``SharedAllocationCounts``,
``STATE_DIR/run/relay-PID.quota``, PID being the first process's), so a
quota is a limit on the whole relay, not on each worker: one region per
worker, written only by it, holding its allocation total and a table of
per-user counts keyed by a 64-bit hash of the username. ``claim`` sums every
region and counts the new allocation under one exclusive lock of the file,
so two workers never both admit the last allocation a quota allows.
"""

import fcntl
import hashlib
import mmap
import os
import struct
from collections import Counter
from pathlib import Path

from twisted.logger import Logger

from rendezvous.stun import Error

log = Logger()


class AllocationCounts:
    """Live allocations of this process, in all and per user."""

    def __init__(self) -> None:
        self.per_user: Counter[str] = Counter()
        self.total = 0

    def claim(self, user: str, user_quota: int, total_quota: int) -> int | None:
        """Count one more allocation for user, or the error code refusing it (quotas 0 = unlimited)."""
        if user_quota and self.per_user[user] >= user_quota:
            return Error.ALLOCATION_QUOTA_REACHED
        if total_quota and self.total >= total_quota:
            return Error.INSUFFICIENT_CAPACITY
        self.per_user[user] += 1
        self.total += 1
        return None

    def release(self, user: str) -> None:
        """One allocation of user ended (or a claim was not used)."""
        self.total -= 1
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]


# A region: total (u32), used slots (u32), 8 bytes spare, then SLOTS entries of
# (username hash u64, count u32, 4 bytes spare); hash 0 marks a free slot.
_HEADER = struct.Struct("=II8x")
_ENTRY = struct.Struct("=QI4x")
SLOTS = 16384
REGION_BYTES = _HEADER.size + SLOTS * _ENTRY.size
# Rebuild a region's table (dropping users with no allocation left) past this many used slots.
COMPACT_AT = SLOTS * 3 // 4


def user_hash(user: str) -> int:
    """A nonzero 64-bit key for a username."""
    digest = int.from_bytes(hashlib.blake2b(user.encode("utf-8"), digest_size=8).digest(), "little")
    return digest or 1


def quota_path(state_dir, supervisor_pid: int) -> Path:
    """The counts file of the relay whose first process is supervisor_pid."""
    return Path(state_dir) / "run" / f"relay-{supervisor_pid}.quota"


class SharedAllocationCounts:
    """Allocation counts of every worker of one relay, in a file they all map."""

    def __init__(self, path: Path, index: int, workers: int) -> None:
        self.path = Path(path)
        self.index = index
        self.workers = workers
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        size = workers * REGION_BYTES
        with _FileLock(self.fd):
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)
            # A restarted worker's earlier allocations ended with it.
            start = index * REGION_BYTES
            self.map[start : start + REGION_BYTES] = bytes(REGION_BYTES)
        self.own = index * REGION_BYTES

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

    def _find(self, region: int, key: int) -> tuple[int, int]:
        """(offset of key's entry or of the free slot ending its probe, its count) in region."""
        table = region + _HEADER.size
        slot = key % SLOTS
        for _ in range(SLOTS):
            offset = table + slot * _ENTRY.size
            found, count = _ENTRY.unpack_from(self.map, offset)
            if found == key or found == 0:
                return offset, count if found == key else 0
            slot = (slot + 1) % SLOTS
        return -1, 0

    def _user_total(self, key: int) -> int:
        return sum(self._find(i * REGION_BYTES, key)[1] for i in range(self.workers))

    def claim(self, user: str, user_quota: int, total_quota: int) -> int | None:
        """Count one more allocation for user in this worker's region, or the error code refusing it."""
        key = user_hash(user)
        with _FileLock(self.fd):
            if user_quota and self._user_total(key) >= user_quota:
                return Error.ALLOCATION_QUOTA_REACHED
            total = sum(_HEADER.unpack_from(self.map, i * REGION_BYTES)[0] for i in range(self.workers))
            if total_quota and total >= total_quota:
                return Error.INSUFFICIENT_CAPACITY
            own_total, used = _HEADER.unpack_from(self.map, self.own)
            offset, count = self._find(self.own, key)
            if count == 0 and _ENTRY.unpack_from(self.map, offset)[0] == 0:  # a new user here
                if used >= COMPACT_AT:
                    used = self._compact()
                    offset, count = self._find(self.own, key)
                if used >= COMPACT_AT:
                    log.warn("per-user allocation table full ({slots} users on this worker)", slots=used)
                    return Error.INSUFFICIENT_CAPACITY
                used += 1
            _ENTRY.pack_into(self.map, offset, key, count + 1)
            _HEADER.pack_into(self.map, self.own, own_total + 1, used)
        return None

    def release(self, user: str) -> None:
        key = user_hash(user)
        with _FileLock(self.fd):
            own_total, used = _HEADER.unpack_from(self.map, self.own)
            offset, count = self._find(self.own, key)
            if count > 0:
                _ENTRY.pack_into(self.map, offset, key, count - 1)
            _HEADER.pack_into(self.map, self.own, max(0, own_total - 1), used)

    def _compact(self) -> int:
        """Rebuild this worker's table with only users that have allocations; the slots now used."""
        table = self.own + _HEADER.size
        live = []
        for slot in range(SLOTS):
            key, count = _ENTRY.unpack_from(self.map, table + slot * _ENTRY.size)
            if key and count:
                live.append((key, count))
        self.map[table : table + SLOTS * _ENTRY.size] = bytes(SLOTS * _ENTRY.size)
        for key, count in live:
            offset, _ = self._find(self.own, key)
            _ENTRY.pack_into(self.map, offset, key, count)
        own_total, _ = _HEADER.unpack_from(self.map, self.own)
        _HEADER.pack_into(self.map, self.own, own_total, len(live))
        return len(live)


class _FileLock:
    """An exclusive fcntl lock on a whole file, held for a with block."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)
