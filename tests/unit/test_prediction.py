"""Port prediction and the birthday spray schedule, on plain numbers."""

import random

import pytest

from rendezvous.peer.prediction import BirthdaySpray, NatHint, hint_from_probes, predicted_ports, spray_role

EIM = "endpoint-independent"
APDM = "address-and-port-dependent"


def test_hint_round_trips_through_presence():
    """The presence form names mapping and allocation, and parses back."""
    for hint in (NatHint(EIM, "preserving"), NatHint(APDM, "random"), NatHint(APDM, "sequential", 2),
                 NatHint(None)):
        assert NatHint.from_presence(hint.to_presence()) == hint
        assert len(hint.to_presence()) <= 64
    assert NatHint.from_presence("apdm/sequential+x") == NatHint(APDM, "sequential", None)
    assert NatHint.from_presence(None) == NatHint.from_presence("garbage") == NatHint(None)


def test_hint_from_probes():
    """Same mapping toward both node IPs is EIM; a new port is APDM; random samples are random."""
    hint = hint_from_probes(("198.18.0.11", 5000), ("198.18.0.11", 5000), [(5000, 5000), (5001, 5001), (5002, 5002)])
    assert hint == NatHint(EIM, "preserving") and hint.easy and not hint.hard
    hint = hint_from_probes(("198.18.0.11", 4000), ("198.18.0.11", 61000),
                            [(5000, 33001), (5001, 1822), (5002, 47310), (5003, 9000)])
    assert hint.mapping == APDM and hint.allocation == "random" and hint.hard
    hint = hint_from_probes(("198.18.0.11", 4000), ("198.18.0.11", 4001),
                            [(5000, 4002), (5001, 4003), (5002, 4004), (5003, 4005)])
    assert hint == NatHint(APDM, "sequential", 1)


def test_predicted_ports_step_by_delta_within_range():
    """Sequential allocation predicts srflx + k x delta, never below 1024 or above 65535."""
    assert predicted_ports(40000, 2) == [40002, 40004, 40006, 40008]
    assert predicted_ports(65534, 1) == [65535]
    assert predicted_ports(1026, -1) == [1025, 1024]


def test_spray_roles():
    """Only a random-mapping side against an endpoint-independent one sprays."""
    hard, easy = NatHint(APDM, "random"), NatHint(EIM, "preserving")
    assert spray_role(hard, easy) == "hard" and spray_role(easy, hard) == "easy"
    assert spray_role(hard, hard) is None and spray_role(easy, easy) is None


def test_easy_side_sprays_distinct_random_ports_paced_and_bounded():
    """The easy side sends M probes to distinct ports >= 1024 of the peer's IP, interval apart."""
    spray = BirthdaySpray("easy", ("198.18.0.12", 40000), 10.0, probes=1024, interval_seconds=0.002,
                          rng=random.Random(7))
    assert spray.due(9.9) == []
    sent = []
    now = 10.0
    while spray.deadline is not None:
        now = spray.deadline
        sent += spray.due(now)
    assert len(sent) == 1024
    ports = [dest[1] for _, dest in sent]
    assert len(set(ports)) == 1024 and min(ports) >= 1024
    assert all(dest[0] == "198.18.0.12" and index == 0 for index, dest in sent)
    assert now == pytest.approx(10.0 + 1023 * 0.002)


def test_hard_side_sends_once_per_socket_and_catches_up():
    """The hard side sends one probe per socket to the srflx; a late call sends what is due at once."""
    spray = BirthdaySpray("hard", ("198.18.0.11", 5000), 0.0, sockets=256, interval_seconds=0.01)
    first = spray.due(0.095)
    assert [i for i, _ in first] == list(range(10))
    assert spray.remaining == 246
    spray.stop()
    assert spray.deadline is None and spray.due(100.0) == []
    assert spray.describe(-1.5) == "hard side: 10 probes to 198.18.0.11:5000 from 1500 ms"
