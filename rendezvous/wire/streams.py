"""What both ends of a signaling stream keep to: ping timing, no Nagle delay, a bound on unread writes.

Either side pings every ``PING_SECONDS`` and gives the stream up after
``IDLE_TIMEOUT_SECONDS`` of silence (docs/PROTOCOL.md, keepalive).
``BoundedWrites`` aborts a stream whose reader has stopped reading instead
of buffering for it without end.
"""

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

MAX_FRAMES_WHILE_PAUSED = 100
PING_SECONDS = 30
IDLE_TIMEOUT_SECONDS = 3 * PING_SECONDS  # three missed pings


def send_at_once(transport) -> None:
    """Set TCP_NODELAY on a stream's socket (TLS or not); other transports are left alone.

    Signaling frames and TURN's framed datagrams (RFC 8656 §12.5) are small
    and each matters now (a punch, an ICE check, a QUIC handshake flight):
    with Nagle's algorithm one would wait for the ACK of the frame before,
    which the other side's delayed ACK holds back for up to 40 ms.
    """
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


@implementer(IPushProducer)
class BoundedWrites:
    """Mixed into a stream protocol registered as its transport's streaming producer.

    The transport pauses it when the other side stops reading; more than
    MAX_FRAMES_WHILE_PAUSED frames written meanwhile abort the connection
    rather than buffering without end.
    """

    paused = False
    frames_while_paused = 0

    def write_frame(self, data: bytes, reader: str) -> None:
        """Write data, or abort when reader (named in the log) has let too much pile up."""
        if self.paused:
            self.frames_while_paused += 1
            if self.frames_while_paused > MAX_FRAMES_WHILE_PAUSED:
                log.info("{reader} does not read; closing", reader=reader)
                self.transport.abortConnection()
                return
        self.transport.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.frames_while_paused = 0

    def stopProducing(self) -> None:
        self.paused = True
