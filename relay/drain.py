"""Draining a node: SIGUSR1 stops new work, then the process ends.

On SIGUSR1 the relay answers new Allocates with 300 Try Alternate naming
``--alternate-server`` (RFC 8489 §10, ALTERNATE-SERVER), or 508 without one;
other hooks run too (the super node redirects its signaling sessions to
other super nodes); ``/readyz`` turns 503. The process stops when the last
allocation (and, on a super node, the last signaling session) has ended,
or after ``--drain-timeout`` seconds.
"""

import signal

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class DrainService(service.Service):
    """Installs the SIGUSR1 handler and ends the process once drained."""

    def __init__(self, reactor, turn=None, timeout_seconds: float = 600, hooks=(), sessions=None) -> None:
        self.reactor = reactor
        self.turn = turn
        self.sessions = sessions  # a callable counting other work to wait for
        self.timeout_seconds = timeout_seconds
        self.hooks = list(hooks)
        self.draining = False
        self._deadline = None
        self._check = LoopingCall(self._maybe_stop)
        self._check.clock = reactor
        self._previous = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGUSR1, lambda signum, frame: self.reactor.callFromThread(self.drain))

    def stopService(self):
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
        if self._check.running:
            self._check.stop()
        return super().stopService()

    def drain(self) -> None:
        """Stop taking new work; stop the process when the work in hand is done."""
        if self.draining:
            return
        self.draining = True
        self._deadline = self.reactor.seconds() + self.timeout_seconds
        if self.turn is not None:
            self.turn.draining = True
        for hook in self.hooks:
            hook()
        log.info("draining: {count} allocations left, stopping within {timeout} s",
                 count=len(self.turn.allocations) if self.turn else 0, timeout=self.timeout_seconds)
        self._check.start(1.0, now=True)

    def _maybe_stop(self) -> None:
        left = len(self.turn.allocations) if self.turn is not None else 0
        sessions = self.sessions() if self.sessions is not None else 0
        if left + sessions == 0 or self.reactor.seconds() >= self._deadline:
            log.info("drained ({count} allocations, {sessions} sessions left); stopping",
                     count=left, sessions=sessions)
            self._check.stop()
            self.reactor.stop()
