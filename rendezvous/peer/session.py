"""An encrypted, authenticated session to a peer: QUIC over the connection's datagram path.

QUIC (RFC 9000, TLS 1.3 per RFC 9001, DATAGRAM frames per RFC 9221) is
aioquic's sans-IO ``QuicConnection``; this module only feeds it datagrams
and ``now`` and runs its timer on the reactor. QUIC sees one fixed peer
address: the path underneath (``Connection``: the relay, a direct UDP pair
or a punched TCP stream) is chosen below it, so QUIC never migrates.

Both sides present their identity's certificate (the listening side asks
for the client's, RFC 8446 §4.3.2) and each checks the other's against the
fingerprint that came through the node (RFC 8122 §5, as WebRTC does); a
mismatch ends the session before the application sees it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from rendezvous.peer.identity import Identity, fingerprint
from rendezvous.peer.quic_streams import STREAM_RESET_CODE, PeerAddress, StreamTransport

log = Logger()

ALPN = "txrendezvous/1"
PEER_ADDRESS = ("0.0.0.0", 0)  # what QUIC calls the peer: the path below is not its business
IDLE_TIMEOUT_SECONDS = 60.0
MAX_DATAGRAM_FRAME_BYTES = 1100  # fits the 1200-byte QUIC packets with room for the headers
FINGERPRINT_MISMATCH = 0x101  # our application close code
CLOSE_GRACE_SECONDS = 3.0  # how long close() waits for the peer to acknowledge finished streams
MAX_UNCLAIMED_STREAMS = 16  # peer streams (not frames) held until the application accepts streams


class SessionError(Exception):
    """The session could not be set up or has ended; the message says why."""


class _ListeningConnection(QuicConnection):
    """The QUIC server role, asking the client for its certificate (RFC 8446 §4.3.2)."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._request_client_certificate = True


def _configuration(identity: Identity, is_client: bool) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                                      idle_timeout=IDLE_TIMEOUT_SECONDS, max_datagram_frame_size=65536)
    configuration.certificate = identity.certificate
    configuration.private_key = identity.private_key
    return configuration


