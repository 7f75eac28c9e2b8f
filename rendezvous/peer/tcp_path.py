"""The punched TCP path of a session, mixed into ``checks._Session``.

TCP hole punching (``rendezvous.peer.tcp_punch``) runs from the instant the
node gives (a simultaneous open needs an instant both sides share), from
the TCP port whose mapping each side learned from the node and advertised
as ``protocol: "tcp"`` candidates. Its connection is used only when no
direct UDP pair wins: the controlling side selects it once direct UDP has
failed (or ``relay_wait_seconds`` passed without it), and holds the
relayed pair back while the punch is under way; when direct UDP cannot
work at all, nothing waits for it. On the stream, each datagram is a
frame: a 2-byte big-endian length, then the bytes (docs/EMBEDDING.md).
The controlled side's first frame, 0xD8, proves it knows the controlling
side's ICE password; the controlling side's 0xD9 frame does the same and
selects the stream.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver

from rendezvous.peer.connection import DATA_MARK
from rendezvous.peer.tcp_punch import punch_tcp
from rendezvous.stun.addresses import Address
from rendezvous.stun.integrity import short_term_key
from rendezvous.wire.streams import send_at_once

if TYPE_CHECKING:
    from rendezvous.peer.checks import _Session

log = Logger()

HELLO_MARK = b"\xd8"    # on a punched TCP stream: the controlled side proves itself
SELECT_MARK = b"\xd9"   # ... and the controlling side selects the stream
CLOSE_FLUSH_SECONDS = 2.0  # a closing stream's frames still unsent by then are dropped (a reset)


class _TcpPath:
    """The punch toward the peer's TCP candidate, the proofs on its stream, and when to select it.

    Uses the session's ``reactor``, ``options``, ``agent``, ``settled``,
    ``connection``, ``spray``, its TCP port and mapping (``_Gathering``), and
    its ``_tick()``, ``_schedule()``, ``_check_done()``, ``_complete()`` and
    ``_attempt()``."""

    def _init_tcp_path(self) -> None:
        self.tcp_punch: Deferred | None = None   # the punch under way
        self.tcp_stream: _Stream | None = None   # its connection, once the peer proved itself
        self.tcp_technique = ""
        self._tcp_started: float | None = None  # while the punch counts as a technique tried
        self._tcp_wake: float | None = None

    def _start_tcp(self, target: Address, now: float) -> None:
        """Punch toward the peer's one TCP candidate both sides agree on; hold the relay meanwhile."""
        self.agent.hold_relayed = True
        self._tcp_started = self.reactor.seconds()
        self.tcp_punch = punch_tcp(self.reactor, self.tcp_port, [target], now, self.options.tcp_punch_seconds,
                                   Factory.forProtocol(lambda: _Stream(self)), low_ttl=self.options.tcp_low_ttl)
        self.tcp_punch.addCallbacks(self._tcp_connected, self._tcp_failed)

    def _tcp_connected(self, result) -> None:
        stream, _, technique = result
        self.tcp_technique = technique
        if self.settled:
            stream.transport.abortConnection()
        elif not self.agent.controlling:
            stream.write_frame(HELLO_MARK + self._proof(HELLO_MARK, self.agent.local_ufrag, self.agent.remote_ufrag))

    def _tcp_failed(self, failure) -> None:
        self.tcp_punch = None
        if failure.check(CancelledError) or self.settled:
            return
        self._attempt("tcp-punch", self._tcp_started, "failed", failure.getErrorMessage())
        self._tcp_started = None
        self.agent.hold_relayed = False
        self._check_done()
        self._schedule()

    def _proof(self, mark: bytes, sender: str, receiver: str) -> bytes:
        """HMAC of the ufrags keyed with the receiver's ICE password (which only the two peers know)."""
        key = short_term_key(self.agent.remote_pwd) if sender == self.agent.local_ufrag else self.agent._local_key
        return hmac.new(key, mark + f"{sender}:{receiver}".encode(), hashlib.sha256).digest()[:16]

    def stream_frame(self, stream: _Stream, frame: bytes) -> None:
        """A frame on the punched stream: the peer's proof, or data once the stream is selected."""
        mark = frame[:1]
        if mark == DATA_MARK:
            if self.connection is not None and self.connection.base == "tcp" and stream is self.tcp_stream:
                self.connection._deliver(frame[1:])
        elif mark in (HELLO_MARK, SELECT_MARK) and not self.settled:
            expected_mark = HELLO_MARK if self.agent.controlling else SELECT_MARK
            proof = self._proof(mark, self.agent.remote_ufrag or "", self.agent.local_ufrag)
            if mark != expected_mark or not hmac.compare_digest(frame[1:], proof):
                stream.transport.abortConnection()
                return
            self.tcp_stream = stream
            if mark == SELECT_MARK:
                self._complete_tcp()
            else:
                self._tick()

    def _select_tcp_when_due(self, now: float) -> float | None:
        """Controlling: select the proven stream once direct UDP cannot win; else when to look again."""
        if (self.settled or not self.agent.controlling or self.tcp_stream is None
                or self.agent.selected is not None):
            return None
        if any(not p.relayed for p in self.agent.valid()):
            return None  # direct UDP works: the agent nominates it
        # Hopeless as far as the candidates so far tell (a side with a TCP mapping and no UDP one
        # yet): the proven stream is taken at once, not after the blocked side's end-of-candidates
        # (its STUN over UDP giving up, 1.4 s).
        hopeless = self._udp_hopeless or self._hopeless_so_far()
        udp_pending = not hopeless and (
            any(not p.relayed and self.agent._pending(p) for p in self.agent.pairs.values())
            or (self.spray is not None and self.spray.deadline is not None))
        wake = (self.agent.started_at or now) + self.options.relay_wait_seconds
        if udp_pending and now < wake:
            return wake
        self.tcp_stream.write_frame(SELECT_MARK + self._proof(SELECT_MARK, self.agent.local_ufrag,
                                                              self.agent.remote_ufrag))
        self._complete_tcp()
        return None

    def _complete_tcp(self) -> None:
        stream = self.tcp_stream
        peer = stream.transport.getPeer()
        host = stream.transport.getHost()
        self._complete("tcp-punch", "tcp", self.tcp_mapped or (host.host, host.port), (peer.host, peer.port),
                       self.tcp_technique)

    def stream_lost(self, stream: _Stream) -> None:
        """The punched stream closed: before selection the relay may win after all; after, the path is lost."""
        if stream is self.tcp_stream and self.connection is not None and self.connection.base == "tcp":
            self.connection._path_lost("the TCP connection closed")
        elif stream is self.tcp_stream and not self.settled:
            self.tcp_stream = self.tcp_punch = None
            self._tcp_started = None
            self.agent.hold_relayed = False
            self._check_done()
            self._schedule()

    def _close_tcp(self) -> Deferred:
        """Stop the punch and close the stream; fires once its connection is gone."""
        punch, self.tcp_punch = self.tcp_punch, None
        if punch is not None:
            punch.cancel()
        stream, self.tcp_stream = self.tcp_stream, None
        if self._tcp_placeholder is not None:
            self._tcp_placeholder.close()
            self._tcp_placeholder = None
        return stream.close() if stream is not None else succeed(None)


