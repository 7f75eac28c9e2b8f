"""What a logged-in Client remembers about its network: STUN over UDP that went unanswered (task.Clock)."""

from types import SimpleNamespace

import pytest_twisted
from twisted.internet import task

from rendezvous.peer.client import UDP_SILENT_SECONDS, Client
from rendezvous.peer.connection import Attempt
from rendezvous.peer.connector import _Options


def client(clock: task.Clock) -> Client:
    signaling = SimpleNamespace(user="alice", nat64=None, server=("198.18.0.1", 3478), on=lambda *_: None,
                                set_presence=lambda *_, **__: None)
    return Client(clock, signaling, _Options(), trust=None)


def test_an_unanswered_stun_request_is_not_waited_for_again_for_a_while():
    """After a gathering whose STUN over UDP went unanswered, sessions skip it for UDP_SILENT_SECONDS, then ask again."""
    clock = task.Clock()
    alice = client(clock)
    assert not alice._session(controlling=True).udp_silent
    alice._learn(None, SimpleNamespace(attempts=[Attempt("srflx", 1400.0, "failed", "no answer from the STUN server")]))
    clock.advance(UDP_SILENT_SECONDS - 1)
    assert alice._session(controlling=True).udp_silent
    clock.advance(1)
    assert not alice._session(controlling=False).udp_silent


def test_a_session_teaches_it_when_its_gathering_ends():
    """A session's gathering that ends with STUN over UDP unanswered (long after the relay handed the
    session over) makes the client's next sessions skip it."""
    clock = task.Clock()
    alice = client(clock)
    first = alice._session(controlling=True)
    first.attempts.append(Attempt("srflx", 1400.0, "failed", "no answer from the STUN server"))
    alice._gathered(first)
    assert alice._session(controlling=True).udp_silent


def test_an_answered_stun_request_is_not_remembered_as_silent():
    """A gathering whose STUN over UDP was answered (or skipped) leaves later sessions asking."""
    alice = client(task.Clock())
    alice._learn(None, SimpleNamespace(attempts=[Attempt("srflx", 3.0, "succeeded", "198.18.0.11:40000 (eim)"),
                                                 Attempt("srflx6", 1400.0, "failed", "no answer")]))
    assert not alice._session(controlling=True).udp_silent


@pytest_twisted.ensureDeferred
async def test_a_silent_network_ends_the_reflexive_probe_at_once():
    """A session told that STUN over UDP goes unanswered records the probe as skipped without sending it."""
    clock = task.Clock()
    session = client(clock)._session(controlling=True)
    session.udp_silent = True
    await session._learn_reflexive(None, ("198.18.0.1", 3478))  # no socket: nothing may be sent
    assert [(a.technique, a.outcome) for a in session.attempts] == [("srflx", "skipped")]
    assert session.srflx is None
