"""Port prediction and the birthday spray, sans-IO.

A NAT with endpoint-dependent mapping (RFC 4787 §4.1) gives the peer a new
port, not the one the super node saw. When the NAT allocates ports
sequentially, the next ones are predictable (srflx + k x delta). When it
allocates them at random, the two sides play the birthday game as
Tailscale's magicsock does: the "hard" side opens N sockets, each sending a
check to the "easy" (endpoint-independent) side's srflx, and the easy side
sends M checks to random ports of the hard side's public address; some
probe meets an open mapping with probability 1 - (1 - N/64512)^M over
64,512 ports: about 98 % with N = 256 and M = 1024 (Tailscale's figure),
99.97 % with the M = 2048 used here, sent in about 2 s. Everything is
bounded in count and time; the caller sends what ``due(now)`` returns.

``NatHint`` is the compact NAT description carried in presence
(``nat_type``), so a peer knows which side is hard before the checks start,
and how long its UDP bindings live when that was measured (``nat_check``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rendezvous.peer.nat_check import (ADDRESS_AND_PORT_DEPENDENT, ADDRESS_DEPENDENT, ENDPOINT_INDEPENDENT, PRESERVING, RANDOM,
                        SEQUENTIAL, PortAllocation, port_allocation)
from rendezvous.stun.addresses import Address

SPRAY_SOCKETS = 256
SPRAY_PROBES = 2048
SPRAY_INTERVAL_SECONDS = 0.001
PREDICTED_PORTS = 4
LOWEST_PORT = 1024
KEEPALIVE_SECONDS = 15.0
MIN_KEEPALIVE_SECONDS = 1.0
MAX_KEEPALIVE_SECONDS = 120.0
_SHORT = {ENDPOINT_INDEPENDENT: "eim", ADDRESS_DEPENDENT: "adm", ADDRESS_AND_PORT_DEPENDENT: "apdm"}
_LONG = {v: k for k, v in _SHORT.items()}


@dataclass(frozen=True)
class NatHint:
    """What a peer needs to know of a NAT: mapping behaviour and port allocation."""

    mapping: str | None              # RFC 5780 words; None when unknown
    allocation: str | None = None    # preserving, sequential or random
    delta: int | None = None         # the step of sequential allocation
    lifetime_seconds: float | None = None  # the UDP binding lifetime, when measured

    @property
    def hard(self) -> bool:
        """A new, unguessable port for every destination."""
        return self.mapping not in (None, ENDPOINT_INDEPENDENT) and self.allocation == RANDOM

    @property
    def easy(self) -> bool:
        """One port for every destination: the srflx a peer learns is the one it can reach."""
        return self.mapping == ENDPOINT_INDEPENDENT

    def to_presence(self) -> str:
        """E.g. "eim", "apdm/random", "apdm/sequential+2", "eim/preserving@30" (a 30 s
        binding lifetime); at most 64 characters."""
        text = _SHORT.get(self.mapping, "unknown")
        if self.allocation:
            text += f"/{self.allocation}"
            if self.allocation == SEQUENTIAL and self.delta:
                text += f"{self.delta:+d}"
        if self.lifetime_seconds:
            text += f"@{int(self.lifetime_seconds)}"
        return text

    @classmethod
    def from_presence(cls, text: str | None) -> NatHint:
        """Parse ``to_presence``; anything unrecognised is an unknown NAT (or lifetime)."""
        if not isinstance(text, str):
            return cls(None)
        text, _, life = text.partition("@")
        lifetime = float(life) if life.isdigit() and 0 < int(life) <= 86400 else None
        mapping, _, allocation = text.partition("/")
        delta = None
        if allocation.startswith(SEQUENTIAL):
            try:
                delta = int(allocation[len(SEQUENTIAL):])
            except ValueError:
                delta = None
            allocation = SEQUENTIAL
        if allocation not in (PRESERVING, SEQUENTIAL, RANDOM):
            allocation = None
        return cls(_LONG.get(mapping), allocation, delta, lifetime)


def hint_from_probes(toward_primary: Address, toward_other: Address | None,
                     samples: list[tuple[int, int]]) -> NatHint:
    """Classify from the mapped addresses one socket got from the node's two IPs,
    and (local, mapped) port samples of fresh sockets (RFC 5780 §4.3, simplified)."""
    if toward_other is None:
        mapping = None
    elif toward_other == toward_primary:
        mapping = ENDPOINT_INDEPENDENT
    else:
        mapping = ADDRESS_AND_PORT_DEPENDENT if toward_other[0] == toward_primary[0] else ADDRESS_DEPENDENT
    allocation: PortAllocation = port_allocation(samples)
    return NatHint(mapping, allocation.pattern, allocation.delta)


def keepalive_seconds(lifetimes: list[float | None], default: float = KEEPALIVE_SECONDS) -> float:
    """How often to refresh a path's NAT bindings: half the shortest measured binding
    lifetime (within MIN/MAX_KEEPALIVE_SECONDS), else RFC 8445 §11's default, 15 s."""
    known = [t for t in lifetimes if t is not None and math.isfinite(t) and t > 0]
    if not known:
        return default
    return min(MAX_KEEPALIVE_SECONDS, max(MIN_KEEPALIVE_SECONDS, min(known) / 2))