class Session:
    """A QUIC session over a ``Connection``: streams, datagrams, and the path underneath.

    Known data are attributes: ``peer`` and ``user`` (names), ``peer_fingerprint``,
    ``connection`` (the path: ``path``, ``attempts``, ``local``, ``remote``).
    ``open_stream(protocol)`` starts a stream and connects ``protocol`` to it;
    streams the peer opens go to ``stream_factory.buildProtocol(PeerAddress)``
    (set it with ``accept_streams``); ``send_datagram`` sends an unreliable
    datagram and ``set_datagram_receiver(f)`` has ``f(bytes)`` called for
    each that arrives; ``when_closed()`` fires with the reason the session
    ended; ``close()`` ends it and frees the path.
    """

    def __init__(self, reactor, connection, identity: Identity, peer_fingerprint: str, is_client: bool,
                 user: str = "") -> None:
        self.reactor = reactor
        self.connection = connection
        self.peer = connection.peer
        self.user = user
        self.peer_fingerprint = peer_fingerprint
        self.is_client = is_client
        self.stream_factory = None
        self._configuration = _configuration(identity, is_client)
        self._quic: QuicConnection | None = None
        self._timer = None
        self._batch = None  # the pump after datagrams that arrived in this reactor turn
        self._streams: dict[int, StreamTransport] = {}
        self._datagram_receiver: Callable[[bytes], None] | None = None
        self._early_datagrams: list[bytes] = []
        self._unclaimed: list[events.StreamDataReceived] = []
        self._refused: set[int] = set()  # peer streams refused: later frames are dropped
        self._ready: Deferred = Deferred()
        self._closed_reason: str | None = None
        self._closed_waiters: list[Deferred] = []
        self._closing: Deferred | None = None  # close() was called; fires when the path is freed
        self._grace = None  # the timer that closes at the latest
        self.id = ""  # the calling side's name for the session, sent again with a restart
        self.restarter = None  # the calling side: finds a new path when this one is lost
        self._generation = 0  # ICE restarts begun; a path found by an older one is dropped
        self._restarting = False  # the calling side's restart is in flight
        self._restart_waiters: list[Deferred] = []
        self._path_callbacks: list[Callable[[str], None]] = []
        self._use(connection)
        if is_client:
            self._quic = QuicConnection(configuration=self._configuration)
            self._quic.connect(PEER_ADDRESS, now=reactor.seconds())
            self._pump()

    @property
    def path(self) -> str:
        """The path the session runs on now ("udp-direct", "turn-udp", "tcp-punch", ...)."""
        return self.connection.path

    @property
    def attempts(self) -> list:
        return self.connection.attempts

    def __repr__(self) -> str:
        return f"<Session {self.user} -> {self.peer} over {self.path}>"

    def handshake(self) -> Deferred:
        """Fires with this session once the peer proved the pinned fingerprint; fails with SessionError."""
        return self._ready

    # -- the application's side --------------------------------------------

    def open_stream(self, protocol) -> StreamTransport:
        """Start a bidirectional stream and connect ``protocol`` to it; returns its transport."""
        if self._quic is None or self._closed_reason is not None:
            raise SessionError(f"the session is {'closed' if self._closed_reason else 'not set up'}")
        stream_id = self._quic.get_next_available_stream_id()
        transport = self._streams[stream_id] = StreamTransport(self, stream_id, protocol)
        protocol.makeConnection(transport)
        return transport

    def accept_streams(self, factory) -> None:
        """Have ``factory.buildProtocol(address)`` make a protocol for each stream the peer opens
        (a PeerAddress; returning None refuses the stream)."""
        self.stream_factory = factory
        unclaimed, self._unclaimed = self._unclaimed, []
        for event in unclaimed:
            self._stream_data(event)
        if unclaimed:
            self._pump()

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram (RFC 9221) of at most MAX_DATAGRAM_FRAME_BYTES; raises ValueError
        for a larger one. Dropped silently once the session is closed."""
        if len(data) > MAX_DATAGRAM_FRAME_BYTES:
            raise ValueError(f"a session datagram is at most {MAX_DATAGRAM_FRAME_BYTES} bytes, not {len(data)}")
        if self._quic is not None and self._closed_reason is None:
            self._quic.send_datagram_frame(bytes(data))
            self._pump()

    def set_datagram_receiver(self, receiver: Callable[[bytes], None]) -> None:
        """Call ``receiver(data)`` for each datagram from the peer (those queued first)."""
        self._datagram_receiver = receiver
        early, self._early_datagrams = self._early_datagrams, []
        for data in early:
            receiver(data)

    def on_path_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(path)`` each time the session moves to another path: from the relay it
        starts on to a direct pair or the punched stream once the checks confirm one, and to the
        new path a restart finds when one is lost."""
        self._path_callbacks.append(callback)

    def when_settled(self) -> Deferred:
        """Fires with the path once the checks are over (the session may have moved to it)."""
        return self.connection.when_settled()

    def when_closed(self) -> Deferred:
        """A Deferred firing with the reason (str) when the session ends, by either side or a lost path."""
        if self._closed_reason is not None:
            return succeed(self._closed_reason)
        waiter: Deferred = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    def close(self) -> Deferred:
        """Close the session and the path; fires when the path is freed.

        Streams this side finished (``loseConnection``) first get up to
        CLOSE_GRACE_SECONDS for the peer to acknowledge their last bytes,
        so a clean end of input is never cut off; then CONNECTION_CLOSE."""
        if self._closing is None:
            self._closing = Deferred()
            if self._closed_reason is not None:
                self._closed_with(self.connection.close())
            elif self._quic is None or not self._unacknowledged():
                self._close_now()
            else:
                self._grace = self.reactor.callLater(CLOSE_GRACE_SECONDS, self._close_now)
        return self._closing

    def _unacknowledged(self) -> bool:
        """Whether a stream's FIN is sent or queued but not yet acknowledged (RFC 9000 §3.1 "Data Sent")."""
        return any(stream.sender._buffer_fin is not None and not stream.sender.is_finished
                   for stream in self._quic._streams.values())

    def _close_now(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if self._quic is not None and self._closed_reason is None:
            self._quic.close(reason_phrase="closed")
            self._pump()
        self._ended("closed by this side")

    # -- QUIC underneath ----------------------------------------------------

    def _datagram(self, data: bytes) -> None:
        now = self.reactor.seconds()
        if self._quic is None:
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=self._configuration.connection_id_length)
            except ValueError:
                return
            if header.packet_type != QuicPacketType.INITIAL:
                return  # only a client's Initial may open the connection (RFC 9000 §7)
            self._quic = _ListeningConnection(configuration=self._configuration,
                                              original_destination_connection_id=header.destination_cid)
        self._quic.receive_datagram(data, PEER_ADDRESS, now)
        if self._batch is None:  # once per read batch: the reactor reads every datagram waiting first
            self._batch = self.reactor.callLater(0, self._pump)

    def _send_stream(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._quic is not None and self._closed_reason is None:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
            self._pump()

    def _reset_stream(self, stream_id: int, receiving: bool = True) -> None:
        """End both halves of a stream at once: RESET_STREAM for ours and, while the peer may still
        send, STOP_SENDING for theirs (RFC 9000 §3.5), so QUIC can forget the stream."""
        if self._quic is not None and self._closed_reason is None:
            try:
                self._quic.reset_stream(stream_id, error_code=STREAM_RESET_CODE)
                if receiving:
                    self._quic.stop_stream(stream_id, error_code=STREAM_RESET_CODE)
            except ValueError:  # that half is already finished
                pass
            self._pump()

    def _forget_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _on_timer(self) -> None:
        self._timer = None
        if self._quic is not None:
            self._quic.handle_timer(now=self.reactor.seconds())
            self._pump()

    def _pump(self) -> None:
        """Send what QUIC has to send, handle its events, and arm its timer."""
        if self._batch is not None and self._batch.active():
            self._batch.cancel()
        self._batch = None
        quic = self._quic
        now = self.reactor.seconds()
        for data, _ in quic.datagrams_to_send(now=now):
            self.connection.send(data)
        event = quic.next_event()
        while event is not None:
            self._event(event)
            event = quic.next_event()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        deadline = quic.get_timer()
        if deadline is not None and self._closed_reason is None:
            self._timer = self.reactor.callLater(max(0.0, deadline - now), self._on_timer)
        if self._grace is not None and not self._unacknowledged():
            self._close_now()  # every FIN acknowledged: no need to wait out the grace period

    def _event(self, event) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self._verify_peer()
        elif isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, (events.StreamReset, events.StopSendingReceived)):
            transport = self._streams.get(event.stream_id)
            if transport is not None:  # a reset of either half ends the stream; ours is reset in turn
                what = "reset" if isinstance(event, events.StreamReset) else "stopped reading"
                self._reset_stream(event.stream_id, receiving=isinstance(event, events.StopSendingReceived))
                transport.lost(Failure(ConnectionLost(f"the peer {what} the stream ({event.error_code})")))
        elif isinstance(event, events.DatagramFrameReceived):
            if self._datagram_receiver is not None:
                self._datagram_receiver(event.data)
            elif len(self._early_datagrams) < 64:
                self._early_datagrams.append(event.data)
        elif isinstance(event, events.ConnectionTerminated):
            self._peer_closed(event)

    def _peer_closed(self, event: events.ConnectionTerminated) -> None:
        reason = event.reason_phrase or f"error {event.error_code:#x}"
        self._ended(f"the peer closed the session: {reason}")

    def _verify_peer(self) -> None:
        certificate = self._quic.tls._peer_certificate
        presented = fingerprint(certificate) if certificate is not None else "no certificate"
        if presented != self.peer_fingerprint:
            reason = (f"{self.peer} presented the certificate {presented}, not the fingerprint "
                      f"{self.peer_fingerprint} the node passed on")
            self._quic.close(error_code=FINGERPRINT_MISMATCH, reason_phrase="fingerprint mismatch")
            for data, _ in self._quic.datagrams_to_send(now=self.reactor.seconds()):
                self.connection.send(data)  # the peer learns at once, not at its idle timeout
            self._ended(reason)
            return
        if not self._ready.called:
            self._ready.callback(self)

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        transport = self._streams.get(event.stream_id)
        if transport is not None:
            transport.data_received(event.data, event.end_stream)
        elif (event.stream_id & 1) == (0 if self.is_client else 1) or event.stream_id in self._refused:
            pass  # late data for a stream of ours that has ended, or for one we refused
        elif self.stream_factory is None and not event.stream_id & 2 and (
                event.stream_id in {e.stream_id for e in self._unclaimed}
                or len({e.stream_id for e in self._unclaimed}) < MAX_UNCLAIMED_STREAMS):
            # the application has not called accept_streams yet: held whole (QUIC's per-stream credit bounds it)
            self._unclaimed.append(event)
        else:
            self._accept(event)

    def _accept(self, event: events.StreamDataReceived) -> None:
        """A stream the peer opened: a protocol from the factory, or a refusal (RFC 9000 §3.5)."""
        protocol = None
        if self.stream_factory is not None and not event.stream_id & 2:  # we use bidirectional streams only
            protocol = self.stream_factory.buildProtocol(PeerAddress(self.peer, event.stream_id))
        if protocol is None:
            self._refused.add(event.stream_id)  # its later frames are dropped, not offered again
            self._quic.stop_stream(event.stream_id, error_code=STREAM_RESET_CODE)
            if not event.stream_id & 2:
                self._quic.reset_stream(event.stream_id, error_code=STREAM_RESET_CODE)
            return
        transport = self._streams[event.stream_id] = StreamTransport(self, event.stream_id, protocol)
        protocol.makeConnection(transport)
        transport.data_received(event.data, event.end_stream)

    def _use(self, connection) -> None:
        self.connection = connection
        connection.set_receiver(self._datagram)
        connection.when_lost().addCallback(lambda reason: self._path_lost(connection, reason))
        connection.on_path_change(self._moved)

    def _moved(self, path: str) -> None:
        for callback in list(self._path_callbacks):
            callback(path)

    def replace_path(self, connection) -> None:
        """Run on ``connection`` from now on (a restart's new path); the old one is closed.
        QUIC sees the same peer and resends what the old path lost."""
        if self._closed_reason is not None:
            connection.close()
            return
        old = self.connection
        self._use(connection)
        old.close()
        log.info("the session to {peer} restarted on {path}", peer=self.peer, path=connection.path)
        self._moved(connection.path)
        if self._quic is not None:
            self._pump()

    def begin_restart(self) -> int:
        """A new ICE restart generation (RFC 8445 §2.4): paths found by older ones are dropped (``adopt``)."""
        self._generation += 1
        return self._generation

    def adopt(self, generation: int, connection) -> bool:
        """Move to ``connection`` if the restart of ``generation`` is still the latest; else close it."""
        if generation != self._generation or self._closed_reason is not None:
            log.info("a stale restart's path to {peer} is dropped", peer=self.peer)
            connection.close()
            return False
        self.replace_path(connection)
        return True

    def restart(self) -> Deferred:
        """The calling side's ICE restart through ``restarter``, one at a time: a restart asked for
        while one runs joins it. Fires with the path it moved to; fails as the restarter did."""
        waiter: Deferred = Deferred()
        self._restart_waiters.append(waiter)
        if not self._restarting:
            self._restarting = True
            self.restarter(self).addBoth(self._restart_over, self.begin_restart())
        return waiter

    def _restart_over(self, result, generation: int) -> None:
        self._restarting = False
        if not isinstance(result, Failure):
            self.adopt(generation, result)
            result = self.path
        waiters, self._restart_waiters = self._restart_waiters, []
        for waiter in waiters:
            waiter.callback(result) if not isinstance(result, Failure) else waiter.errback(result)

    def _path_lost(self, connection, reason: str) -> None:
        """The path under the session is gone: the calling side restarts (ICE restart through the
        node, relay first, or the one already running); the other waits for it, until QUIC's idle
        timeout ends the session. A peer that closed the session first (its CONNECTION_CLOSE came
        in before the punched stream's FIN; QUIC drains, RFC 9000 §10.2.2) ends it here at once."""
        if connection is not self.connection or self._closed_reason is not None:
            return
        if self._quic is not None and self._quic._state is QuicConnectionState.DRAINING:
            self._peer_closed(self._quic._close_event)
            return
        if self.restarter is None:
            log.info("the path to {peer} was lost ({reason}); waiting for its restart", peer=self.peer,
                     reason=reason)
            return
        log.info("the path to {peer} was lost ({reason}); restarting", peer=self.peer, reason=reason)
        self.restart().addErrback(lambda f: self._ended(f"the path was lost: {reason}; no new one: "
                                                        f"{f.getErrorMessage()}"))

    def _ended(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        for timer in (self._timer, self._batch):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._batch = None
        for transport in list(self._streams.values()):
            transport.lost(Failure(ConnectionLost(reason)))
        if not self._ready.called:
            self._ready.errback(SessionError(reason))
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(reason)
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        closed = self.connection.close()  # the path goes with the session, whoever ended it
        if self._closing is not None:
            self._closed_with(closed)

    def _closed_with(self, closed: Deferred) -> None:
        """close()'s Deferred fires when ``closed`` does (once, whichever path closed first)."""
        closed.addBoth(lambda result: None if self._closing.called else self._closing.callback(result))

    def stream_buffered(self, stream_id: int) -> int:
        """Bytes written to the stream that the peer has not acknowledged yet (queued or in flight)."""
        stream = self._quic._streams.get(stream_id) if self._quic is not None else None
        return 0 if stream is None else stream.sender._buffer_stop - stream.sender._buffer_start
