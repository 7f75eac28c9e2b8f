"""Deleting field-test records past the operator's ``--results-retention-days``."""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rendezvous.node.results.store import ResultsStore

log = Logger()

DAY_SECONDS = 86400
SWEEP_SECONDS = 3600


def retention_service(store: ResultsStore, clock, days: int) -> TimerService:
    """Sweeps old records at start and every SWEEP_SECONDS."""

    def swept(removed: int) -> None:
        if removed:
            log.info("removed {count} field-test results older than {days} days", count=removed, days=days)

    def sweep() -> Deferred:
        """Fires when done; a failure (the database away) is logged and the next sweep tries again."""
        return store.expire(clock.seconds() - days * DAY_SECONDS).addCallbacks(
            swept, lambda f: log.warn("field-test results not swept: {error}", error=f.getErrorMessage()))

    service = TimerService(SWEEP_SECONDS, sweep)
    service.clock = clock
    return service
