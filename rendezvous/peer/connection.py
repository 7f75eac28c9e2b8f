"""What ``connect()`` and ``listen()`` hand over: a ``Connection``, and the ``Attempt`` records.

A ``Connection`` is a datagram path to the peer over the pair (or punched
stream) that won. Application datagrams carry one leading byte, 0xD7 (a
QUIC-range first byte, RFC 9443: never STUN), so checks, keepalives
(Binding indications, RFC 8445 §11) and data share a socket; on an ICE
path consent checks (RFC 7675) notice a peer that has gone. ``Attempt``
says how one technique ended; ``ConnectError`` carries them all when no
path was found.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rendezvous.peer.ice import CONSENT_INTERVAL_SECONDS
from rendezvous.stun.addresses import Address

if TYPE_CHECKING:
    from rendezvous.peer.checks import _Session

log = Logger()

DATA_MARK = b"\xd7"
MAX_DATAGRAM_BYTES = 65506  # a UDP payload less the mark; also fits a stream frame


class ConnectError(Exception):
    """connect() could not reach the peer; ``attempts`` says what was tried."""

    def __init__(self, reason: str, attempts: list | None = None) -> None:
        super().__init__(reason)
        self.attempts = attempts or []


@dataclass(frozen=True)
class Attempt:
    """One technique tried: its name, how long it took and how it ended."""

    technique: str
    duration_ms: float
    outcome: str  # "succeeded", "failed", "selected", "not-selected"
    detail: str = ""


class Connection:
    """A datagram path to a peer.

    Known data are attributes: ``peer`` (user name), ``path`` ("udp-direct",
    "udp-predicted", "udp-birthday", "turn-udp", "turn-tcp", "turn-tls"),
    ``local`` and ``remote`` (the selected pair's addresses), ``attempts``
    (list of Attempt), ``keepalive_seconds`` (the interval of Binding
    indications). ``send(bytes)`` sends one datagram; ``set_receiver(f)``
    has ``f(bytes)`` called for each one that arrives; ``close()`` frees the
    sockets, the UPnP mapping and the relay allocation, and returns a
    Deferred that fires when done. ``when_lost()`` fires with a reason when
    the path is lost: the connection it rides ends (the punched TCP stream, or
    the TCP/TLS connection to the relay), or, on an ICE path (direct UDP or
    through the relay), the peer stops answering the consent checks sent
    every 4-6 s for ``consent_timeout_seconds`` (RFC 7675; default 30). The
    punched stream gets TCP keepalives that end it after as long a silence.
    Once lost, ``send`` drops what it is given.

    Under a session the connection is handed over on the first relayed pair
    that works, before the checks end (``settled`` is then False): when they
    select a direct pair or the punched stream, the connection moves to it
    (``on_path_change(f)`` has ``f(path)`` called) and the relay is released
    after RELAY_GRACE_SECONDS; data from the old path is still taken until
    then. ``when_settled()`` fires with the path once the checks are over.
    """

    def __init__(self, peer: str, path: str, local: Address, remote: Address, attempts: list[Attempt],
                 session: _Session, keepalive_seconds: float, base: str, settled: bool = True) -> None:
        self.peer, self.path, self.local, self.remote, self.attempts = peer, path, local, remote, attempts
        self.keepalive_seconds = keepalive_seconds
        self.base = base  # the local socket (ICE base) it sends from: "main", "relay", "tcp", "spray-N"
        self.settled = settled
        self._path_callbacks: list = []
        self._settled_waiters: list[Deferred] = []
        self._session = session
        self._receiver = None
        self._early: list[bytes] = []
        self._closed: Deferred | None = None
        self._lost: str | None = None
        self._lost_waiters: list[Deferred] = []
        self.signaling = None  # the login connect() made, closed with the connection
        self._keepalive = LoopingCall(self._keep_alive)
        self._keepalive.clock = session.reactor
        self._keepalive.start(keepalive_seconds, now=False)
        self._consent = None  # the next consent check (ICE paths only: the punched stream has none)
        if session.agent.consent_pair is not None:
            self._consent = session.reactor.callLater(self._consent_interval(), self._check_consent)

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.path} {self.local} -> {self.remote}>"

    def send(self, data: bytes) -> None:
        """Send one datagram to the peer (at most MAX_DATAGRAM_BYTES; small ones travel best).

        Raises ValueError for a larger one."""
        if len(data) > MAX_DATAGRAM_BYTES:
            raise ValueError(f"a datagram is at most {MAX_DATAGRAM_BYTES} bytes, not {len(data)}")
        if self._lost is None:
            self._session._write_one(self.base, self.remote, DATA_MARK + bytes(data))

    def set_receiver(self, receiver) -> None:
        """Call ``receiver(data)`` for every datagram from the peer (queued ones first)."""
        self._receiver = receiver
        early, self._early = self._early, []
        for data in early:
            receiver(data)

    def _deliver(self, data: bytes) -> None:
        if self._receiver is None:
            if len(self._early) < 64:
                self._early.append(data)
        else:
            self._receiver(data)

    def _keep_alive(self) -> None:
        """RFC 8445 §11: a Binding indication keeps the NAT bindings of the path open."""
        self._session._write_one(self.base, self.remote, self._session.agent.indication())

    def on_path_change(self, callback) -> None:
        """Call ``callback(path)`` each time the connection moves to another path."""
        self._path_callbacks.append(callback)

    def when_settled(self) -> Deferred:
        """A Deferred firing with the path once the checks are over (at once if they are)."""
        if self.settled:
            return succeed(self.path)
        waiter: Deferred = Deferred()
        self._settled_waiters.append(waiter)
        return waiter

    def _settle(self, path: str, base: str, local: Address, remote: Address) -> None:
        """The checks are over: stay on the path, or move to the one they selected."""
        if self._closed is not None:
            return
        moved = (base, remote) != (self.base, self.remote)
        self.path, self.base, self.local, self.remote, self.settled = path, base, local, remote, True
        if base == "tcp":  # the punched stream has no ICE pair: its TCP keepalives are its consent, and the
            # relayed pair watched until now goes with the relay (its silence must not lose this path)
            self._session.agent.watched = None
            consent, self._consent = self._consent, None
            if consent is not None and consent.active():
                consent.cancel()
        if self._consent is None and self._session.agent.consent_pair is not None and self._lost is None:
            self._consent = self._session.reactor.callLater(self._consent_interval(), self._check_consent)
        if moved:
            log.info("the session to {peer} moved to {path}", peer=self.peer, path=path)
            for callback in list(self._path_callbacks):
                callback(path)
        waiters, self._settled_waiters = self._settled_waiters, []
        for waiter in waiters:
            waiter.callback(path)

    def when_lost(self) -> Deferred:
        """A Deferred firing with the reason (str) if the path's connection ends before ``close()``."""
        if self._lost is not None:
            return succeed(self._lost)
        waiter: Deferred = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def _consent_interval(self) -> float:
        """RFC 7675 §5.1: 5 s (at most a sixth of the timeout), randomized to 0.8-1.2 times."""
        timeout = self._session.agent.consent_timeout_seconds
        return min(CONSENT_INTERVAL_SECONDS, timeout / 6) * random.uniform(0.8, 1.2)

    def _check_consent(self) -> None:
        self._consent = None
        session = self._session
        now = session.reactor.seconds()
        if session.agent.consent_expired(now):
            self._path_lost(f"consent expired: no answer to a consent check for "
                            f"{session.agent.consent_timeout_seconds:g} s (RFC 7675)")
            return
        send = session.agent.consent_check(now)
        if send is not None:
            session._write([send])
        self._consent = session.reactor.callLater(self._consent_interval(), self._check_consent)

    def _stop_timers(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        consent, self._consent = self._consent, None
        if consent is not None and consent.active():
            consent.cancel()

    def _path_lost(self, reason: str) -> None:
        if self._closed is not None or self._lost is not None:
            return
        self._stop_timers()
        self._lost = reason
        log.info("the {path} path to {peer} is lost: {reason}", path=self.path, peer=self.peer, reason=reason)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(reason)

    def close(self) -> Deferred:
        """Close the sockets and release the relay allocation; fires when done."""
        waiters, self._settled_waiters = self._settled_waiters, []
        for waiter in waiters:  # closed before the checks were over: this is the path it ended on
            waiter.callback(self.path)
        if self._closed is None:
            self._stop_timers()
            self._closed = self._session.close()
            if self.signaling is not None:
                maybeDeferred(self.signaling.close).addErrback(lambda _: None)
        return self._closed
