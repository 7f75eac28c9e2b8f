"""Allocation counts for the quotas: in one process, and shared by workers through a file."""

import multiprocessing

import pytest

from relay import quotas
from relay.quotas import AllocationCounts, SharedAllocationCounts, quota_path
from rendezvous.stun import Error


def test_local_counts_refuse_past_each_quota_and_free_on_release():
    """486 past the per-user quota, 508 past the total; a release makes room again; 0 means unlimited."""
    counts = AllocationCounts()
    assert counts.claim("alice", 2, 3) is None and counts.claim("alice", 2, 3) is None
    assert counts.claim("alice", 2, 3) == Error.ALLOCATION_QUOTA_REACHED
    assert counts.claim("bob", 2, 3) is None
    assert counts.claim("carol", 2, 3) == Error.INSUFFICIENT_CAPACITY
    counts.release("alice")
    assert counts.claim("carol", 2, 3) is None
    assert all(counts.claim("dave", 0, 0) is None for _ in range(100))
    assert counts.total == 103 and counts.per_user["dave"] == 100


@pytest.fixture
def ledger_path(tmp_path):
    return quota_path(tmp_path, 4242)


def test_shared_counts_add_up_every_worker(ledger_path):
    """A quota counts the allocations of all workers: what one holds, another may not exceed."""
    first, second = SharedAllocationCounts(ledger_path, 0, 2), SharedAllocationCounts(ledger_path, 1, 2)
    try:
        assert first.claim("alice", 3, 5) is None and second.claim("alice", 3, 5) is None
        assert first.claim("alice", 3, 5) is None
        assert second.claim("alice", 3, 5) == Error.ALLOCATION_QUOTA_REACHED
        assert second.claim("bob", 3, 5) is None and first.claim("carol", 3, 5) is None
        assert second.claim("dave", 3, 5) == Error.INSUFFICIENT_CAPACITY
        first.release("alice")
        assert second.claim("alice", 3, 0) is None
        assert first.claim("alice", 3, 0) == Error.ALLOCATION_QUOTA_REACHED
    finally:
        first.close()
        second.close()


def test_a_restarted_worker_starts_from_zero(ledger_path):
    """A worker opening the file clears its own region (its allocations died with it), not the others'."""
    first, second = SharedAllocationCounts(ledger_path, 0, 2), SharedAllocationCounts(ledger_path, 1, 2)
    assert first.claim("alice", 2, 0) is None and second.claim("alice", 2, 0) is None
    second.close()
    second = SharedAllocationCounts(ledger_path, 1, 2)
    try:
        assert second.claim("alice", 2, 0) is None
        assert first.claim("alice", 2, 0) == Error.ALLOCATION_QUOTA_REACHED
    finally:
        first.close()
        second.close()


def test_the_user_table_is_compacted_and_bounded(ledger_path, monkeypatch):
    """Users with no allocation left give their slots back; past the bound with all of them live, 508."""
    monkeypatch.setattr(quotas, "SLOTS", 64)
    monkeypatch.setattr(quotas, "COMPACT_AT", 48)
    monkeypatch.setattr(quotas, "REGION_BYTES", quotas._HEADER.size + 64 * quotas._ENTRY.size)
    counts = SharedAllocationCounts(ledger_path, 0, 1)
    try:
        for round_ in range(5):  # 5 x 40 distinct users come and go through 64 slots
            users = [f"user-{round_}-{i}" for i in range(40)]
            assert all(counts.claim(u, 1, 0) is None for u in users)
            for u in users:
                counts.release(u)
        live = [f"live-{i}" for i in range(48)]
        assert all(counts.claim(u, 1, 0) is None for u in live)
        assert counts.claim("one too many", 1, 0) == Error.INSUFFICIENT_CAPACITY
        assert all(counts.claim(u, 1, 0) == Error.ALLOCATION_QUOTA_REACHED for u in live)
        counts.release(live[0])
        assert counts.claim("one too many", 1, 0) is None
    finally:
        counts.close()


def _claim_many(path, index, attempts, results):
    counts = SharedAllocationCounts(path, index, 2)
    results.put(sum(counts.claim("alice", 50, 0) is None for _ in range(attempts)))
    counts.close()


def test_two_processes_racing_never_exceed_the_quota(ledger_path):
    """Two workers claiming for one user at once get exactly the quota between them (the file lock)."""
    SharedAllocationCounts(ledger_path, 0, 2).close()
    results = multiprocessing.get_context("fork").Queue()
    workers = [multiprocessing.get_context("fork").Process(target=_claim_many, args=(ledger_path, i, 200, results))
               for i in range(2)]
    for worker in workers:
        worker.start()
    granted = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(10)
    assert sum(granted) == 50


def test_several_count_at_once():
    """A claim of two (an allocation and its reserved port) fits only where both fit, and is released as two."""
    counts = AllocationCounts()
    assert counts.claim("alice", 3, 0) is None
    assert counts.claim("alice", 3, 0, 2) is None
    assert counts.claim("alice", 4, 0, 2) == Error.ALLOCATION_QUOTA_REACHED
    counts.release("alice", 2)
    assert counts.per_user["alice"] == 1 and counts.total == 1


def test_relayed_ports_held_by_any_worker_are_live(ledger_path):
    """A relayed port one worker's allocation holds is live for every worker, per family and transport,
    until released; a restarted worker's marks are gone."""
    first, second = SharedAllocationCounts(ledger_path, 0, 2), SharedAllocationCounts(ledger_path, 1, 2)
    try:
        first.hold_relayed(6, 50001, False, True)
        second.hold_relayed(4, 50002, True, True)
        assert second.relayed_live(6, 50001, False) and first.relayed_live(4, 50002, True)
        assert not second.relayed_live(4, 50001, False) and not second.relayed_live(6, 50001, True)
        assert not first.relayed_live(6, 50000, False) and not first.relayed_live(6, 50003, False)
        first.hold_relayed(6, 50001, False, False)
        assert not second.relayed_live(6, 50001, False)
        SharedAllocationCounts(ledger_path, 1, 2).close()  # worker 1 restarts
        assert not first.relayed_live(4, 50002, True)
    finally:
        first.close()
        second.close()


def test_local_relayed_ports():
    """In one process a relayed port is live from hold to release, neighbours unaffected."""
    counts = AllocationCounts()
    for port in (65535, 65534, 0):
        counts.hold_relayed(4, port, False, True)
    counts.hold_relayed(4, 65534, False, False)
    assert counts.relayed_live(4, 65535, False) and counts.relayed_live(4, 0, False)
    assert not counts.relayed_live(4, 65534, False) and not counts.relayed_live(6, 65535, False)