class _Stream(Int16StringReceiver):
    """A punched TCP connection carrying frames: a 2-byte big-endian length, then that many bytes."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.lost = False
        self._closed: list[Deferred] = []
        self._reset = None

    def connectionMade(self) -> None:
        # The stream's consent: a peer that stops acknowledging ends it (and so the path).
        _keep_alive(self.transport.getHandle(), self.session.options.consent_timeout_seconds)
        send_at_once(self.transport)  # a frame (ICE check, QUIC flight) must not wait for the last one's ACK

    def write_frame(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            self.sendString(data)

    def stringReceived(self, frame: bytes) -> None:
        if frame:
            self.session.stream_frame(self, frame)

    def close(self) -> Deferred:
        """Send the frames written so far, then a FIN (RFC 9293 §3.6): a reset would drop what the
        session wrote in the same tick, such as the select frame or QUIC's CONNECTION_CLOSE. A peer
        that does not read them within CLOSE_FLUSH_SECONDS gets the reset. Fires once closed."""
        if self.lost or self.transport is None:
            return succeed(None)
        closed: Deferred = Deferred()
        self._closed.append(closed)
        if self._reset is None:
            self._reset = self.session.reactor.callLater(CLOSE_FLUSH_SECONDS, self.transport.abortConnection)
            self.transport.loseConnection()
        return closed

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        if self._reset is not None and self._reset.active():
            self._reset.cancel()
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)
        self.session.stream_lost(self)


def _tcp_target(mapped: Address | None, candidates: list[dict]) -> Address | None:
    """The one peer TCP candidate to punch toward, chosen alike on both sides (so both
    open the same connection): its srflx, or its first host one when both sides share
    a public address (one NAT) or it has no srflx."""
    srflx = next((c for c in candidates if c.get("type") == "srflx"), None)
    host = next((c for c in candidates if c.get("type") == "host"), None)
    chosen = srflx if srflx is not None and (mapped is None or mapped[0] != srflx["ip"]) else host or srflx
    return (chosen["ip"], int(chosen["port"])) if chosen is not None else None


def _keep_alive(sock: socket.socket, seconds: float) -> None:
    """End a TCP connection whose peer has gone silent after about ``seconds``: keepalive
    probes when idle (Linux: after seconds/3, then every seconds/6) and TCP_USER_TIMEOUT
    for data left unacknowledged; what the platform lacks is skipped."""
    idle = max(1, round(seconds / 3))
    interval = max(1, round(seconds / 6))
    count = max(1, round((seconds - idle) / interval))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count),
                            ("TCP_USER_TIMEOUT", int(seconds * 1000))):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as e:
        log.debug("no TCP keepalives on the punched stream: {error}", error=e)
