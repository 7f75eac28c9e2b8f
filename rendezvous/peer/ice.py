"""ICE connectivity checks, sans-IO (RFC 8445, one component, UDP).

§5.1.2 candidate priorities (with RFC 8421 §4: IPv6 above IPv4 for one
type); §6.1.2 forming, ordering and pruning the
check list, §6.1.2.6 initial states by foundation; §6.1.4 the Ta-paced
scheduler with its triggered-check queue; §7.2 sending a check (USERNAME
"remote:local", PRIORITY, ICE-CONTROLLING/-CONTROLLED with the tie-breaker,
USE-CANDIDATE; MESSAGE-INTEGRITY with the peer's password, FINGERPRINT)
and §7.2.5 its response (symmetric addresses, 487 role switch,
peer-reflexive local candidates); §7.3 answering a check (400 / 401 /
487, XOR-MAPPED-ADDRESS, peer-reflexive remote candidates, triggered
checks, USE-CANDIDATE); §8.1.1 regular nomination by the controlling agent.
Trickle ICE (RFC 8838): remote candidates and local bases may come after
the checks began (``add_remote``, ``add_base``) and join the check list
(§11); the checks do not fail before both sides' candidates are complete
(``remote_complete``, ``local_complete``: end-of-candidates, §8.2).
After selection, RFC 7675 consent freshness: ``consent_check`` makes a
Binding request on the selected pair (each sent once, a new one every
4-6 s), and consent expires 30 s after the last authenticated answer.

Sockets are *bases*, named by the caller ("main", "relay", "spray-7"...);
a base may have an address in each family (a dual TURN allocation), each
paired with the remote candidates of its family.
``receive`` and ``expire`` return ``Send(base, destination, data)`` for the
caller to write; ``deadline`` says when to call ``expire`` next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum

from rendezvous.stun import Attr, Class, CodecError, Error, Message, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.attributes import decode_error_code, decode_text, decode_uint32, decode_uint64, encode_uint32, encode_uint64
from rendezvous.stun.integrity import short_term_key
from rendezvous.stun.replies import error_response, success_response
from rendezvous.stun.transaction import ClientTransaction

# §5.1.2.2: host 126, peer-reflexive 110, server-reflexive 100, relayed 0.
# A UPnP-mapped address is as good as a host one on the public side; a
# predicted port is a guess, so it ranks under a measured srflx.
TYPE_PREFERENCE = {"host": 126, "upnp": 120, "prflx": 110, "srflx": 100, "predicted": 90, "relay": 0}
COMPONENT = 1
TA_SECONDS = 0.02
CHECK_RTO_SECONDS = 0.25
CHECK_RC = 5
CHECK_RM = 8
DIRECT_WAIT_SECONDS = 0.3      # after a direct pair is valid, wait this long for a better one
RELAY_WAIT_SECONDS = 4.0       # a relayed pair waits this long after the checks start
MAX_PAIRS = 2048
CONSENT_INTERVAL_SECONDS = 5.0  # RFC 7675 §5.1: a check every 5 s, randomized to 0.8-1.2 times
CONSENT_TIMEOUT_SECONDS = 30.0  # RFC 7675 §5.1: consent expires 30 s after the last answer


def priority(kind: str, local_preference: int, component: int = COMPONENT) -> int:
    """§5.1.2.1: 2^24 type preference + 2^8 local preference + (256 - component)."""
    return (TYPE_PREFERENCE[kind] << 24) + ((local_preference & 0xFFFF) << 8) + (256 - component)


def local_preference(ip: str, index: int) -> int:
    """§5.1.2.1 with RFC 8421 §4: an IPv6 address ranks above every IPv4 one of the same type
    (65535 - index for IPv6, 32767 - index for IPv4; ``index`` orders those of one family)."""
    return (65535 if ":" in ip else 32767) - index


def pair_priority(controlling: int, controlled: int) -> int:
    """§6.1.2.3: 2^32 MIN(G,D) + 2 MAX(G,D) + (G > D)."""
    return (min(controlling, controlled) << 32) + 2 * max(controlling, controlled) + (controlling > controlled)


@dataclass(frozen=True)
class Candidate:
    """A transport address: its type, priority, foundation and (local ones) base."""

    kind: str
    address: Address
    priority: int
    foundation: str
    base: str = ""
    protocol: str = "udp"

    def to_wire(self) -> dict:
        """The signaling form (docs/PROTOCOL.md): type, ip, port, protocol."""
        return {"type": self.kind, "ip": self.address[0], "port": self.address[1], "protocol": self.protocol}

    @classmethod
    def from_wire(cls, entry: dict, index: int) -> Candidate:
        """A remote candidate from its signaling form; its priority follows its list position,
        as the peer computed it (local preference 65535 - index)."""
        kind, protocol = entry["type"], entry.get("protocol", "udp")
        address = (entry["ip"], int(entry["port"]))
        return cls(kind, address, priority(kind, 65535 - index), f"{kind}:{address[0]}:{protocol}", "", protocol)


class PairState(Enum):
    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(eq=False)
class Pair:
    """A local base candidate and a remote candidate, and the state of their check."""

    local: Candidate
    remote: Candidate
    state: PairState = PairState.FROZEN
    nominated: bool = False
    use_candidate: bool = False       # the next check carries USE-CANDIDATE
    nominate_on_success: bool = False  # the peer nominated it before our check succeeded
    mapped: Address | None = None     # what the peer saw (XOR-MAPPED-ADDRESS of our check)
    probe: bool = False               # a one-shot spray probe, outside the paced list
    succeeded_at: float | None = None

    @property
    def key(self) -> tuple[str, Address]:
        return self.local.base, self.remote.address

    @property
    def foundation(self) -> str:
        return f"{self.local.foundation}|{self.remote.foundation}"

    @property
    def relayed(self) -> bool:
        return self.local.kind == "relay" or self.remote.kind == "relay"


@dataclass(frozen=True)
class Send:
    """Bytes for the caller to write from a base to a destination."""

    base: str
    destination: Address
    data: bytes


def random_credentials() -> tuple[str, str]:
    """A fresh ufrag (8 characters) and pwd (24), from the ICE character set (§5.3)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    ufrag = "".join(alphabet[b % 64] for b in os.urandom(8))
    pwd = "".join(alphabet[b % 64] for b in os.urandom(24))
    return ufrag, pwd


