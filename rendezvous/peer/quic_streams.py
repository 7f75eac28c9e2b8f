"""A QUIC stream (RFC 9000 §2) seen by a Twisted ``Protocol`` as its transport.

``write`` sends stream data, ``loseConnection`` ends our direction with a
FIN, ``abortConnection`` resets the stream (RFC 9000 §3.2). The peer's FIN
reaches a protocol that provides ``IHalfCloseableProtocol`` as
``readConnectionLost``; any other protocol sees the stream end once both
directions are finished. ``connectionLost`` is called once, with
``ConnectionDone`` for a clean end and ``ConnectionLost`` for a reset or a
lost session.

The transport is an ``IConsumer``: a registered producer (a streaming
one, or a pull one such as ``FileSender``) is paused while the stream
holds more than WRITE_BUFFER_HIGH_BYTES the peer has not acknowledged,
and resumed once that falls to WRITE_BUFFER_LOW_BYTES, so a large write
never sits whole in memory. aioquic reports no acknowledgements as
events, so a paused stream looks at its buffer every DRAIN_POLL_SECONDS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IConsumer, IHalfCloseableProtocol, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from rendezvous.peer.session import Session

STREAM_RESET_CODE = 0x1  # our application error code for an aborted stream
WRITE_BUFFER_HIGH_BYTES = 1 << 20  # unacknowledged bytes above which the producer is paused
WRITE_BUFFER_LOW_BYTES = 1 << 18  # ... and at or below which it is resumed
DRAIN_POLL_SECONDS = 0.005


@implementer(IAddress)
class PeerAddress:
    """The far end of a session: a user name (and the stream, for streams)."""

    def __init__(self, user: str, stream_id: int | None = None) -> None:
        self.user, self.stream_id = user, stream_id

    def __repr__(self) -> str:
        return f"PeerAddress({self.user!r}, stream={self.stream_id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PeerAddress) and (self.user, self.stream_id) == (other.user, other.stream_id)

    def __hash__(self) -> int:
        return hash((self.user, self.stream_id))


@implementer(ITransport, IConsumer)
class StreamTransport:
    """One bidirectional QUIC stream of a session, as a Twisted transport."""

    disconnecting = False

    def __init__(self, session: Session, stream_id: int, protocol) -> None:
        self.session, self.stream_id, self.protocol = session, stream_id, protocol
        self._sent_fin = False
        self._fin_after_producer = False
        self._received_fin = False
        self._lost = False
        self._lost_callbacks: list = []
        self._producer = None
        self._streaming = False
        self._paused = False
        self._drain_poll = None

    # -- ITransport --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._sent_fin or self._lost:
            return
        self.session._send_stream(self.stream_id, bytes(data), False)
        if self._producer is not None and self._streaming and not self._paused and self._full():
            self._paused = True
            self._producer.pauseProducing()
            self._poll_drain()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Send FIN: the peer reads to the end of what we wrote (and a registered producer wrote)."""
        if self._sent_fin or self._lost:
            return
        if self._producer is not None:
            self._fin_after_producer = self.disconnecting = True
            return
        self._sent_fin = self.disconnecting = True
        self.session._send_stream(self.stream_id, b"", True)
        self._maybe_done()

    def abortConnection(self) -> None:
        """Reset the stream at once (RFC 9000 §19.4); unsent data is dropped."""
        if not self._lost:
            self.session._reset_stream(self.stream_id)
            self.lost(Failure(ConnectionLost("stream aborted")))

    def getPeer(self) -> PeerAddress:
        return PeerAddress(self.session.peer, self.stream_id)

    def getHost(self) -> PeerAddress:
        return PeerAddress(self.session.user, self.stream_id)

    # -- IConsumer ---------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        """Take data from ``producer``: an IPushProducer (``streaming``) is paused and resumed,
        an IPullProducer is asked for more while the stream has room."""
        if self._producer is not None:
            raise RuntimeError(f"a producer is already registered with stream {self.stream_id}")
        if self._lost:
            producer.stopProducing()
            return
        self._producer, self._streaming, self._paused = producer, streaming, False
        if not streaming:
            self._pull()
        elif self._full():
            self._paused = True
            producer.pauseProducing()
            self._poll_drain()

    def unregisterProducer(self) -> None:
        """Stop taking data from the producer; a FIN asked for meanwhile is sent now."""
        self._producer = None
        self._stop_polling()
        if self._fin_after_producer:
            self._fin_after_producer = False
            self.disconnecting = False
            self.loseConnection()

    def buffered(self) -> int:
        """Bytes written to this stream that the peer has not acknowledged yet."""
        return self.session.stream_buffered(self.stream_id)

    def _full(self) -> bool:
        return self.buffered() > WRITE_BUFFER_HIGH_BYTES

    def _pull(self) -> None:
        """Ask a pull producer for data until the stream is full or it writes nothing more."""
        while self._producer is not None and not self._streaming and not self._lost:
            if self._full():
                self._paused = True
                self._poll_drain()
                return
            before = self.buffered()
            self._producer.resumeProducing()
            if self.buffered() == before:
                return

    def _poll_drain(self) -> None:
        self._drain_poll = self.session.reactor.callLater(DRAIN_POLL_SECONDS, self._drained)

    def _drained(self) -> None:
        self._drain_poll = None
        if self._producer is None or self._lost:
            return
        if self.buffered() > WRITE_BUFFER_LOW_BYTES:
            self._poll_drain()
            return
        self._paused = False
        if self._streaming:
            self._producer.resumeProducing()
        else:
            self._pull()

    def _stop_polling(self) -> None:
        if self._drain_poll is not None and self._drain_poll.active():
            self._drain_poll.cancel()
        self._drain_poll = None

    # -- from the session --------------------------------------------------

    def data_received(self, data: bytes, end_stream: bool) -> None:
        if self._lost:
            return
        if data:
            self.protocol.dataReceived(data)
        if end_stream and not self._received_fin:
            self._received_fin = True
            if IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.readConnectionLost()
            else:
                self.loseConnection()
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self._sent_fin and self._received_fin:
            self.lost(Failure(ConnectionDone("stream ended")))

    def notify_lost(self, callback) -> None:
        """Call ``callback(reason)`` (a Failure) when the stream ends, after the protocol hears of it."""
        self._lost_callbacks.append(callback)

    def lost(self, reason: Failure) -> None:
        """End the stream for the protocol (once); a registered producer is told to stop."""
        if self._lost:
            return
        self._lost = True
        self._stop_polling()
        self.session._forget_stream(self.stream_id)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(reason)
        for callback in self._lost_callbacks:
            callback(reason)
