"""Allocation counts behind the quotas of RFC 8656 §7.2 step 8 (486 per user, 508 in total),
and the relayed addresses live allocations hold.

A reserved port (EVEN-PORT R, §7.2) counts like an allocation until its
token is taken or it expires. ``AllocationCounts`` counts in this process.
With ``--workers N`` every worker counts in a file it shares with the others
(``SharedAllocationCounts``, ``STATE_DIR/run/relay-PID.quota``, PID being
the first process's), so a quota is a limit on the whole relay, not on each
worker: one region per worker, written only by it, holding its allocation
total, a table of per-user counts keyed by a 64-bit hash of the username,
and a bitmap of the relayed ports (per family and transport) its live
allocations hold. ``claim`` sums every region and counts the new allocation
under one exclusive lock of the file, so two workers never both admit the
last allocation a quota allows; ``relayed_live`` reads every bitmap, so a
relayed address is a peer (``relay.peer_policy``) only while some worker's
allocation holds it.
"""

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

from twisted.logger import Logger

from rendezvous.stun import Error

log = Logger()


# A bit per relayed port for each of UDP/IPv4, UDP/IPv6, TCP/IPv4 and TCP/IPv6.
RELAYED_BYTES = 4 * 65536 // 8


def _relayed_bit(family: int, port: int, tcp: bool) -> int:
    return ((2 if tcp else 0) + (1 if family == 6 else 0)) << 16 | port


class _RelayedBitmap:
    """Marks of the relayed addresses this process's live allocations hold (one IP per family)."""

    def _bitmap(self) -> tuple[bytearray | mmap.mmap, int]:
        """The buffer and offset of this process's bitmap."""
        raise NotImplementedError

    def _bitmaps(self) -> list[tuple[bytearray | mmap.mmap, int]]:
        """Every process's bitmap (buffer, offset)."""
        return [self._bitmap()]

    def hold_relayed(self, family: int, port: int, tcp: bool, held: bool) -> None:
        """An allocation of this process now holds (or no longer holds) the relayed port."""
        buffer, offset = self._bitmap()
        bit = _relayed_bit(family, port, tcp)
        index, mask = offset + (bit >> 3), 1 << (bit & 7)
        buffer[index] = buffer[index] | mask if held else buffer[index] & ~mask

    def relayed_live(self, family: int, port: int, tcp: bool) -> bool:
        """Whether a live allocation of any process of this relay holds the relayed port."""
        bit = _relayed_bit(family, port, tcp)
        return any(buffer[offset + (bit >> 3)] & (1 << (bit & 7)) for buffer, offset in self._bitmaps())


class AllocationCounts(_RelayedBitmap):
    """Live allocations (and reserved ports) of this process, in all and per user."""

    def __init__(self) -> None:
        # A plain dict: a Counter's missing key and del are Python-level calls, two an allocation.
        self.per_user: dict[str, int] = {}
        self.total = 0
        self.relayed = bytearray(RELAYED_BYTES)

    def _bitmap(self) -> tuple[bytearray, int]:
        return self.relayed, 0

    def claim(self, user: str, user_quota: int, total_quota: int, count: int = 1) -> int | None:
        """Count count more allocations for user, or the error code refusing them (quotas 0 = unlimited)."""
        held = self.per_user.get(user, 0)
        if user_quota and held + count > user_quota:
            return Error.ALLOCATION_QUOTA_REACHED
        if total_quota and self.total + count > total_quota:
            return Error.INSUFFICIENT_CAPACITY
        self.per_user[user] = held + count
        self.total += count
        return None

    def release(self, user: str, count: int = 1) -> None:
        """count allocations of user ended (or a claim was not used)."""
        self.total -= count
        left = self.per_user.get(user, 0) - count
        if left > 0:
            self.per_user[user] = left
        else:
            self.per_user.pop(user, None)


# A region: total (u32), used slots (u32), 8 bytes spare, then SLOTS entries of
# (username hash u64, count u32, 4 bytes spare), hash 0 marking a free slot,
# then the relayed-port bitmap.
_HEADER = struct.Struct("=II8x")
_ENTRY = struct.Struct("=QI4x")
SLOTS = 16384
_BITMAP_OFFSET = _HEADER.size + SLOTS * _ENTRY.size
REGION_BYTES = _BITMAP_OFFSET + RELAYED_BYTES
# Rebuild a region's table (dropping users with no allocation left) past this many used slots.
COMPACT_AT = SLOTS * 3 // 4


def user_hash(user: str) -> int:
    """A nonzero 64-bit key for a username."""
    digest = int.from_bytes(hashlib.blake2b(user.encode("utf-8"), digest_size=8).digest(), "little")
    return digest or 1


def quota_path(state_dir, supervisor_pid: int) -> Path:
    """The counts file of the relay whose first process is supervisor_pid."""
    return Path(state_dir) / "run" / f"relay-{supervisor_pid}.quota"


class SharedAllocationCounts(_RelayedBitmap):
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

    def _bitmap(self) -> tuple[mmap.mmap, int]:
        return self.map, self.own + _BITMAP_OFFSET

    def _bitmaps(self) -> list[tuple[mmap.mmap, int]]:
        return [(self.map, i * REGION_BYTES + _BITMAP_OFFSET) for i in range(self.workers)]

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

    def claim(self, user: str, user_quota: int, total_quota: int, count: int = 1) -> int | None:
        """Count count more allocations for user in this worker's region, or the error code refusing them."""
        key = user_hash(user)
        with _FileLock(self.fd):
            if user_quota and self._user_total(key) + count > user_quota:
                return Error.ALLOCATION_QUOTA_REACHED
            total = sum(_HEADER.unpack_from(self.map, i * REGION_BYTES)[0] for i in range(self.workers))
            if total_quota and total + count > total_quota:
                return Error.INSUFFICIENT_CAPACITY
            own_total, used = _HEADER.unpack_from(self.map, self.own)
            offset, held = self._find(self.own, key)
            if held == 0 and _ENTRY.unpack_from(self.map, offset)[0] == 0:  # a new user here
                if used >= COMPACT_AT:
                    used = self._compact()
                    offset, held = self._find(self.own, key)
                if used >= COMPACT_AT:
                    log.warn("per-user allocation table full ({slots} users on this worker)", slots=used)
                    return Error.INSUFFICIENT_CAPACITY
                used += 1
            _ENTRY.pack_into(self.map, offset, key, held + count)
            _HEADER.pack_into(self.map, self.own, own_total + count, used)
        return None

    def release(self, user: str, count: int = 1) -> None:
        """count allocations of user ended (or a claim was not used)."""
        key = user_hash(user)
        with _FileLock(self.fd):
            own_total, used = _HEADER.unpack_from(self.map, self.own)
            offset, held = self._find(self.own, key)
            if held > 0:
                _ENTRY.pack_into(self.map, offset, key, max(0, held - count))
            _HEADER.pack_into(self.map, self.own, max(0, own_total - count), used)

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
