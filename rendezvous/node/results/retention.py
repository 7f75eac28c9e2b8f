"""Deleting field-test records past the operator's ``--results-retention-days``."""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.logger import Logger

from rendezvous.node.results.store import ResultsStore

log = Logger()

DAY_SECONDS = 86400
SWEEP_SECONDS = 3600


def retention_service(store: ResultsStore, clock, days: int) -> TimerService:
    """Sweeps old records at start and every SWEEP_SECONDS."""

    def sweep() -> None:
        removed = store.expire(clock.seconds() - days * DAY_SECONDS)
        if removed:
            log.info("removed {count} field-test results older than {days} days", count=removed, days=days)

    service = TimerService(SWEEP_SECONDS, sweep)
    service.clock = clock
    return service
