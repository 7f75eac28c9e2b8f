"""Keepalives and consent checks of a connect() Connection, on a task.Clock.

Keepalive intervals: half the measured binding lifetime, else RFC 8445's
15 s. Consent freshness (RFC 7675): checks every 4-6 s on an ICE path,
the path lost 30 s after the last answer.
"""

from twisted.internet.task import Clock

from rendezvous.peer import Connection
from rendezvous.peer.prediction import (KEEPALIVE_SECONDS, MAX_KEEPALIVE_SECONDS, MIN_KEEPALIVE_SECONDS, NatHint,
                                   keepalive_seconds)
from tests.unit.test_ice import connected_hosts


class StreamAgent:
    """An agent with no selected pair: the path is the punched TCP stream."""

    selected = consent_pair = None

    def indication(self) -> bytes:
        return b"\x00\x11" + bytes(18)  # a Binding indication's type, as far as the stand-in cares


class CountingSession:
    """Stands in for a connect() session: a clock, and a count of keepalives written."""

    def __init__(self, agent=None, now: float = 0.0) -> None:
        self.reactor = Clock()
        self.reactor.advance(now)
        self.sent = 0
        self.agent = agent or StreamAgent()
        self.written = []  # consent checks

    def _write_one(self, base: str, destination, data: bytes) -> None:
        if data[:2] == b"\x00\x11":
            self.sent += 1  # a keepalive: an RFC 8445 §11 Binding indication
        else:
            self.written.append(data)

    def _write(self, sends) -> None:
        self.written += sends

    def close(self):
        return None


def test_default_without_a_measurement():
    """With no binding lifetime known, keepalives go out every 15 s."""
    assert keepalive_seconds([None, None]) == KEEPALIVE_SECONDS == 15.0
    assert keepalive_seconds([]) == 15.0


def test_half_the_shortest_known_lifetime():
    """The shorter measured lifetime of the two sides sets the interval, halved."""
    assert keepalive_seconds([30.0, None]) == 15.0
    assert keepalive_seconds([None, 10.0]) == 5.0
    assert keepalive_seconds([240.0, 60.0]) == 30.0


def test_bounded_both_ways():
    """A tiny or huge (or nonsense) measurement is clamped, never zero or negative."""
    assert keepalive_seconds([0.5]) == MIN_KEEPALIVE_SECONDS
    assert keepalive_seconds([7200.0]) == MAX_KEEPALIVE_SECONDS
    assert keepalive_seconds([float("nan"), -3.0, 0.0]) == 15.0


def test_presence_carries_the_lifetime():
    """A hint's lifetime survives presence's nat_type text; garbage lifetimes are dropped."""
    hint = NatHint("endpoint-independent", "preserving", None, 30.0)
    assert hint.to_presence() == "eim/preserving@30"
    assert NatHint.from_presence(hint.to_presence()) == hint
    assert NatHint.from_presence("eim@x").lifetime_seconds is None
    assert NatHint.from_presence("eim@0").lifetime_seconds is None
    assert NatHint.from_presence("eim").lifetime_seconds is None


def test_connection_sends_keepalives_at_its_interval():
    """A Connection writes a keepalive each interval, and none after close."""
    session = CountingSession()
    connection = Connection("bob", "udp-direct", ("1.2.3.4", 5), ("5.6.7.8", 9), [], session,
                            keepalive_seconds([20.0, None]), "main")
    assert connection.keepalive_seconds == 10.0
    session.reactor.advance(9.9)
    assert session.sent == 0
    session.reactor.advance(0.1)
    assert session.sent == 1
    session.reactor.pump([10.0] * 3)
    assert session.sent == 4
    connection.close()
    session.reactor.pump([10.0] * 3)
    assert session.sent == 4


def test_consent_checks_keep_an_answered_path_and_lose_a_silent_one():
    """Every 4-6 s a check goes out; while the peer answers, the path stays; 30 s of silence loses it."""
    mine, peer, addresses, now = connected_hosts()
    session = CountingSession(mine, now)
    connection = Connection("bob", "udp-direct", addresses[id(mine)], addresses[id(peer)], [], session, 15.0, "main")
    lost = connection.when_lost()
    for _ in range(20):  # 20 checks, each answered: about 100 s
        before = session.reactor.seconds()
        while not session.written:
            session.reactor.advance(0.5)
        assert 4.0 <= session.reactor.seconds() - before <= 6.5
        check = session.written.pop()
        [answer] = peer.receive(check.data, "main", addresses[id(mine)], session.reactor.seconds())
        mine.receive(answer.data, "main", addresses[id(peer)], session.reactor.seconds())
    assert not lost.called
    last_answer = mine.consent_at
    fired = []
    lost.addCallback(lambda reason: fired.append((session.reactor.seconds(), reason)))
    session.reactor.pump([0.5] * 80)  # the peer is gone
    [(at, reason)] = fired
    assert reason == "consent expired: no answer to a consent check for 30 s (RFC 7675)"
    assert 30 <= at - last_answer <= 36.5  # at the first check due after the 30 s ran out
    sent = len(session.written)
    assert 5 <= sent <= 8  # checks kept going until consent expired, then stopped
    connection.send(b"after the loss")
    session.reactor.pump([1.0] * 20)
    assert len(session.written) == sent  # no more checks, and nothing was sent


def test_a_stream_path_has_no_consent_checks():
    """The punched TCP stream has no ICE pair: no consent checks; its loss comes from the stream."""
    session = CountingSession()
    Connection("bob", "tcp-punch", ("1.2.3.4", 5), ("5.6.7.8", 9), [], session, 15.0, "tcp")
    session.reactor.pump([1.0] * 60)
    assert session.written == []


def test_moving_from_the_relay_to_the_punched_stream_ends_the_relayed_pairs_consent():
    """A connection handed over on a watched relayed pair that settles on the punched TCP stream stops
    the consent checks of that pair: the relay is released, and its silence must not lose the stream."""
    mine, peer, addresses, now = connected_hosts()
    session = CountingSession(mine, now)
    mine.watch(mine.selected, now)
    mine.selected = None  # as before selection: the connection runs on the watched pair
    connection = Connection("bob", "turn-udp", addresses[id(mine)], addresses[id(peer)], [], session, 15.0,
                            "relay", settled=False)
    lost = connection.when_lost()
    connection._settle("tcp-punch", "tcp", ("1.2.3.4", 5), ("5.6.7.8", 9))
    written = len(session.written)
    session.reactor.pump([1.0] * 60)  # nobody answers on the relayed pair any more
    assert len(session.written) == written and not lost.called
