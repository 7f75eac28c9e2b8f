"""A logged-in client's spare relay allocation (RFC 8656), made before a session needs one.

Every session starts on the relay, so its first byte waits for an
allocation: behind a web-only firewall that is a TCP and a TLS handshake
and two TURN round trips, with the Python work of each, on the session's
critical path. As iroh keeps its connection to a home relay, a ``Client``
keeps one allocation ready: the next session's gathering takes it
(``take``; one still being made goes to that session when it comes) and a
new one is made REPLENISH_SECONDS later, off that session's way. The relay
refuses refreshes made with expired REST credentials, so a spare is
replaced after a quarter of its credentials' ttl, leaving the session that
takes it at least another quarter; it is released (Refresh 0) at close.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from rendezvous.peer.relay_race import race

log = Logger()

REPLENISH_SECONDS = 5.0  # after a take: the next spare is made once that session is under way
RETRY_SECONDS = 60.0  # after a failed race (no relay answered), or without credentials
MIN_KEEP_SECONDS = 60.0


class SpareRelay:
    """One allocation on the node's relay, kept ready for the next session (``Client`` options
    ``spare_relay``); made with the client's relay transports, NAT64 and TLS options."""

    def __init__(self, reactor, signaling, options, nat64=None) -> None:
        self.reactor, self.signaling, self.options, self.nat64 = reactor, signaling, options, nat64
        self.ready: tuple | None = None  # (TurnClient, transport, relayed address)
        self.made = 0  # allocations made, for tests and logs
        self._making: Deferred | None = None
        self._taker: Deferred | None = None  # a session waiting for the one being made
        self._timer = None
        self.closed = False

    def start(self, delay: float = 0.0) -> None:
        """Make a spare in ``delay`` seconds (unless one is being made); a pending replacement moves."""
        if self.closed:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._make)

    def take(self) -> Deferred:
        """Fires with the spare (TurnClient, transport, relayed address), now its caller's, or None; one
        being made is handed over when it comes. The next spare follows REPLENISH_SECONDS later."""
        if self._taker is not None or self.closed:
            return succeed(None)
        ready, self.ready = self.ready, None
        self.start(REPLENISH_SECONDS)
        if ready is not None and ready[0].allocated:
            return succeed(ready)
        if ready is not None:
            ready[0].close()  # lost meanwhile (its connection dropped, a refresh failed)
        if self._making is None:
            return succeed(None)
        self._taker = Deferred()
        return self._taker

    def _make(self) -> None:
        self._timer = None
        if self._making is None and not self.closed:
            self._making = Deferred.fromCoroutine(self._allocate())

    async def _allocate(self) -> None:
        turn, result = None, None
        try:
            turn = await self.signaling.turn_credentials() if self.signaling.connected else None
            if turn:
                result = await race(self.reactor, self.signaling, turn, self.options.relay_transports,
                                    self.options.tls, self.options.tls_verify, self.nat64, self._failed)
        except Exception:  # a bug, not a relay's refusal (race reports those): retried as a failed race is
            log.failure("making a spare relay allocation failed")
        self._making = None
        taker, self._taker = self._taker, None
        if taker is not None:
            taker.callback(result)  # a session was waiting for this one
            self.start(REPLENISH_SECONDS)
            return
        if result is None or self.closed:
            if result is not None:
                result[0].close()
            elif not self.closed:
                self.start(RETRY_SECONDS)
            return
        self.made += 1
        if self.ready is not None:
            self.ready[0].close()
        self.ready = result
        ttl = turn.get("ttl") if isinstance(turn.get("ttl"), (int, float)) else 0
        self.start(max(MIN_KEEP_SECONDS, ttl / 4))  # a replacement, before the credentials grow old

    def _failed(self, technique: str, started: float, outcome: str, detail: str) -> None:
        log.info("spare relay: {technique} {outcome} ({detail})", technique=technique, outcome=outcome,
                 detail=detail)

    def close(self) -> Deferred:
        """Stop making spares and release the one held; fires when it is released."""
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        ready, self.ready = self.ready, None
        return ready[0].close() if ready is not None else succeed(None)
