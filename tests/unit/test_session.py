"""The QUIC session layer on task.Clock: handshake with pinned fingerprints, streams, datagrams, endings.

Two sessions talk through a pair of in-memory datagram paths with a 1 ms
delay, the way aioquic's own tests move datagrams between two connections.
"""

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from rendezvous.peer.identity import Identity
from rendezvous.peer.session import MAX_DATAGRAM_FRAME_BYTES, Session, SessionError

ALICE, BOB, MALLORY = (Identity.generate(name) for name in ("alice", "bob", "mallory"))


class Path:
    """One side of an in-memory datagram path with the Connection interface a session uses."""

    def __init__(self, clock: Clock, peer: str, name: str = "udp-direct") -> None:
        self.clock, self.peer, self.path, self.attempts = clock, peer, name, []
        self.other: Path | None = None
        self.receiver = None
        self.sent = 0
        self.closed = False
        self.drop = False
        self.path_callbacks = []
        self._lost: Deferred = Deferred()

    def send(self, data: bytes) -> None:
        self.sent += 1
        if not self.drop and not self.closed:
            self.clock.callLater(0.001, self.other.arrive, data)

    def arrive(self, data: bytes) -> None:
        if not self.closed and self.receiver is not None:
            self.receiver(data)

    def set_receiver(self, receiver) -> None:
        self.receiver = receiver

    def when_lost(self) -> Deferred:
        return self._lost

    def on_path_change(self, callback) -> None:
        self.path_callbacks.append(callback)

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


def pair(clock, client_identity=ALICE, server_identity=BOB, client_expects=BOB, server_expects=ALICE):
    """A client session (alice) and a listening one (bob), handshaking over a fresh path pair."""
    a, b = Path(clock, "bob"), Path(clock, "alice")
    a.other, b.other = b, a
    server = Session(clock, b, server_identity, server_expects.fingerprint, is_client=False, user="bob")
    client = Session(clock, a, client_identity, client_expects.fingerprint, is_client=True, user="alice")
    return client, server, a, b


def run(clock, seconds=1.0, step=0.001):
    for _ in range(int(seconds / step)):
        clock.advance(step)


class Collect(Protocol):
    def __init__(self):
        self.data, self.ended = b"", None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.ended = reason


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


def keep_streams(session) -> list[bytes]:
    """Accept the peer's streams on ``session``; the list gets each stream's bytes when it ends."""
    received = []

    class Keep(Collect):
        def connectionLost(self, reason):
            received.append(self.data)

    session.accept_streams(Factory.forProtocol(Keep))
    return received


def ready(session):
    results = []
    session.handshake().addBoth(results.append)
    return results


def test_both_sides_verify_the_peer_and_the_session_comes_up():
    """Each side sees the peer's pinned certificate; both handshakes fire with the session."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    client_ready, server_ready = ready(client), ready(server)
    run(clock, 0.2)
    assert client_ready == [client] and server_ready == [server]
    assert client.path == "udp-direct" and client.peer == "bob" and server.peer == "alice"


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_certificate_other_than_the_fingerprint_ends_the_session(side):
    """A peer whose certificate is not the fingerprint the node passed on is refused on either side."""
    clock = Clock()
    if side == "client":  # the listener is mallory, though the node said bob
        client, server, _, _ = pair(clock, server_identity=MALLORY)
        refusing = client
    else:  # the connecting side is mallory, though the node said alice
        client, server, _, _ = pair(clock, client_identity=MALLORY)
        refusing = server
    outcome = ready(refusing)
    run(clock, 0.5)
    assert len(outcome) == 1 and outcome[0].check(SessionError)
    assert "fingerprint" in str(outcome[0].value)


def test_a_stream_carries_bytes_both_ways_and_ends_cleanly():
    """open_stream connects a protocol; the peer's factory echoes; FIN ends both sides with ConnectionDone."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    run(clock, 0.2)
    server.accept_streams(Factory.forProtocol(Echo))
    collector = Collect()
    transport = client.open_stream(collector)
    payload = bytes(range(256)) * 400  # 100 kB: many packets, flow control
    transport.write(payload)
    transport.loseConnection()
    run(clock, 2.0)
    assert collector.data == payload
    assert collector.ended is not None and "ConnectionDone" in collector.ended.type.__name__


def test_streams_opened_before_accept_streams_wait_for_it():
    """A stream the peer opens before the application accepts streams is delivered once it does."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    run(clock, 0.2)
    collector = Collect()
    client.open_stream(collector).write(b"early")
    run(clock, 0.1)
    server.accept_streams(Factory.forProtocol(Echo))
    run(clock, 0.1)
    assert collector.data == b"early"


def test_datagrams_arrive_and_oversized_ones_are_refused():
    """send_datagram delivers to the receiver; a datagram over the limit raises ValueError."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    run(clock, 0.2)
    got = []
    server.set_datagram_receiver(got.append)
    client.send_datagram(b"hello")
    run(clock, 0.1)
    assert got == [b"hello"]
    with pytest.raises(ValueError):
        client.send_datagram(bytes(MAX_DATAGRAM_FRAME_BYTES + 1))


