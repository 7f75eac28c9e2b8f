"""The status view: an admin HTTP API under ``/admin/`` on the ``--metrics`` port.

    GET    /admin/allocations?limit=100&offset=0   TURN allocations, oldest id order
    GET    /admin/sessions?limit=100&offset=0      logged-in signaling sessions
    DELETE /admin/allocations/ID                   free an allocation
    DELETE /admin/sessions/ID                      close a signaling session
    GET    /admin/samples                          this process's metric samples (for the worker supervisor)

Every call needs ``Authorization: Bearer TOKEN``, TOKEN being the contents
of ``STATE_DIR/admin.token`` (made on first start, mode 0600), so only who
may read the state directory may list users and addresses or end their
work. The port is bound to 127.0.0.1 by default and must not be exposed:
the listing names users and client addresses, and the token is sent in the
clear. Listings are paged (``limit`` at most 1000), so an answer stays
bounded however many allocations there are.
"""

import hmac
import json
import os
import re
import secrets
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource

from rendezvous.node.metrics import answer_later
from rendezvous.stun.addresses import address_text

log = Logger()

TOKEN_FILE = "admin.token"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_ID = re.compile(r"[0-9a-z-]{1,64}")


def admin_token(state_dir: Path) -> str:
    """The admin token of this state dir, made (mode 0600) if there is none yet."""
    path = Path(state_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def page(items: list[dict], offset: int, limit: int) -> dict:
    """One bounded page of a listing sorted by id."""
    items = sorted(items, key=lambda item: item["id"])
    return {"total": len(items), "offset": offset, "limit": limit, "items": items[offset:offset + limit]}


class LocalView:
    """Allocations and sessions of this process's TURN core and signaling node."""

    def __init__(self, clock, turn=None, signaling=None) -> None:
        self.clock = clock
        self.turn = turn
        self.signaling = signaling

    def allocations(self, offset: int, limit: int) -> dict:
        if self.turn is None:
            return page([], offset, limit)
        now = self.clock.seconds()
        return page([self.turn.describe(a, now) for a in self.turn.allocations.values()], offset, limit)

    def sessions(self, offset: int, limit: int) -> dict:
        if self.signaling is None:
            return page([], offset, limit)
        now = self.clock.seconds()
        return page([describe_session(s, now) for s in self.signaling.sessions.values()], offset, limit)

    def end_allocation(self, allocation_id: str) -> bool:
        return self.turn is not None and self.turn.end(allocation_id)

    def end_session(self, session_id: str) -> bool:
        if self.signaling is None:
            return False
        for session in list(self.signaling.sessions.values()):
            if session.id == session_id:
                log.info("session {session} of {user} ended by an operator", session=session.id, user=session.user)
                session.close()
                return True
        return False


def describe_session(session, now: float) -> dict:
    """What an operator sees of one signaling session."""
    return {
        "id": session.id,
        "user": session.user,
        "client": address_text(session.address),
        "state": session.state,
        "nat_type": session.nat_type,
        "rtt_ms": round(session.rtt * 1000, 1) if session.rtt is not None else None,
        "age_seconds": round(now - session.started_at, 1) if session.started_at is not None else None,
    }


def _bounded(args: dict, name: str, default: int, most: int) -> int:
    try:
        value = int(args.get(name.encode(), [str(default).encode()])[0])
    except ValueError:
        raise _Refused(400, f"{name} is not a whole number") from None
    if not 0 <= value <= most:
        raise _Refused(400, f"{name} must lie within 0-{most}")
    return value


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class AdminResource(resource.Resource):
    """``/admin/...`` over a view (LocalView, or the supervisor's view of all workers).

    The view's methods may return values or Deferreds; ``samples`` is a
    callable returning this process's metric samples.
    """

    isLeaf = True

    def __init__(self, view, token: str, samples) -> None:
        super().__init__()
        self.view = view
        self.token = token.encode()
        self.samples = samples

    def render(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        given = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(given.encode() if isinstance(given, str) else given, b"Bearer " + self.token):
            request.setResponseCode(401)
            return b'{"error": "admin token required (Authorization: Bearer, STATE_DIR/admin.token)"}\n'
        try:
            result = self._dispatch(request)
        except _Refused as e:
            request.setResponseCode(e.code)
            return json.dumps({"error": e.reason}).encode() + b"\n"
        d = defer.maybeDeferred(lambda: result).addErrback(self._failed)
        return answer_later(request, d.addCallback(self._body, request))

    def _dispatch(self, request):
        path = [part.decode("utf-8", "replace") for part in request.postpath if part]
        method = request.method
        if method == b"GET" and path in (["allocations"], ["sessions"]):
            offset = _bounded(request.args, "offset", 0, 10**9)
            limit = _bounded(request.args, "limit", DEFAULT_LIMIT, MAX_LIMIT)
            listing = self.view.allocations if path[0] == "allocations" else self.view.sessions
            return listing(offset, limit)
        if method == b"GET" and path == ["samples"]:
            return [[name, labels, value] for name, values in self.samples().items() for labels, value in values]
        if method == b"DELETE" and len(path) == 2 and path[0] in ("allocations", "sessions") and _ID.fullmatch(path[1]):
            end = self.view.end_allocation if path[0] == "allocations" else self.view.end_session
            return defer.maybeDeferred(end, path[1]).addCallback(lambda ended: _ended(path[0][:-1], path[1], ended))
        raise _Refused(404 if method in (b"GET", b"DELETE") else 405, "no such admin call")

    def _body(self, result, request) -> bytes:
        if isinstance(result, _Refused):
            request.setResponseCode(result.code)
            result = {"error": result.reason}
        return json.dumps(result).encode() + b"\n"

    def _failed(self, failure) -> "_Refused":
        log.failure("admin call failed", failure)
        return _Refused(502, failure.getErrorMessage())


def _ended(kind: str, item_id: str, ended: bool):
    if not ended:
        return _Refused(404, f"no {kind} {item_id}")
    return {"ended": kind, "id": item_id}
