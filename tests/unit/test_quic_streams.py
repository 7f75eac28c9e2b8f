"""A session stream as an IConsumer on task.Clock: producers are paused while the peer has not
acknowledged WRITE_BUFFER_HIGH_BYTES, resumed when it has, and stopped when the stream ends.

The two sessions and their in-memory path are those of test_session.
"""

import io
import os

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.basic import FileSender
from zope.interface import implementer

from rendezvous.peer.quic_streams import WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES
from tests.unit.test_session import Collect, pair, run


class Sink(Protocol):
    """Keeps what arrives and whether the stream ended."""

    def __init__(self):
        self.received, self.ended = bytearray(), None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.ended = reason


def sessions(clock):
    client, server, a, b = pair(clock)
    run(clock, 0.2)
    sinks = []
    server.accept_streams(Factory.forProtocol(lambda: sinks.append(Sink()) or sinks[-1]))
    return client, sinks, a


@implementer(IPushProducer)
class Pusher:
    """A streaming producer writing 64 kB each time the test asks, while not paused."""

    def __init__(self):
        self.transport, self.paused, self.pauses, self.resumes, self.stopped = None, False, 0, 0, False

    def push(self, times):
        for _ in range(times):
            if self.paused:
                return
            self.transport.write(b"p" * 65536)

    def pauseProducing(self):
        self.paused, self.pauses = True, self.pauses + 1

    def resumeProducing(self):
        self.paused, self.resumes = False, self.resumes + 1

    def stopProducing(self):
        self.stopped = True


def registered(clock):
    """A session stream with a Pusher registered as its streaming producer, and the peer's sinks and path."""
    client, sinks, path = sessions(clock)
    transport = client.open_stream(Collect())
    pusher = Pusher()
    pusher.transport = transport
    transport.registerProducer(pusher, True)
    return transport, pusher, sinks, path


def test_a_file_sender_moves_a_file_with_a_bounded_buffer():
    """FileSender (a pull producer) sends 6 MB intact; the stream never holds much more than the bound."""
    clock = Clock()
    client, sinks, _ = sessions(clock)
    payload = os.urandom(6 << 20)
    transport = client.open_stream(Collect())
    most = []
    original = transport.session._send_stream

    def watched(stream_id, data, end_stream):
        original(stream_id, data, end_stream)
        most.append(transport.buffered())

    transport.session._send_stream = watched
    done = []
    FileSender().beginFileTransfer(io.BytesIO(payload), transport).addCallback(done.append)
    run(clock, 20.0)
    assert done and bytes(sinks[0].received) == payload
    assert max(most) <= WRITE_BUFFER_HIGH_BYTES + FileSender.CHUNK_SIZE


def test_a_streaming_producer_is_paused_until_the_peer_acknowledges():
    """Above the bound the producer is paused; it stays paused while the path drops everything and is
    resumed once acknowledgements bring the buffer down to the low mark."""
    clock = Clock()
    transport, pusher, sinks, path = registered(clock)
    path.drop = True
    pusher.push(40)
    assert pusher.paused and pusher.pauses == 1 and transport.buffered() > WRITE_BUFFER_HIGH_BYTES
    run(clock, 0.5)
    assert pusher.paused and pusher.resumes == 0
    path.drop = False
    run(clock, 5.0)
    assert not pusher.paused and pusher.resumes == 1 and transport.buffered() <= WRITE_BUFFER_LOW_BYTES


def test_the_producer_is_stopped_when_the_stream_is_reset():
    """A stream that ends under a registered producer tells it to stop."""
    clock = Clock()
    transport, pusher, sinks, _ = registered(clock)
    pusher.push(1)
    run(clock, 0.1)
    transport.abortConnection()
    assert pusher.stopped


def test_lose_connection_waits_for_the_producer_to_unregister():
    """loseConnection with a producer registered sends the FIN only after unregisterProducer."""
    clock = Clock()
    transport, pusher, sinks, _ = registered(clock)
    pusher.push(2)
    transport.loseConnection()
    run(clock, 0.5)
    assert sinks[0].ended is None and len(sinks[0].received) == 2 * 65536
    pusher.push(1)
    transport.unregisterProducer()
    run(clock, 0.5)
    assert len(sinks[0].received) == 3 * 65536 and sinks[0].ended is not None
