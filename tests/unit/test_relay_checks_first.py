"""A session's checks through the relay start at the punch, before the node's common instant (fake clock)."""

from types import SimpleNamespace

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from rendezvous.peer.checks import _Session
from rendezvous.peer.connector import _Options
from rendezvous.peer.prediction import NatHint

OUR_RELAY = ("198.18.0.1", 50000)
THEIR_RELAY = ("198.18.0.1", 50002)
THEIR_SRFLX = ("198.18.0.12", 40000)


class Relay:
    """A stand-in TurnClient: records what the session sends through it."""

    relayed_addresses = [OUR_RELAY]

    def __init__(self):
        self.sent = []

    def send(self, peer, data):
        self.sent.append(tuple(peer))

    def create_permission(self, peers):
        return succeed(None)

    def close(self):
        return succeed(None)


def session_with_relay(clock):
    session = _Session(clock, SimpleNamespace(nat64=None), _Options(), controlling=True)
    session.turn = Relay()
    session.agent.add_base("relay", "relay", OUR_RELAY, 3)
    session.agent.local_complete = True
    return session


def punch(start_in_ms):
    return {"ufrag": "peer", "pwd": "peer-password-0123456789", "start_in_ms": start_in_ms, "candidates": [
        {"type": "srflx", "ip": THEIR_SRFLX[0], "port": THEIR_SRFLX[1], "protocol": "udp"},
        {"type": "relay", "ip": THEIR_RELAY[0], "port": THEIR_RELAY[1], "protocol": "udp"}]}


def test_the_relayed_pair_is_checked_at_the_punch_and_the_rest_at_the_instant():
    """At the punch only the peer's relayed candidate is checked; its other candidates join the checks
    at the node's instant, and nothing is nominated before (their checks may yet win)."""
    clock = Clock()
    session = session_with_relay(clock)
    session.start(punch(50), NatHint(None))
    assert session.turn.sent == [THEIR_RELAY]
    assert {pair.remote.address for pair in session.agent.pairs.values()} == {THEIR_RELAY}
    assert not session.agent.remote_complete
    clock.advance(0.049)
    assert {pair.remote.address for pair in session.agent.pairs.values()} == {THEIR_RELAY}
    clock.advance(0.001)
    assert {pair.remote.address for pair in session.agent.pairs.values()} == {THEIR_RELAY, THEIR_SRFLX}
    assert session.agent.remote_complete  # the peer did not trickle: its candidates were all there
    assert session.agent.started_at == clock.seconds()  # the wait for direct pairs counts from the instant
    session.close()


def test_without_a_delay_everything_starts_together():
    """A punch that starts at once checks every candidate from the start."""
    clock = Clock()
    session = session_with_relay(clock)
    session.start(punch(0), NatHint(None))
    clock.advance(0)
    assert {pair.remote.address for pair in session.agent.pairs.values()} == {THEIR_RELAY, THEIR_SRFLX}
    session.close()