def test_close_reaches_the_peer_and_ends_its_streams():
    """close() sends CONNECTION_CLOSE: the peer's when_closed fires and its open streams are lost."""
    clock = Clock()
    client, server, a, _ = pair(clock)
    run(clock, 0.2)
    accepted = []

    class Keep(Collect):
        def connectionMade(self):
            accepted.append(self)

    server.accept_streams(Factory.forProtocol(Keep))
    client.open_stream(Collect()).write(b"x")
    run(clock, 0.1)
    reasons = []
    server.when_closed().addCallback(reasons.append)
    client.close()
    run(clock, 0.1)
    assert reasons and "closed" in reasons[0]
    assert accepted[0].ended is not None and a.closed


def test_a_silent_peer_ends_the_session_by_idle_timeout():
    """When the path drops everything, QUIC's idle timeout ends the session and frees the path."""
    clock = Clock()
    client, server, a, b = pair(clock)
    run(clock, 0.2)
    a.drop = b.drop = True
    reasons = []
    client.when_closed().addCallback(reasons.append)
    clock.advance(30)
    for _ in range(200):
        clock.advance(1)
    assert reasons and a.closed


def test_close_right_after_a_finished_stream_still_delivers_it():
    """close() waits for the peer to acknowledge a finished stream's last bytes before CONNECTION_CLOSE."""
    clock = Clock()
    client, server, a, _ = pair(clock)
    run(clock, 0.2)
    received = keep_streams(server)
    transport = client.open_stream(Collect())
    payload = bytes(range(256)) * 400
    transport.write(payload)
    transport.loseConnection()
    closed = client.close()
    assert not closed.called  # the FIN is not acknowledged yet
    run(clock, 2.0)
    assert received == [payload] and closed.called and a.closed


def test_a_lost_path_is_replaced_and_a_running_stream_loses_nothing():
    """When the path under a session is lost, the calling side's restarter finds a new one; the session
    moves there (path callbacks fire) and every byte of a stream written across the move arrives in order."""
    clock = Clock()
    client, server, a, b = pair(clock)
    run(clock, 0.2)
    received = keep_streams(server)
    a2, b2 = Path(clock, "bob", "turn-udp"), Path(clock, "alice", "turn-udp")
    a2.other, b2.other = b2, a2

    def restart(session):
        server.replace_path(b2)  # what the Client's restart answer does on the listening side
        return succeed(a2)

    client.restarter = restart
    moves = []
    client.on_path_change(moves.append)
    transport = client.open_stream(Collect())
    payload = bytes(range(256)) * 400
    transport.write(payload[:50_000])
    run(clock, 0.01)
    a.drop = b.drop = True  # the old path dies with data in flight
    a._lost.callback("consent expired")
    transport.write(payload[50_000:])
    transport.loseConnection()
    run(clock, 3.0)
    assert moves == ["turn-udp"] and client.path == "turn-udp" and a.closed and b.closed
    assert received == [payload]


def test_the_listening_side_waits_for_a_restart_and_a_failed_restart_ends_the_session():
    """Without a restarter a lost path does not end the session; a restarter that fails does."""
    clock = Clock()
    client, server, a, b = pair(clock)
    run(clock, 0.2)
    b._lost.callback("consent expired")
    assert server.when_closed().called is False
    client.restarter = lambda session: fail(RuntimeError("bob is offline"))
    reasons = []
    client.when_closed().addCallback(reasons.append)
    a._lost.callback("consent expired")
    assert reasons == ["the path was lost: consent expired; no new one: bob is offline"]


def test_an_early_stream_is_held_whole_however_many_frames_it_takes():
    """A stream the peer writes in many frames before accept_streams arrives complete once accepted."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    run(clock, 0.2)
    transport = client.open_stream(Collect())
    for i in range(40):  # more frames than streams may be held
        transport.write(bytes([i]) * 100)
        run(clock, 0.005)
    transport.loseConnection()
    run(clock, 0.2)
    received = keep_streams(server)
    run(clock, 0.5)
    assert received == [b"".join(bytes([i]) * 100 for i in range(40))]


def test_a_refused_stream_is_not_offered_again():
    """Once the factory refuses a peer's stream, its later frames never reach the factory."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    run(clock, 0.2)
    offered = []

    class Refuse(Factory):
        def buildProtocol(self, addr):
            offered.append(addr)
            return None

    server.accept_streams(Refuse())
    transport = client.open_stream(Collect())
    for _ in range(5):
        transport.write(b"x" * 100)
        run(clock, 0.01)
    assert len(offered) == 1


def test_restarts_run_one_at_a_time_and_a_stale_ones_path_is_dropped():
    """A restart asked for while one runs (a re-check, then the path lost) joins it: the restarter runs
    once and both learn its path; on the listening side a path from an older restart generation is closed
    instead of replacing a newer one."""
    clock = Clock()
    client, server, a, b = pair(clock)
    run(clock, 0.2)
    calls = []

    def restarter(session):
        calls.append(Deferred())
        return calls[-1]

    client.restarter = restarter
    recheck = client.restart()  # the periodic re-check
    a._lost.callback("consent expired")  # ... and the path goes while it runs
    assert len(calls) == 1
    a2, b2 = Path(clock, "bob", "turn-udp"), Path(clock, "alice", "turn-udp")
    a2.other, b2.other = b2, a2
    old, new = server.begin_restart(), server.begin_restart()  # two restart requests reached bob
    assert server.adopt(new, b2) and server.connection is b2
    b3 = Path(clock, "alice", "udp-direct")
    assert not server.adopt(old, b3) and b3.closed and server.connection is b2
    calls[0].callback(a2)
    assert recheck.called and client.connection is a2 and client.path == "turn-udp"
    assert client.when_closed().called is False
