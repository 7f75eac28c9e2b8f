"""A QUIC stream (RFC 9000 §2) seen by a Twisted ``Protocol`` as its transport.

``write`` sends stream data, ``loseConnection`` ends our direction with a
FIN, ``abortConnection`` resets the stream (RFC 9000 §3.2). The peer's FIN
reaches a protocol that provides ``IHalfCloseableProtocol`` as
``readConnectionLost``; any other protocol sees the stream end once both
directions are finished. ``connectionLost`` is called once, with
``ConnectionDone`` for a clean end and ``ConnectionLost`` for a reset or a
lost session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from rendezvous.peer.session import Session

STREAM_RESET_CODE = 0x1  # our application error code for an aborted stream


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


@implementer(ITransport)
class StreamTransport:
    """One bidirectional QUIC stream of a session, as a Twisted transport."""

    disconnecting = False

    def __init__(self, session: Session, stream_id: int, protocol) -> None:
        self.session, self.stream_id, self.protocol = session, stream_id, protocol
        self._sent_fin = False
        self._received_fin = False
        self._lost = False

    # -- ITransport --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._sent_fin or self._lost:
            return
        self.session._send_stream(self.stream_id, bytes(data), False)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Send FIN: the peer reads to the end of what we wrote."""
        if self._sent_fin or self._lost:
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

    def lost(self, reason: Failure) -> None:
        """End the stream for the protocol (once)."""
        if self._lost:
            return
        self._lost = True
        self.session._forget_stream(self.stream_id)
        self.protocol.connectionLost(reason)
