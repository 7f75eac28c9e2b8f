"""The UDP tests: RFC 5780 §4.3 mapping (tests II and III from the socket of
test I), §4.4 filtering (CHANGE-REQUEST), §4.5 hairpinning and §4.6 binding
lifetime (RESPONSE-PORT aimed at an older mapping), and RFC 4787 §4.1 port
allocation for port prediction.

Each gathers observations into ``checker.report`` and leaves the verdict to
``decisions``.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from rendezvous.peer.nat_check.decisions import (filtering_behaviour, lifetime_bounds, lifetime_schedule,
                                                 mapping_behaviour, port_allocation)
from rendezvous.peer.nat_check.probes import Checker, ProbeSocket, ServerError, binding_request, mapped_address, show
from rendezvous.peer.stun_client import TransactionTimeout
from rendezvous.stun.addresses import Address


async def measure_mapping(checker: Checker, first: ProbeSocket, mapped: Address, other: Address) -> None:
    """RFC 5780 §4.3 tests II and III: the mapping from test I's socket toward
    the alternate IP, then the alternate IP and port."""
    report = checker.report
    checker.progress(f"test II: mapping toward the alternate IP {other[0]}:{checker.server[1]}")
    try:
        second = mapped_address((await checker.binding(first, (other[0], checker.server[1])))[0])
        checker.progress(f"test III: mapping toward the alternate IP and port {show(other)}")
        third = mapped_address((await checker.binding(first, other))[0]) if second != mapped else None
    except (TransactionTimeout, ServerError) as e:
        report.notes.append(f"mapping test failed: {e}")
        return
    report.mapping = mapping_behaviour(mapped, second, third)


async def measure_filtering(checker: Checker, other: Address) -> None:
    """RFC 5780 §4.4 tests II and III: whether answers from the alternate IP
    and port, and from the alternate port, get through."""
    report = checker.report
    checker.progress("filtering tests: answers from the alternate IP and port, and the alternate port")
    probe = checker.open()
    try:
        await checker.binding(probe, checker.server)
    except (TransactionTimeout, ServerError) as e:
        report.notes.append(f"filtering test failed: {e}")
        return
    both, port_only = await defer.gatherResults([
        Deferred.fromCoroutine(checker.answered(probe, checker.server, other, change_ip=True, change_port=True)),
        Deferred.fromCoroutine(checker.answered(probe, checker.server, (checker.server[0], other[1]),
                                                change_port=True)),
    ])
    if both is None or port_only is None:
        report.notes.append("the server answered a CHANGE-REQUEST from the wrong address")
        return
    report.filtering = filtering_behaviour(both, port_only)


async def measure_allocation(checker: Checker) -> None:
    """RFC 4787 §4.1: the ports mapped for new sockets opened one after another."""
    report = checker.report
    checker.progress(f"port allocation: {checker.allocation_samples} new sockets, one after another")
    samples = []
    for _ in range(checker.allocation_samples):
        probe = checker.open()
        try:
            mapped = mapped_address((await checker.binding(probe, checker.server))[0])
        except (TransactionTimeout, ServerError):
            continue
        if mapped is not None:
            samples.append((probe.port, mapped[1]))
    report.port_allocation = port_allocation(samples)


async def measure_hairpinning(checker: Checker, first: ProbeSocket, mapped: Address | None) -> None:
    """RFC 5780 §4.5: whether a second socket reaches test I's socket through its mapped address."""
    if mapped is None:
        return
    checker.progress(f"hairpinning: a second socket sends to our mapped address {show(mapped)}")
    outcome = await checker.arrives(first, checker.open(), binding_request(), checker.reach(mapped))
    checker.report.hairpinning = outcome == "arrived"


async def measure_lifetime(checker: Checker) -> None:
    """RFC 5780 §4.6: how long an idle UDP mapping lives, one mapping per wait, side by side."""
    report = checker.report
    waits = lifetime_schedule(checker.lifetime_max_seconds, checker.probe_seconds)
    if not waits:
        report.notes.append("UDP binding lifetime not measured (--lifetime-max-seconds too small)")
        return
    checker.progress(f"binding lifetime: {len(waits)} mappings probed after "
                     + ", ".join(f"{w:g}" for w in waits) + " s (in the background)")
    results = await defer.gatherResults([Deferred.fromCoroutine(_survives(checker, w)) for w in waits])
    results = [(w, alive) for w, alive in zip(waits, results) if alive is not None]
    if len(results) != len(waits):
        report.notes.append("the server does not support RESPONSE-PORT: binding lifetime not measured")
        return
    report.binding_lifetime_seconds, report.binding_lifetime_max_seconds = lifetime_bounds(results)
    checker.progress("binding lifetime: done")


async def _survives(checker: Checker, wait_seconds: float) -> bool | None:
    """Make a mapping, wait, then have the server answer a second socket's
    request to the first mapping's port (RFC 5780 §4.6)."""
    holder = checker.open()
    try:
        response, _ = await checker.binding(holder, checker.server)
    except (TransactionTimeout, ServerError):
        return False
    mapped = mapped_address(response)
    if mapped is None:
        return False
    await _sleep(checker.reactor, wait_seconds)
    outcome = await checker.arrives(holder, checker.open(), binding_request(response_port=mapped[1]), checker.server)
    if outcome == "answered":
        return None  # an error response (RESPONSE-PORT unknown), or the server ignored it
    return outcome == "arrived"


def _sleep(clock, seconds: float) -> Deferred:
    return task.deferLater(clock, seconds, lambda: None)
