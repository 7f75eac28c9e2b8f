"""The analyzer's decisions: sans-IO functions of what was observed.

RFC 5780 §4.3 (mapping behaviour) and §4.4 (filtering behaviour), the RFC
3489 §5 "classic" labels derived from them, RFC 4787 §4.1 (port
preservation and allocation) for port prediction, and the RFC 5780 §4.6
binding lifetime search: when to probe, and what the probes say.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

from rendezvous.stun.addresses import Address

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"

# Classic (RFC 3489) labels.
UDP_BLOCKED = "UDP blocked"
OPEN_INTERNET = "open internet"
SYMMETRIC_FIREWALL = "symmetric UDP firewall"
FULL_CONE = "full cone"
RESTRICTED_CONE = "restricted cone"
PORT_RESTRICTED_CONE = "port restricted cone"
SYMMETRIC = "symmetric"

PRESERVING = "preserving"
SEQUENTIAL = "sequential"
RANDOM = "random"

# The largest port step still called sequential allocation.
MAX_SEQUENTIAL_DELTA = 64
# Probe waits for the binding lifetime search, seconds after the mapping was made.
LIFETIME_STEPS_SECONDS = (1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800)


def mapping_behaviour(test1: Address | None, test2: Address | None, test3: Address | None) -> str | None:
    """RFC 5780 §4.3 from the mapped addresses seen by the server's primary
    address (test I), alternate IP (test II) and alternate IP and port (test III).

    None when a needed answer is missing.
    """
    if test1 is None or test2 is None:
        return None
    if test2 == test1:
        return ENDPOINT_INDEPENDENT
    if test3 is None:
        return None
    if test3 == test2:
        return ADDRESS_DEPENDENT
    return ADDRESS_AND_PORT_DEPENDENT


def filtering_behaviour(from_other_ip_and_port: bool | None, from_other_port: bool | None) -> str | None:
    """RFC 5780 §4.4 from whether the answers to CHANGE-REQUEST (change IP and
    port: test II; change port: test III) arrived. None when not tested.
    """
    if from_other_ip_and_port is None:
        return None
    if from_other_ip_and_port:
        return ENDPOINT_INDEPENDENT
    if from_other_port is None:
        return None
    return ADDRESS_DEPENDENT if from_other_port else ADDRESS_AND_PORT_DEPENDENT


def classic_type(udp_blocked: bool | None, nat_present: bool | None, mapping: str | None,
                 filtering: str | None) -> str | None:
    """The RFC 3489 label for familiarity; None when it cannot be told."""
    if udp_blocked:
        return UDP_BLOCKED
    if nat_present is False:
        if filtering is None:
            return None
        return OPEN_INTERNET if filtering == ENDPOINT_INDEPENDENT else SYMMETRIC_FIREWALL
    if mapping is None:
        return None
    if mapping != ENDPOINT_INDEPENDENT:
        return SYMMETRIC
    return {
        ENDPOINT_INDEPENDENT: FULL_CONE,
        ADDRESS_DEPENDENT: RESTRICTED_CONE,
        ADDRESS_AND_PORT_DEPENDENT: PORT_RESTRICTED_CONE,
    }.get(filtering)


@dataclass(frozen=True)
class PortAllocation:
    """How the NAT picks external ports for new mappings (RFC 4787 §4.1).

    ``samples`` are (local port, mapped port) of sockets opened one after
    another; ``delta`` is the step of sequential allocation.
    """

    pattern: str | None
    delta: int | None = None
    samples: tuple[tuple[int, int], ...] = ()


def port_allocation(samples: list[tuple[int, int]]) -> PortAllocation:
    """Classify mapped ports as preserving, sequential (with its delta) or random.

    Sequential means most steps between consecutive mappings (at least two
    thirds) are one and the same small nonzero delta.
    """
    frozen = tuple((int(a), int(b)) for a, b in samples)
    if not frozen:
        return PortAllocation(None, None, frozen)
    if all(local == mapped for local, mapped in frozen):
        return PortAllocation(PRESERVING, None, frozen)
    mapped = [m for _, m in frozen]
    deltas = [b - a for a, b in pairwise(mapped)]
    if len(deltas) < 2:
        return PortAllocation(None, None, frozen)
    delta, count = Counter(deltas).most_common(1)[0]
    if delta != 0 and abs(delta) <= MAX_SEQUENTIAL_DELTA and 3 * count >= 2 * len(deltas):
        return PortAllocation(SEQUENTIAL, delta, frozen)
    return PortAllocation(RANDOM, None, frozen)


def prediction_easy(mapping: str | None, allocation: PortAllocation | None) -> bool | None:
    """Whether a peer can guess the port this NAT will use toward it.

    Endpoint-independent mapping keeps the port the server saw; otherwise
    preserving or sequential allocation can be extrapolated and random can not.
    """
    if mapping == ENDPOINT_INDEPENDENT:
        return True
    pattern = allocation.pattern if allocation else None
    if pattern in (PRESERVING, SEQUENTIAL):
        return True
    if pattern == RANDOM:
        return False
    return None


def lifetime_schedule(max_seconds: float, probe_seconds: float) -> list[float]:
    """Waits (after each mapping is made) at which to test whether it is alive.

    Each wait gets its own mapping, probed once, so probes never refresh
    each other; they run side by side, so the search lasts as long as the
    longest wait plus one probe, which stays within max_seconds.
    """
    longest = max_seconds - probe_seconds
    if longest < 1:
        return []
    waits = [float(s) for s in LIFETIME_STEPS_SECONDS if s < longest]
    if not waits or waits[-1] < longest:
        waits.append(float(int(longest)))
    return waits


def lifetime_bounds(results: list[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(longest wait a mapping survived before the first one that died, that first death).

    ``(None, None)`` without results; an upper bound of None means every
    mapping outlived the search.
    """
    lower, upper = None, None
    for wait, alive in sorted(results):
        if alive:
            lower = wait
        else:
            upper = wait
            break
    return lower, upper
