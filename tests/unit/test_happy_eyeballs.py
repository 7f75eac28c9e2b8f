"""RFC 8305 to a super node: the address order (§4), NAT64 for IPv4 without a route (§7.1), the race (§5)."""

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from rendezvous.peer.happy_eyeballs import (CONNECTION_ATTEMPT_DELAY_SECONDS, AllAttemptsFailed, Target,
                                            interleave, plan, race)
from rendezvous.peer.nat64 import Nat64

NAT64 = Nat64("2001:db8:64:4::/96")


def test_families_interleave_ipv6_first():
    """§4: IPv6 and IPv4 alternate, IPv6 first, each family keeping its order; the rest of a family follows."""
    assert interleave(["198.18.0.1", "198.18.0.2", "2001:db8::1"]) == ["2001:db8::1", "198.18.0.1", "198.18.0.2"]
    assert interleave(["2001:db8::1", "2001:db8::2", "198.18.0.1"]) == ["2001:db8::1", "198.18.0.1", "2001:db8::2"]
    assert interleave(["198.18.0.1", "198.18.0.1"]) == ["198.18.0.1"]


def test_the_last_winner_goes_first():
    """The address the host cache remembers goes first; one that is not the node's is ignored."""
    assert interleave(["198.18.0.1", "2001:db8::1"], first="198.18.0.1") == ["198.18.0.1", "2001:db8::1"]
    assert interleave(["198.18.0.1", "2001:db8::1"], first="203.0.113.9") == ["2001:db8::1", "198.18.0.1"]


def test_ipv4_without_a_route_is_dialled_through_nat64():
    """§7.1: an IPv4 address with no route is dialled under the NAT64 prefix, its own address kept."""
    targets = plan(["198.18.0.1", "2001:db8::1"], routable=lambda ip: False, nat64=NAT64)
    assert targets == [Target("2001:db8::1", "2001:db8::1"), Target("198.18.0.1", "2001:db8:64:4::c612:1")]
    assert [t.through_nat64 for t in targets] == [False, True]


def test_ipv4_without_a_route_or_nat64_is_left_out():
    """Without NAT64 an IPv4 address this host cannot route to is not tried; a routable one is, as it is."""
    assert plan(["198.18.0.1", "2001:db8::1"], routable=lambda ip: False) == [Target("2001:db8::1", "2001:db8::1")]
    assert plan(["198.18.0.1"], routable=lambda ip: True, nat64=NAT64) == [Target("198.18.0.1", "198.18.0.1")]


def attempts(clock):
    """An attempt function whose Deferreds the test fires, and the log of what started when."""
    started, pending = [], {}

    def attempt(target):
        started.append((target, clock.seconds()))
        pending[target] = Deferred(lambda d: started.append((target, "cancelled")))
        return pending[target]

    return attempt, started, pending


def test_attempts_start_one_delay_apart_and_the_first_success_wins():
    """§5: the next attempt starts CONNECTION_ATTEMPT_DELAY_SECONDS after the last; the first success wins
    and the attempts still running are cancelled."""
    clock = Clock()
    attempt, started, pending = attempts(clock)
    won = race(clock, ["a", "b", "c"], attempt)
    assert started == [("a", 0)]
    clock.advance(CONNECTION_ATTEMPT_DELAY_SECONDS)
    assert started == [("a", 0), ("b", CONNECTION_ATTEMPT_DELAY_SECONDS)]
    pending["b"].callback("connection b")
    assert won.result == ("b", "connection b")
    assert ("a", "cancelled") in started
    clock.advance(10)
    assert "c" not in pending  # never started


def test_a_failure_starts_the_next_attempt_at_once():
    """§5: when an attempt fails the next one starts without waiting for the delay."""
    clock = Clock()
    attempt, started, pending = attempts(clock)
    won = race(clock, ["a", "b"], attempt)
    clock.advance(0.1)
    pending["a"].errback(ConnectionRefusedError("a refused"))
    assert started[-1] == ("b", 0.1)
    pending["b"].callback("connection b")
    assert won.result == ("b", "connection b")


def test_every_attempt_failing_fails_the_race_with_each_error():
    """When every attempt has failed the race fails with AllAttemptsFailed listing them."""
    clock = Clock()
    won = race(clock, ["a", "b"], lambda t: fail(OSError(f"{t} unreachable")))
    failure = []
    won.addErrback(failure.append)
    assert failure and failure[0].check(AllAttemptsFailed)
    assert [str(e) for _, e in failure[0].value.errors] == ["a unreachable", "b unreachable"]
    assert race(clock, [], lambda t: succeed(t)).addErrback(lambda f: f.check(AllAttemptsFailed)).result


def test_cancelling_the_race_cancels_its_attempts():
    """Cancelling the race (a login deadline) cancels every attempt running and starts no more."""
    clock = Clock()
    attempt, started, pending = attempts(clock)
    won = race(clock, ["a", "b"], attempt)
    won.cancel()
    won.addErrback(lambda f: None)
    assert ("a", "cancelled") in started
    clock.advance(10)
    assert "b" not in pending


@pytest.mark.parametrize("prefix, synthesized", [
    ("2001:db8:64:4::/96", "2001:db8:64:4::c000:221"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
])
def test_nat64_translates_both_ways(prefix, synthesized):
    """RFC 6052 §2.2: an IPv4 address goes under the prefix on the way out and comes back from it; other
    addresses pass unchanged."""
    nat64 = Nat64(prefix)
    assert nat64.to_ipv6(("192.0.2.33", 3478)) == (synthesized, 3478)
    assert nat64.to_ipv4((synthesized, 3478, 0, 0)) == ("192.0.2.33", 3478)
    assert nat64.to_ipv6(("2001:db8::1", 1)) == ("2001:db8::1", 1)
    assert nat64.to_ipv4(("2001:db8::1", 1)) == ("2001:db8::1", 1)
    assert nat64.to_ipv4(("192.0.2.1", 1)) == ("192.0.2.1", 1)


def test_nat64_refuses_a_prefix_length_rfc_6052_does_not_allow():
    """A /80 prefix is no RFC 6052 prefix: ValueError."""
    with pytest.raises(ValueError):
        Nat64("2001:db8::/80")
