"""Reporting how a session was made to the node's field test (docs/NAT_CHECK.md, the field test).

Opt-in: ``report_outcome=True`` on ``connect()`` or ``Client.login``. Only the side
that called ``connect()`` reports, once the checks are over (or after
SETTLE_WAIT_SECONDS), so each session is counted once. What is sent: this side's
NAT as its last ``txrendezvous nat-check`` saw it (``rendezvous.peer.nat_memory``;
else the mapping behaviour its gathering measured), the peer's mapping behaviour
from its presence, every technique tried with its outcome and duration, and the
path the session runs on. No address is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rendezvous.peer.results_client import SubmitError, submit
from rendezvous.wire.results import MAX_TECHNIQUES, SUBMISSION_VERSION

log = Logger()

SETTLE_WAIT_SECONDS = 30.0
MAX_DURATION_MS = 600000
SIDE_FIELDS = ("nat_type", "mapping", "filtering")


def outcome_document(made, local: dict, remote: dict) -> dict:
    """The ``outcome`` submission for a session (or plaintext Connection) as it runs now; local and
    remote are each side's {nat_type, mapping, filtering} as far as known."""
    return {
        "kind": "outcome",
        "version": SUBMISSION_VERSION,
        "local": {name: value for name, value in local.items() if name in SIDE_FIELDS},
        "remote": {name: value for name, value in remote.items() if name in SIDE_FIELDS},
        "attempts": [{"technique": a.technique, "outcome": a.outcome,
                      "duration_ms": round(min(max(a.duration_ms, 0.0), MAX_DURATION_MS), 1)}
                     for a in made.attempts[:MAX_TECHNIQUES]],
        "path": made.path,
    }


def report_when_settled(reactor, made, sides: Callable[[], Awaitable[tuple[dict, dict]]], url: str,
                        verify: bool = True) -> Deferred:
    """Submit the outcome once ``made`` settles; ``sides()`` then gives (local, remote), read only
    then because gathering may still run when the session starts on the relay. Fires with the
    node's answer, or None if not submitted (the reason is logged: reporting never fails a session)."""

    async def run():
        try:
            await made.when_settled().addTimeout(SETTLE_WAIT_SECONDS, reactor)
        except Exception:  # still checking, or closed: report what there is
            pass
        local, remote = await sides()
        try:
            answer = await submit(reactor, url, outcome_document(made, local, remote), verify=verify)
        except SubmitError as e:
            log.info("session outcome not reported: {error}", error=str(e))
            return None
        log.info("session outcome reported: {link}", link=answer.get("link"))
        return answer

    return Deferred.fromCoroutine(run())