@dataclass
class Agent:
    """One ICE agent for one data stream of one component."""

    controlling: bool
    local_ufrag: str
    local_pwd: str
    tie_breaker: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big"))
    ta_seconds: float = TA_SECONDS
    rto_seconds: float = CHECK_RTO_SECONDS
    rc: int = CHECK_RC
    rm: int = CHECK_RM
    direct_wait_seconds: float = DIRECT_WAIT_SECONDS
    relay_wait_seconds: float = RELAY_WAIT_SECONDS
    hold_relayed: bool = False  # the caller has a better path pending: do not nominate a relayed pair
    relay_first: bool = False  # check a relayed pair first (a session starts on it)
    consent_timeout_seconds: float = CONSENT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        self.bases: dict[str, Candidate] = {}
        self._other_family: dict[str, Candidate] = {}  # a base's address in its second family (add_base_address)
        self.local_candidates: list[Candidate] = []
        self.remote_candidates: list[Candidate] = []
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.pairs: dict[tuple[str, Address], Pair] = {}
        self.selected: Pair | None = None
        self.started_at: float | None = None
        self.counters: dict[str, int] = {"malformed": 0, "unauthenticated": 0, "role-conflicts": 0}
        self._local_key = short_term_key(self.local_pwd)
        self._remote_key: bytes | None = None
        self._triggered: list[Pair] = []
        self._transactions: dict[bytes, tuple[ClientTransaction, Pair]] = {}
        self._next_check_at: float | None = None
        self._nominating: Pair | None = None
        self._early: list[tuple[Message, str, Address]] = []  # checks that came before the peer's credentials
        self._paired: set[str] = set()  # bases paired with every remote candidate
        self.consent_at: float | None = None  # the last authenticated answer on the consent pair
        self.watched: Pair | None = None  # a valid pair in use before selection (see watch)
        self._consent: dict[bytes, float] = {}  # consent checks sent, by transaction id
        self._remote_count = 0  # remote candidates signaled so far: the next one's place in the peer's list
        self.remote_complete = True  # RFC 8838 §8.2: the peer's end-of-candidates came (or it does not trickle)
        self.local_complete = True   # ... and ours were all gathered

    # -- candidates ------------------------------------------------------

    def add_base(self, name: str, kind: str, address: Address, local_preference: int,
                 pair: bool = True) -> Candidate:
        """A socket checks are sent from: a host address or a relayed one (kind "relay").

        Without ``pair`` the base only sends ``probe`` checks (a birthday spray socket).
        """
        candidate = Candidate(kind, address, priority(kind, local_preference), f"{kind}:{name}", name)
        self.bases[name] = candidate
        self._other_family.pop(name, None)
        if pair:
            for remote in self.remote_candidates:
                self._pair(candidate, remote)
            self._paired.add(name)
            if self.started_at is not None:
                self._unfreeze_by_foundation()  # RFC 8838 §11: a new base joins the running checks
        return candidate

    def add_base_address(self, name: str, address: Address, local_preference: int) -> Candidate:
        """The base ``name``'s address in the other family (a dual TURN allocation's IPv6 relayed
        address, RFC 8656 §7.1): it is the local side of the base's pairs with remotes of that family."""
        first = self.bases[name]
        if (":" in first.address[0]) == (":" in address[0]):
            raise ValueError(f"{name} already has an address of the family of {address[0]}")
        candidate = Candidate(first.kind, address, priority(first.kind, local_preference),
                              f"{first.kind}:{name}:{'6' if ':' in address[0] else '4'}", name)
        self._other_family[name] = candidate
        if name in self._paired:
            for remote in self.remote_candidates:
                self._pair(first, remote)
            if self.started_at is not None:
                self._unfreeze_by_foundation()
        return candidate

    def advertise(self, candidate: Candidate) -> None:
        """A local candidate to send to the peer (its base must be added first)."""
        if candidate.base not in self.bases:
            raise ValueError(f"unknown base {candidate.base!r}")
        if all(c.address != candidate.address for c in self.local_candidates):
            self.local_candidates.append(candidate)

    def candidate(self, kind: str, address: Address, base: str) -> Candidate:
        """A local candidate of this kind on a base, ranked by its family (RFC 8421: IPv6 first)
        and then its place in the advertised list."""
        index = len(self.local_candidates)
        return Candidate(kind, address, priority(kind, local_preference(address[0], index)), f"{kind}:{base}", base)

    def set_remote(self, ufrag: str, pwd: str, candidates: list[dict], now: float) -> None:
        """The peer's credentials and candidates (§6.1.2); checks start at ``now``."""
        self.remote_ufrag, self.remote_pwd = ufrag, pwd
        self._remote_key = short_term_key(pwd)
        self._add_remote(candidates)
        self._unfreeze_by_foundation()
        self.started_at = now
        self._next_check_at = now
        early, self._early = self._early, []
        for request, base, source in early:
            self._learn_from_check(request, base, source, now)

    def add_remote(self, candidates: list[dict]) -> None:
        """RFC 8838 §11: the peer's trickled candidates join the check list (after ``set_remote``)."""
        self._add_remote(candidates)
        if self.started_at is not None:
            self._unfreeze_by_foundation()

    def _add_remote(self, candidates: list[dict]) -> None:
        """Signaled candidates, ranked by their place in everything the peer has signaled."""
        for entry in candidates:
            index, self._remote_count = self._remote_count, self._remote_count + 1
            if entry.get("protocol", "udp") != "udp":
                continue
            remote = Candidate.from_wire(entry, index)
            known = next((r for r in self.remote_candidates if r.address == remote.address), None)
            if known is None:
                self.remote_candidates.append(remote)
            elif known.kind == "prflx" or (known.kind, remote.kind) == ("srflx", "upnp"):
                # RFC 8838 §11.1: the signaled candidate replaces a peer-reflexive one; a UPnP
                # mapping found later replaces the server-reflexive address it equals
                self.remote_candidates[self.remote_candidates.index(known)] = remote
                for pair in self.pairs.values():
                    if pair.remote is known:
                        pair.remote = remote
            else:
                continue
            for name in self._paired:
                self._pair(self.bases[name], remote)

    def _pair(self, base: Candidate, remote: Candidate, state: PairState = PairState.FROZEN) -> Pair | None:
        """§6.1.2.2, §6.1.2.4: one pair per (base, remote address); IPv4 with IPv4 (a base with an
        address in each family pairs each with its own)."""
        other = self._other_family.get(base.base)
        if other is not None and (":" in other.address[0]) == (":" in remote.address[0]):
            base = other
        if (":" in base.address[0]) != (":" in remote.address[0]):
            return None
        if base.kind == "relay" and remote.kind == "relay" and base.address == remote.address:
            return None
        key = (base.base, remote.address)
        if key in self.pairs or len(self.pairs) >= MAX_PAIRS:
            return self.pairs.get(key)
        pair = Pair(base, remote, state)
        self.pairs[key] = pair
        return pair

    def _unfreeze_by_foundation(self) -> None:
        """§6.1.2.6: the best pair of each foundation starts Waiting."""
        seen = set()
        for pair in self.ordered():
            if pair.state is PairState.FROZEN and pair.foundation not in seen:
                pair.state = PairState.WAITING
            seen.add(pair.foundation)

    def pair_priority(self, pair: Pair) -> int:
        local, remote = pair.local.priority, pair.remote.priority
        return pair_priority(local, remote) if self.controlling else pair_priority(remote, local)

    def ordered(self) -> list[Pair]:
        """The check list, highest priority first (§6.1.2.3)."""
        return sorted(self.pairs.values(), key=self.pair_priority, reverse=True)

    # -- the clock -------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When ``expire`` must run next, or None when nothing is scheduled."""
        times = [t.deadline for t, _ in self._transactions.values() if t.deadline is not None]
        if self._next_check_at is not None and self.selected is None and self._has_work():
            times.append(self._next_check_at)
        wake = self._nomination_time()
        if wake is not None:
            times.append(wake)
        return min(times) if times else None

    def _has_work(self) -> bool:
        return bool(self._triggered) or any(
            p.state in (PairState.WAITING, PairState.FROZEN) and not p.probe for p in self.pairs.values())

    def expire(self, now: float) -> list[Send]:
        """Retransmit, time out, send the next paced check, nominate; what to send."""
        sends: list[Send] = []
        for tid, (transaction, pair) in list(self._transactions.items()):
            again = transaction.expire(now)
            if again is not None:
                sends.append(Send(pair.local.base, pair.remote.address, again))
            elif transaction.deadline is None:
                del self._transactions[tid]
                if pair.state is PairState.IN_PROGRESS or self._nominating is pair:
                    # §7.2.5.4: no answer fails the pair, a succeeded one being nominated too (its
                    # path died), so that the next valid pair can be nominated.
                    pair.state = PairState.FAILED
                    pair.use_candidate = False
                    if self._nominating is pair:
                        self._nominating = None
        if self._remote_key is not None and self.selected is None:
            while self._next_check_at is not None and now >= self._next_check_at and self._has_work():
                send = self._next_check(now)
                self._next_check_at += self.ta_seconds
                if send is not None:
                    sends.append(send)
                    break
            if self._next_check_at is not None and self._next_check_at < now:
                self._next_check_at = now
            sends.extend(self._maybe_nominate(now))
        return sends

    def _next_check(self, now: float) -> Send | None:
        """§6.1.4.2: a triggered check first, else the best Waiting pair, else unfreeze one.
        With ``relay_first``, while no relayed pair is valid or being checked, the best waiting
        relayed pair goes before the rest: the relay is the path a session starts on."""
        while self._triggered:
            pair = self._triggered.pop(0)
            if pair.state is not PairState.SUCCEEDED or pair.use_candidate:
                return self._check(pair, now)
        if self.relay_first and not any(p.relayed and p.state in (PairState.SUCCEEDED, PairState.IN_PROGRESS)
                                        for p in self.pairs.values()):
            relayed = [p for p in self.ordered() if p.relayed and p.state is PairState.WAITING and not p.probe]
            if relayed:  # relay to relay first: it needs no NAT's leave, only the relays' permissions
                both = [p for p in relayed if p.local.kind == "relay" and p.remote.kind == "relay"]
                return self._check((both or relayed)[0], now)
        waiting = [p for p in self.ordered() if p.state is PairState.WAITING and not p.probe]
        if not waiting:
            frozen = [p for p in self.ordered() if p.state is PairState.FROZEN and not p.probe]
            if not frozen:
                return None
            waiting = frozen[:1]
        return self._check(waiting[0], now)

    def _check(self, pair: Pair, now: float, rc: int | None = None) -> Send:
        """§7.2.2: a Binding request for this pair."""
        data = self._binding_request(pair)
        transaction = ClientTransaction(data, now, rto_seconds=self.rto_seconds,
                                        rc=self.rc if rc is None else rc, rm=self.rm)
        self._transactions[transaction.transaction_id] = (transaction, pair)
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        return Send(pair.local.base, pair.remote.address, data)

    def _binding_request(self, pair: Pair) -> bytes:
        """§7.2.2's attributes, signed with the peer's password."""
        request = Message(Method.BINDING, Class.REQUEST)
        request.add(Attr.USERNAME, f"{self.remote_ufrag}:{self.local_ufrag}".encode())
        request.add(Attr.PRIORITY, encode_uint32(priority("prflx", (pair.local.priority >> 8) & 0xFFFF)))
        if self.controlling:
            request.add(Attr.ICE_CONTROLLING, encode_uint64(self.tie_breaker))
            if pair.use_candidate:
                request.add(Attr.USE_CANDIDATE, b"")
        else:
            request.add(Attr.ICE_CONTROLLED, encode_uint64(self.tie_breaker))
        return request.encode(integrity_key=self._remote_key, fingerprint=True)

    def probe(self, base: str, destination: Address, kind: str, now: float) -> Send | None:
        """One check outside the paced list (port prediction, birthday spray), sent once.

        ``destination`` becomes a remote candidate of ``kind`` ("predicted"
        or "srflx"); a check that gets through makes an ordinary valid pair.
        """
        if self._remote_key is None or self.selected is not None or base not in self.bases:
            return None
        remote = next((r for r in self.remote_candidates if r.address == destination), None)
        if remote is None:
            remote = Candidate(kind, destination, priority(kind, 0), f"{kind}:{destination[0]}")
        pair = self._pair(self.bases[base], remote, PairState.WAITING)
        if pair is None or pair.state is not PairState.WAITING and pair.state is not PairState.FROZEN:
            return None
        pair.probe = True
        return self._check(pair, now, rc=1)

    # -- inbound ---------------------------------------------------------

    def receive(self, data: bytes, base: str, source: Address, now: float) -> list[Send]:
        """A STUN message that arrived on a base; never raises on bad input."""
        try:
            message = Message.decode(data)
        except CodecError:
            self.counters["malformed"] += 1
            return []
        if message.method != Method.BINDING or message.check_fingerprint() is False:
            self.counters["malformed"] += 1
            return []
        try:
            if message.cls is Class.REQUEST:
                return self._request(message, base, tuple(source[:2]), now)
            if message.cls in (Class.SUCCESS, Class.ERROR):
                return self._response(message, base, tuple(source[:2]), now)
        except CodecError:
            self.counters["malformed"] += 1
        return []  # indications are keepalives

    def _request(self, request: Message, base: str, source: Address, now: float) -> list[Send]:
        """§7.3.1: authenticate, resolve role conflicts, answer, learn, trigger."""
        if base not in self.bases:
            return []
        username = request.get(Attr.USERNAME)
        if username is None or Attr.MESSAGE_INTEGRITY not in request:
            return [self._error(request, base, source, Error.BAD_REQUEST)]
        local, _, remote = decode_text(username).partition(":")
        if (local != self.local_ufrag or (self.remote_ufrag is not None and remote != self.remote_ufrag)
                or not request.check_integrity(self._local_key)):
            self.counters["unauthenticated"] += 1
            return [self._error(request, base, source, Error.UNAUTHENTICATED)]
        if Attr.PRIORITY not in request:
            return [self._error(request, base, source, Error.BAD_REQUEST)]
        decode_uint32(request.get(Attr.PRIORITY))
        conflict = self._role_conflict(request)
        if conflict:
            self.counters["role-conflicts"] += 1
            return [self._error(request, base, source, Error.ROLE_CONFLICT)]
        response = success_response(request)
        response.add_address(Attr.XOR_MAPPED_ADDRESS, source)
        sends = [Send(base, source, response.encode(integrity_key=self._local_key, fingerprint=True))]
        if self._remote_key is None:
            if len(self._early) < 64:
                self._early.append((request, base, source))
            return sends
        self._learn_from_check(request, base, source, now)
        return sends

    def _role_conflict(self, request: Message) -> bool:
        """§7.3.1.1: True when a 487 is due; else the role may have switched."""
        theirs_controlling = request.get(Attr.ICE_CONTROLLING)
        theirs_controlled = request.get(Attr.ICE_CONTROLLED)
        if self.controlling and theirs_controlling is not None:
            if self.tie_breaker >= decode_uint64(theirs_controlling):
                return True
            self.controlling = False
        elif not self.controlling and theirs_controlled is not None:
            if self.tie_breaker >= decode_uint64(theirs_controlled):
                self.controlling = True
            else:
                return True
        return False

    def _learn_from_check(self, request: Message, base: str, source: Address, now: float) -> None:
        """§7.3.1.3 peer-reflexive remote candidates, §7.3.1.4 triggered checks, §7.3.1.5 nomination."""
        remote = next((r for r in self.remote_candidates if r.address == source), None)
        if remote is None:
            remote = Candidate("prflx", source, decode_uint32(request.get(Attr.PRIORITY)), f"prflx:{source[0]}")
            self.remote_candidates.append(remote)
        pair = self.pairs.get((base, source)) or self._pair(self.bases[base], remote, PairState.WAITING)
        if pair is None:
            return
        if Attr.USE_CANDIDATE in request and not self.controlling:
            if pair.state is PairState.SUCCEEDED:
                if self.selected is not pair:
                    self._select(pair, now)
                return
            pair.nominate_on_success = True
        if pair.state is not PairState.SUCCEEDED:
            # §7.3.1.4: a triggered check (an In-Progress one is checked again).
            pair.state = PairState.WAITING
            pair.probe = False
            if pair not in self._triggered:
                self._triggered.append(pair)
            if self._next_check_at is None or self._next_check_at > now:
                self._next_check_at = now

    def _response(self, response: Message, base: str, source: Address, now: float) -> list[Send]:
        """§7.2.5: match, authenticate, check symmetry, then succeed, fail or switch role."""
        if response.transaction_id in self._consent:
            self._consent_answer(response, base, source, now)
            return []
        entry = self._transactions.get(response.transaction_id)
        if entry is None or self._remote_key is None:
            return []
        transaction, pair = entry
        if not response.check_integrity(self._remote_key):
            self.counters["unauthenticated"] += 1
            return []
        del self._transactions[response.transaction_id]
        transaction.receive(response)
        if source != pair.remote.address or base != pair.local.base:
            pair.state = PairState.FAILED  # §7.2.5.2.1: not symmetric
            return []
        if response.cls is Class.ERROR:
            code, _ = decode_error_code(response.get(Attr.ERROR_CODE) or b"")
            if code == Error.ROLE_CONFLICT:
                # §7.2.5.1: switch role and check the pair again.
                self.controlling = Attr.ICE_CONTROLLED in Message.decode(transaction.request)
                pair.state = PairState.WAITING
                self._triggered.append(pair)
            else:
                pair.state = PairState.FAILED
            return []
        mapped = response.address(Attr.XOR_MAPPED_ADDRESS)
        if mapped is None:
            pair.state = PairState.FAILED
            return []
        pair.mapped = mapped
        if all(c.address != mapped for c in self.local_candidates):
            # §7.2.5.3.1: a peer-reflexive local candidate on this base.
            self.local_candidates.append(Candidate("prflx", mapped, priority("prflx", 0), f"prflx:{base}", base))
        first = pair.state is not PairState.SUCCEEDED
        pair.state = PairState.SUCCEEDED
        pair.probe = False
        if first:
            pair.succeeded_at = now
            for other in self.pairs.values():  # §7.2.5.3.3
                if other.state is PairState.FROZEN and other.foundation == pair.foundation:
                    other.state = PairState.WAITING
        if pair.nominate_on_success and not self.controlling:
            self._select(pair, now)
        elif self.controlling and pair.use_candidate:
            self._select(pair, now)
        return []

    # -- nomination ------------------------------------------------------

    def valid(self) -> list[Pair]:
        """Succeeded pairs, best first."""
        return [p for p in self.ordered() if p.state is PairState.SUCCEEDED]

    def _pending(self, pair: Pair) -> bool:
        return pair.state in (PairState.WAITING, PairState.IN_PROGRESS, PairState.FROZEN)

    def _nomination_time(self) -> float | None:
        """When the controlling agent nominates at the latest; None when it will not (yet)."""
        if not self.controlling or self.selected is not None or self._nominating is not None:
            return None
        valid = self.valid()
        if not valid:
            return None
        if valid[0].relayed:  # at least DIRECT_WAIT_SECONDS for a better relayed pair, too
            return None if self.hold_relayed else max((self.started_at or 0) + self.relay_wait_seconds,
                                                      valid[0].succeeded_at + self.direct_wait_seconds)
        return min(p.succeeded_at for p in valid if not p.relayed) + self.direct_wait_seconds

    def _maybe_nominate(self, now: float) -> list[Send]:
        """§8.1.1: nominate the best valid pair once nothing better is pending or the wait is over.

        A relayed pair waits for every direct pair (probes included) to end, and for a better
        relayed one (from a host to the peer's relayed address, one relay hop instead of two).
        """
        wake = self._nomination_time()
        if wake is None:
            return []
        best = self.valid()[0]
        rank = self.pair_priority(best)
        better = any(self._pending(p) and not p.probe and self.pair_priority(p) > rank for p in self.pairs.values())
        if best.relayed:
            waiting = better or not (self.remote_complete and self.local_complete) or any(
                not p.relayed and self._pending(p) for p in self.pairs.values())
        else:
            waiting = better
        if waiting and now < wake:
            return []
        self._nominating = best
        best.use_candidate = True
        return [self._check(best, now)]

    def watch(self, pair: Pair, now: float) -> None:
        """Keep consent (RFC 7675) on ``pair`` before any selection: the valid pair a connection
        already runs on (relay first) while the checks go on. Selection then watches its own pair."""
        self.watched = pair
        self.consent_at = now

    @property
    def consent_pair(self) -> Pair | None:
        """The pair consent checks go on: the selected one, else the one watched."""
        return self.selected or self.watched

    def _select(self, pair: Pair, now: float) -> None:
        pair.nominated = True
        self.selected = pair
        self.consent_at = now  # a check on this pair just succeeded (ours, or the nominating one)
        self._triggered.clear()
        self._transactions.clear()
        self._nominating = None

    @property
    def failed(self) -> bool:
        """Checks started and every pair failed, with nothing left to try and no candidate to come."""
        if (self.started_at is None or self.selected is not None or self._transactions or self._triggered
                or not (self.remote_complete and self.local_complete)):
            return False
        return all(p.state is PairState.FAILED for p in self.pairs.values())

    # -- after selection -------------------------------------------------

    def indication(self) -> bytes:
        """A Binding indication: the keepalive of RFC 8445 §11 (no response)."""
        return Message(Method.BINDING, Class.INDICATION).encode(fingerprint=True)

    def consent_check(self, now: float) -> Send | None:
        """RFC 7675 §5.1: a Binding request on the consent pair, sent once (the next one is the retry)."""
        pair = self.consent_pair
        if pair is None or self._remote_key is None:
            return None
        horizon = now - self.consent_timeout_seconds
        self._consent = {tid: sent for tid, sent in self._consent.items() if sent > horizon}
        data = self._binding_request(pair)
        self._consent[data[8:20]] = now
        return Send(pair.local.base, pair.remote.address, data)

    def consent_expired(self, now: float) -> bool:
        """RFC 7675 §5.1: no authenticated answer on the consent pair for the consent timeout."""
        return self.consent_at is not None and now - self.consent_at >= self.consent_timeout_seconds

    def _consent_answer(self, response: Message, base: str, source: Address, now: float) -> None:
        """A success answer from the consent pair's remote address, signed with its password, renews consent."""
        pair = self.consent_pair
        if pair is None or not response.check_integrity(self._remote_key):
            self.counters["unauthenticated"] += 1
            return
        del self._consent[response.transaction_id]
        if response.cls is Class.SUCCESS and source == pair.remote.address and base == pair.local.base:
            self.consent_at = now

    def _error(self, request: Message, base: str, source: Address, code: int) -> Send:
        response = error_response(request, code)
        key = self._local_key if code == Error.ROLE_CONFLICT else None
        return Send(base, source, response.encode(integrity_key=key, fingerprint=True))
