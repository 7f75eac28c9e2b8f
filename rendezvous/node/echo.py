"""The echo service: hands a probe back as it arrived, with the source address seen.

NAT analyzers send a SIP INVITE through it to see whether an ALG on the
path rewrote the payload (the ``alg`` result of ``nat_check``). The probe
and answer formats are in ``rendezvous.wire.echo_probe``; an answer is as
long as its probe, so it amplifies nothing. Anything without the trailer
gets no answer.

``EchoCore`` is sans-IO: ``answer(data, source, now)`` returns the reply or
None, applying a token bucket per source address and one for all sources,
with the per-source table bounded (least recently seen evicted). The UDP
and TCP adapters below only move bytes; a TCP connection carries one probe
(at most ``MAX_PROBE_BYTES``) and is closed after the answer; at most
``MAX_TCP_CONNECTIONS`` are open at once, and more are refused.
"""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from relay.limits import RateLimiter
from rendezvous.wire.echo_probe import MAX_PROBE_BYTES, PROBE_TRAILER, TRAILER_BYTES, reply

TCP_TIMEOUT_SECONDS = 10
MAX_TCP_CONNECTIONS = 256


class EchoCore:
    """Decides whether and what to answer (sans-IO).

    ``per_source_rate`` answers per second per source address (burst
    ``per_source_burst``), ``total_rate`` per second in all (burst of one
    second's worth); ``max_sources`` caps the per-source table.
    """

    def __init__(self, per_source_rate: float = 2.0, per_source_burst: float = 10.0, total_rate: float = 200.0,
                 max_sources: int = 4096) -> None:
        self._per_source = RateLimiter(per_source_burst, per_source_rate, max_sources)
        self._total = RateLimiter(total_rate, total_rate, 1)
        self.answered = 0
        self.dropped = 0

    def answer(self, data: bytes, source: tuple[str, int], now: float) -> bytes | None:
        """The reply to data from source, or None (not a probe, too big, or over a rate)."""
        if len(data) > MAX_PROBE_BYTES or not data.endswith(PROBE_TRAILER):
            self.dropped += 1
            return None
        if not self._per_source.allow(source[0], now) or not self._total.allow(None, now):
            self.dropped += 1
            return None
        self.answered += 1
        return reply(data[:-TRAILER_BYTES], source)


class EchoDatagramProtocol(DatagramProtocol):
    """UDP adapter: one datagram in, at most one (no longer) out."""

    def __init__(self, core: EchoCore, clock) -> None:
        self.core = core
        self.clock = clock

    def datagramReceived(self, data: bytes, addr) -> None:
        answer = self.core.answer(data, addr[:2], self.clock.seconds())
        if answer is not None:
            self.transport.write(answer, addr)


class EchoStreamProtocol(Protocol):
    """TCP adapter: reads one probe (up to MAX_PROBE_BYTES), answers, closes."""

    def __init__(self, core: EchoCore, clock, factory: "EchoStreamFactory") -> None:
        self.core = core
        self.clock = clock
        self.factory = factory
        self.buffer = b""
        self._timeout = None

    def connectionMade(self) -> None:
        self.factory.open += 1
        self._timeout = self.clock.callLater(TCP_TIMEOUT_SECONDS, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(PROBE_TRAILER) or len(self.buffer) > MAX_PROBE_BYTES:
            peer = self.transport.getPeer()
            answer = self.core.answer(self.buffer, (peer.host, peer.port), self.clock.seconds())
            if answer is not None:
                self.transport.write(answer)
            self.buffer = b""
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.factory.open -= 1
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()


class EchoStreamFactory(Factory):
    def __init__(self, core: EchoCore, clock, max_connections: int = MAX_TCP_CONNECTIONS) -> None:
        self.core = core
        self.clock = clock
        self.max_connections = max_connections
        self.open = 0

    def buildProtocol(self, addr) -> EchoStreamProtocol | None:
        """None (the connection is closed at once) when max_connections are open."""
        if self.open >= self.max_connections:
            self.core.dropped += 1
            return None
        return EchoStreamProtocol(self.core, self.clock, self)
