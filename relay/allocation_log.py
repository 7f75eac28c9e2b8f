"""The operator's log lines for allocations made and ended, bounded at high allocation rates.

Each line costs the relay about as much as a TURN request (twistd formats
and writes it at once, ``bench/allocation_rate.py``), so past
``per_second`` lines a second (with one second of burst) the events are
counted instead, and one summary line tells them at most every
``SUMMARY_SECONDS``. Below that rate every allocation is logged one by one
(docs/OPERATING.md, Logs); the status view lists the live ones at any rate.
"""

from twisted.logger import Logger

from rendezvous.stun.addresses import address_text

from .allocation import Allocation, TokenBucket

log = Logger()

SUMMARY_SECONDS = 10


class AllocationLog:
    """Allocation made/ended lines: one by one up to per_second a second (0: always), then a summary."""

    def __init__(self, per_second: int, clock) -> None:
        self.per_second = per_second
        self.clock = clock
        self._bucket = TokenBucket(per_second, clock) if per_second > 0 else None
        self.made_held = self.ended_held = 0  # events not logged one by one since held_since
        self.held_since = 0.0

    def _one_by_one(self) -> bool:
        if self._bucket is None or self._bucket.take(1):
            return True
        if not (self.made_held or self.ended_held):
            self.held_since = self.clock.seconds()
        return False

    def made(self, allocation_id: str, allocation: Allocation, lifetime: int) -> None:
        if not self._one_by_one():
            self.made_held += 1
            return
        log.info("allocation {allocation} for {user} from {client} over {transport}, relayed {relayed}, "
                 "{lifetime} s", allocation=allocation_id, user=allocation.username,
                 client=address_text(allocation.five_tuple[1]), transport=allocation.five_tuple[0],
                 relayed=[address_text(r.address) for r in allocation.relays.values()], lifetime=lifetime)

    def ended(self, allocation_id: str, allocation: Allocation, reason: str) -> None:
        if not self._one_by_one():
            self.ended_held += 1
            return
        log.info("allocation {allocation} of {user} from {client} ended: {reason}", allocation=allocation_id,
                 user=allocation.username, client=address_text(allocation.five_tuple[1]), reason=reason)

    def summarize(self, now: float, live: int, at_once: bool = False) -> None:
        """Log what was held back, once SUMMARY_SECONDS have passed since the first of it (or at_once)."""
        if not (self.made_held or self.ended_held) or (now - self.held_since < SUMMARY_SECONDS and not at_once):
            return
        log.info("{made} allocations made and {ended} ended in the last {seconds} s were not logged one by one "
                 "(over {limit} lines/s); {live} live", made=self.made_held, ended=self.ended_held,
                 seconds=round(now - self.held_since), limit=self.per_second, live=live)
        self.made_held = self.ended_held = 0
