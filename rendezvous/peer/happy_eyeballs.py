"""Happy eyeballs to a super node (RFC 8305): which of its addresses to try, in what order, raced.

``plan`` orders a node's addresses (its host cache ``ips``, or what its name
resolved to: A and AAAA) as §4 sorts them: the address that won last time
first, then the families interleaved, IPv6 first (a "First Address Family
Count" of 1). An IPv4 address this host has no route to is dialled under the
network's NAT64 prefix when there is one (§7.1, ``rendezvous.peer.nat64``)
and left out when there is none. ``race`` then makes the connection
attempts of §5: one at a time, the next CONNECTION_ATTEMPT_DELAY_SECONDS
after the last started or at once when it fails, the first to succeed
winning and the others cancelled. Both are sans-IO apart from the clock the
race is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from rendezvous.peer.nat64 import Nat64

# RFC 8305 §5 and §8: the recommended delay between connection attempts (at least 100 ms, at most 2 s).
CONNECTION_ATTEMPT_DELAY_SECONDS = 0.25


@dataclass(frozen=True)
class Target:
    """One address of a node (``ip``, as the node gave it) and the address dialled for it (``dial``:
    the same, or its NAT64 form)."""

    ip: str
    dial: str

    @property
    def through_nat64(self) -> bool:
        return self.ip != self.dial


class AllAttemptsFailed(Exception):
    """Every connection attempt of a race failed; ``errors`` lists (Target, exception) pairs."""

    def __init__(self, errors: list[tuple[Any, BaseException]]) -> None:
        tried = "; ".join(f"{getattr(t, 'dial', t)}: {e or type(e).__name__}" for t, e in errors)
        super().__init__(tried or "no address to try")
        self.errors = errors


def interleave(ips: list[str], first: str | None = None) -> list[str]:
    """RFC 8305 §4: ``first`` (the last winner) if among ips, then the rest alternating IPv6 and IPv4,
    IPv6 first, each family in its given order."""
    rest = [ip for ip in dict.fromkeys(ips) if ip != first]
    six, four = [ip for ip in rest if ":" in ip], [ip for ip in rest if ":" not in ip]
    mixed = [ip for pair in zip(six, four) for ip in pair] + six[len(four):] + four[len(six):]
    return ([first] if first in ips else []) + mixed


def plan(ips: list[str], routable: Callable[[str], bool], nat64: Nat64 | None = None,
         first: str | None = None) -> list[Target]:
    """The targets to race, in order: ``interleave``d, each IPv4 address without a route
    (``routable``) dialled through ``nat64``, or dropped without one."""
    targets = []
    for ip in interleave(ips, first):
        if ":" in ip or routable(ip):
            targets.append(Target(ip, ip))
        elif nat64 is not None:
            targets.append(Target(ip, nat64.to_ipv6((ip, 0))[0]))
    return targets


def race(clock, targets: list, attempt: Callable[[Any], Deferred],
         delay_seconds: float = CONNECTION_ATTEMPT_DELAY_SECONDS) -> Deferred:
    """RFC 8305 §5: ``attempt(target)`` for each target in turn, the next ``delay_seconds`` after the
    last one started or as soon as it failed; fires with (target, result) of the first to succeed and
    cancels the rest (an attempt cleans up after itself when cancelled). Fails with AllAttemptsFailed
    once every attempt has failed. Cancelling it cancels the attempts running."""
    running: dict[int, Deferred] = {}
    errors: list[tuple[Any, BaseException]] = []
    state = {"next": 0, "timer": None}

    def stop() -> None:
        timer = state["timer"]
        if timer is not None and timer.active():
            timer.cancel()
        attempts = list(running.values())
        running.clear()
        for d in attempts:
            d.cancel()

    won: Deferred = Deferred(lambda _: stop())

    def start_next() -> None:
        timer = state["timer"]
        if timer is not None and timer.active():
            timer.cancel()
        index = state["next"]
        if won.called or index >= len(targets):
            return
        state["next"] = index + 1
        target = targets[index]
        d = maybeDeferred(attempt, target)
        running[index] = d
        if state["next"] < len(targets):
            state["timer"] = clock.callLater(delay_seconds, start_next)
        d.addCallbacks(succeeded, failed, callbackArgs=(index, target), errbackArgs=(index, target))

    def succeeded(result, index: int, target) -> None:
        running.pop(index, None)
        if won.called:  # the race was cancelled as this one came
            return
        stop()
        won.callback((target, result))

    def failed(failure: Failure, index: int, target) -> None:
        if running.pop(index, None) is None or won.called:
            return  # cancelled by stop(): the race is over
        errors.append((target, failure.value))
        if state["next"] < len(targets):
            start_next()
        elif not running:
            won.errback(AllAttemptsFailed(errors))

    if not targets:
        won.errback(AllAttemptsFailed([]))
    else:
        start_next()
    return won