def predicted_ports(srflx_port: int, delta: int, count: int = PREDICTED_PORTS) -> list[int]:
    """The next ports a sequential allocator hands out after srflx_port (no wrap-around)."""
    ports = [srflx_port + delta * k for k in range(1, count + 1)]
    return [p for p in ports if LOWEST_PORT <= p <= 65535]


def spray_role(mine: NatHint, theirs: NatHint) -> str | None:
    """"hard" or "easy" when a birthday spray can help this pair, else None."""
    if mine.hard and theirs.easy:
        return "hard"
    if mine.easy and theirs.hard:
        return "easy"
    return None


class BirthdaySpray:
    """The probe schedule of one side: (socket index, destination) pairs, paced.

    The hard side sends one probe from each of ``sockets`` sockets to the
    peer's srflx; the easy side sends ``probes`` probes from its one socket
    to distinct random ports of the peer's public IP.
    """

    def __init__(self, role: str, peer: Address, start: float, *, sockets: int = SPRAY_SOCKETS,
                 probes: int = SPRAY_PROBES, interval_seconds: float = SPRAY_INTERVAL_SECONDS,
                 rng: random.Random | None = None) -> None:
        if role not in ("hard", "easy"):
            raise ValueError("role is hard or easy")
        self.role = role
        self.interval_seconds = interval_seconds
        if role == "hard":
            self._plan = [(i, peer) for i in range(sockets)]
        else:
            ports = (rng or random.SystemRandom()).sample(range(LOWEST_PORT, 65536), min(probes, 65536 - LOWEST_PORT))
            self._plan = [(0, (peer[0], port)) for port in ports]
        self.deadline: float | None = start if self._plan else None
        self.peer, self.start, self.sent = peer, start, 0

    @property
    def remaining(self) -> int:
        return len(self._plan)

    def due(self, now: float) -> list[tuple[int, Address]]:
        """The probes due by now; afterwards ``deadline`` is the next one's time (None when done)."""
        if self.deadline is None or now < self.deadline:
            return []
        count = 1 + int((now - self.deadline) / self.interval_seconds)
        due, self._plan = self._plan[:count], self._plan[count:]
        self.sent += len(due)
        self.deadline = self.deadline + count * self.interval_seconds if self._plan else None
        return due

    def stop(self) -> None:
        self._plan = []
        self.deadline = None

    def describe(self, origin: float) -> str:
        """What was sent, for an attempt's detail: e.g. "easy side: 2048 probes to random ports of
        198.18.0.12 from 1610 ms"."""
        to = f"{self.peer[0]}:{self.peer[1]}" if self.role == "hard" else f"random ports of {self.peer[0]}"
        return f"{self.role} side: {self.sent} probes to {to} from {round((self.start - origin) * 1000)} ms"
