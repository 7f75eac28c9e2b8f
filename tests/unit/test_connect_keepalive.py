"""Keepalive intervals of connect(): half the measured binding lifetime, else RFC 8445's 15 s."""

from twisted.internet.task import Clock

from rendezvous.connect import Connection
from rendezvous.prediction import (KEEPALIVE_SECONDS, MAX_KEEPALIVE_SECONDS, MIN_KEEPALIVE_SECONDS, NatHint,
                                   keepalive_seconds)


class CountingSession:
    """Stands in for a connect() session: a clock, and a count of keepalives written."""

    def __init__(self) -> None:
        self.reactor = Clock()
        self.sent = 0

    def keepalive(self) -> None:
        self.sent += 1

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
                            keepalive_seconds([20.0, None]))
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
