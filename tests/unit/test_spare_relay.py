"""A logged-in client's spare relay allocation on a fake clock; the race for it is a stand-in Deferred."""

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from rendezvous.peer import spare_relay
from rendezvous.peer.connector import _Options
from rendezvous.peer.spare_relay import MIN_KEEP_SECONDS, REPLENISH_SECONDS, RETRY_SECONDS, SpareRelay

TTL = 3600


class Allocation:
    """A stand-in TurnClient: live until closed."""

    def __init__(self, name):
        self.name, self.allocated, self.closes = name, True, 0

    def close(self):
        self.closes += 1
        self.allocated = False
        return succeed(None)


class Signaling:
    connected = True

    def __init__(self):
        self.asked = 0

    def turn_credentials(self):
        self.asked += 1
        return succeed({"username": "u", "password": "p", "ttl": TTL, "urls": []})


@pytest.fixture
def races(monkeypatch):
    """Each race the spare starts, as a Deferred the test fires."""
    started = []

    def race(*args):
        started.append(Deferred())
        return started[-1]

    monkeypatch.setattr(spare_relay, "race", race)
    return started


def spare(clock):
    made = SpareRelay(clock, Signaling(), _Options())
    made.start()
    clock.advance(0)
    return made


def taken(spare):
    out = []
    spare.take().addCallback(out.append)
    return out


def win(race, name):
    allocation = Allocation(name)
    race.callback((allocation, "udp", ("198.18.0.1", 50000)))
    return allocation


def test_a_ready_spare_is_handed_over_and_the_next_made_later(races):
    """take() gives the ready allocation to the session; a new one is raced REPLENISH_SECONDS later."""
    clock = Clock()
    relay = spare(clock)
    first = win(races[0], "first")
    assert taken(relay) == [(first, "udp", ("198.18.0.1", 50000))] and relay.ready is None
    clock.advance(REPLENISH_SECONDS - 0.1)
    assert len(races) == 1
    clock.advance(0.1)
    second = win(races[1], "second")
    assert relay.ready[0] is second and first.closes == 0  # the session owns the first one now


def test_a_session_waits_for_the_spare_being_made(races):
    """A take while the spare is being raced for gets it when it comes, not a second race of its own."""
    clock = Clock()
    relay = spare(clock)
    out = taken(relay)
    assert out == [] and len(races) == 1
    allocation = win(races[0], "late")
    assert out[0][0] is allocation and relay.ready is None
    assert taken(relay) == [None]  # nothing ready meanwhile: that session races for its own
    clock.advance(REPLENISH_SECONDS)
    assert len(races) == 2


def test_a_lost_spare_is_not_handed_over(races):
    """An allocation lost while it waited (connection gone, refresh refused) is closed, not given out."""
    clock = Clock()
    relay = spare(clock)
    lost = win(races[0], "lost")
    lost.allocated = False
    assert taken(relay) == [None] and lost.closes == 1


def test_the_spare_is_replaced_before_its_credentials_age(races):
    """After a quarter of the credentials' ttl a new spare is made with fresh ones and the old one released."""
    clock = Clock()
    relay = spare(clock)
    old = win(races[0], "old")
    clock.advance(max(MIN_KEEP_SECONDS, TTL / 4))
    new = win(races[1], "new")
    assert relay.ready[0] is new and old.closes == 1 and relay.signaling.asked == 2


def test_a_failed_race_is_retried_later(races):
    """No relay answered: the next try is RETRY_SECONDS later, not at once."""
    clock = Clock()
    relay = spare(clock)
    races[0].callback(None)
    clock.advance(RETRY_SECONDS - 1)
    assert len(races) == 1
    clock.advance(1)
    assert len(races) == 2


def test_a_race_that_raises_frees_a_waiting_session_and_is_retried(races):
    """An exception out of the race is logged; a session waiting for the spare gets None and the spare is
    made again RETRY_SECONDS later."""
    clock = Clock()
    relay = spare(clock)
    waiting = taken(relay)
    races[0].errback(RuntimeError("a bug in the race"))
    assert waiting == [None]
    clock.advance(RETRY_SECONDS)
    assert len(races) == 2


def test_close_releases_the_spare_and_makes_no_more(races):
    """close() releases the held allocation, cancels the replacement, and one still coming is released too."""
    clock = Clock()
    relay = spare(clock)
    held = win(races[0], "held")
    relay.close()
    assert held.closes == 1
    clock.advance(TTL)
    assert len(races) == 1
    coming = spare(clock)
    coming.close()
    late = win(races[1], "late")
    assert late.closes == 1 and coming.ready is None
