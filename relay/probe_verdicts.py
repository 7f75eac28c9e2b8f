"""What a relay self-test concludes: one Verdict per check, a Report, and their text and JSON forms.

Sans-IO: the rules that turn a relay's answers into OPEN, closed or
skipped live here, so they are tested on plain values. A request the relay
*grants* towards a forbidden peer is OPEN whether or not anything lives
there (RFC 8656 §9-§12: a permission, channel or connection is what lets
traffic through); 403 Forbidden, and the other refusals below, are closed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from rendezvous.stun.constants import Error

OPEN, CLOSED, SKIPPED = "OPEN", "closed", "skipped"

# Answers that refuse a peer: by policy (403), for its family (443, RFC 8656
# §10.2), or as a malformed peer (400).
REFUSALS = frozenset({Error.FORBIDDEN, Error.PEER_ADDRESS_FAMILY_MISMATCH, Error.BAD_REQUEST})


@dataclass(frozen=True)
class Outcome:
    """One request of a check: its method, what it says of the check, and the relay's answer."""

    method: str
    status: str
    answer: str



def peer_outcome(method: str, code: int | None = None, reason: str = "", answered: bool = True) -> Outcome:
    """A request towards a forbidden peer: granted (code None) is OPEN, a refusal closed.

    RFC 6062 §5.2: a relay checks the peer before it connects, so a Connect
    answered 447 (Connection Timeout or Failure), or still unanswered when
    the probe gives up, is one the relay tried: OPEN. Anything else (508,
    437, ...) says nothing about the peer: skipped.
    """
    if not answered:
        status = OPEN if method == "Connect" else SKIPPED
        return Outcome(method, status, "attempted: no answer yet" if status == OPEN else "got no answer")
    if code is None:
        return Outcome(method, OPEN, "granted")
    answer = f"{code} {reason}".rstrip()
    if code in REFUSALS:
        return Outcome(method, CLOSED, answer)
    if method == "Connect" and code == Error.CONNECTION_TIMEOUT_OR_FAILURE:
        return Outcome(method, OPEN, f"attempted ({answer})")
    return Outcome(method, SKIPPED, answer)


@dataclass
class Verdict:
    """One check's result: OPEN, closed or skipped, and why."""

    check: str
    target: str
    status: str
    detail: str
    category: str = ""
    outcomes: list[Outcome] = field(default_factory=list)


def combine(check: str, target: str, category: str, what: str, outcomes: list[Outcome]) -> Verdict:
    """One target's verdict from its requests: OPEN if any is OPEN, else closed if any is closed.

    The detail names the methods that got each answer: "CreatePermission,
    ChannelBind: 403 Forbidden; Connect: attempted (447 ...)".
    """
    statuses = {outcome.status for outcome in outcomes}
    status = OPEN if OPEN in statuses else CLOSED if CLOSED in statuses else SKIPPED
    methods: dict[str, list[str]] = {}
    for outcome in outcomes:
        methods.setdefault(outcome.answer, []).append(outcome.method)
    detail = "; ".join(f"{', '.join(names)}: {answer}" for answer, names in methods.items())
    return Verdict(check, target, status, f"{what} - {detail}" if what else detail, category, outcomes)


def amplification_verdict(sizes: list[tuple[int, int]], limit: float) -> Verdict:
    """The largest answer-to-request size ratio of unauthenticated Allocates; OPEN above limit.

    ``sizes`` holds (request bytes, answer bytes) per Allocate that got an
    answer. Over UDP the source is unverified and may be spoofed, so each
    byte of a 401 is a byte aimed at someone else.
    """
    if not sizes:
        return Verdict("amplification", "-", SKIPPED, "no unauthenticated Allocate was answered over UDP")
    request, answer = max(sizes, key=lambda pair: pair[1] / pair[0])
    ratio = answer / request
    status = OPEN if ratio > limit else CLOSED
    return Verdict("amplification", "-", status,
                   f"a {request}-byte Allocate draws a {answer}-byte answer: ratio {ratio:.1f} "
                   f"({'above' if status == OPEN else 'within'} {limit:g})")


@dataclass
class Report:
    """Every verdict of one run against one relay."""

    server: str
    transport: str
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the run could not do, and what it did instead

    @property
    def open(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == OPEN]

    def counts(self) -> dict[str, int]:
        return {status: sum(v.status == status for v in self.verdicts) for status in (OPEN, CLOSED, SKIPPED)}

    def to_json(self) -> str:
        body = {"server": self.server, "transport": self.transport, "seconds": round(self.seconds, 2),
                "summary": self.counts(), "notes": self.notes, "verdicts": [asdict(v) for v in self.verdicts]}
        return json.dumps(body, indent=2)

    def text(self) -> str:
        """One line per check, then the summary."""
        width = max([len(v.target) for v in self.verdicts] + [6])
        check_width = max([len(v.check) for v in self.verdicts] + [5])
        lines = [f"probe of {self.server} over {self.transport}"]
        for v in self.verdicts:
            lines.append(f"{v.status:7}  {v.check:{check_width}}  {v.target:{width}}  {v.detail}")
        lines += [f"note: {note}" for note in self.notes]
        counts = self.counts()
        lines.append(f"summary: {counts[OPEN]} open, {counts[CLOSED]} closed, {counts[SKIPPED]} skipped "
                     f"in {self.seconds:.1f} s")
        if counts[OPEN]:
            lines.append("OPEN checks let a client of this relay reach what it should not; "
                         "docs/OPERATING.md (Relay self-test) says how to close each.")
        return "\n".join(lines)
