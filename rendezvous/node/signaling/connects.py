"""Signaling connect coordination: candidates and ICE credentials to the peer, then one start instant.

A's candidates (and ICE ufrag/pwd, passed through) go to B with a one-time
token, B's answer goes back, and both are told to start at the same
instant, computed from each side's measured round-trip time (as libp2p
DCUtR does). A side whose RTT is older than RTT_FRESH_SECONDS is pinged
again at the connect, and the punch waits (up to PONG_WAIT_SECONDS) for
the pongs still outstanding, so both starts rest on fresh round trips.

Trickle ICE (RFC 8838): a side that said ``trickle`` sends the candidates
it gathers later in ``connect-candidates`` frames, the last one marked
``end`` (end-of-candidates, §8.2). Until the punch they are added to what
the punch carries (so a peer that does not trickle still gets them all
that came by then); after it they are passed on to the peer as they come.
"""

import ipaddress
import re
import secrets

from rendezvous.node.signaling.session import Session, SignalingError, text_field
from rendezvous.wire.fingerprints import FINGERPRINT

MAX_CANDIDATES = 32
CONNECT_SECONDS = 30
PUNCH_MARGIN_SECONDS = 0.05
DEFAULT_RTT_SECONDS = 0.2
RTT_FRESH_SECONDS = 10
PONG_WAIT_SECONDS = 1.0
END_WAIT_SECONDS = 2.0
MAX_PENDING_CONNECTS = 10000
MAX_REASON_BYTES = 64  # connect-decline's optional reason, e.g. "fingerprint-changed"
CANDIDATE_TYPES = ("host", "srflx", "upnp", "predicted", "relay", "prflx")
# ICE credentials (RFC 8445 §5.3; RFC 8839 §5.4: ice-char is ALPHA / DIGIT / "+" / "/").
ICE_CREDENTIALS = {"ufrag": re.compile(r"[A-Za-z0-9+/]{4,64}"), "pwd": re.compile(r"[A-Za-z0-9+/]{22,128}"),
                   "fingerprint": FINGERPRINT, "session": re.compile(r"[A-Za-z0-9_-]{8,64}"),
                   # The sender's NAT type as its last nat-check saw it, for the field test (RFC 3489 words).
                   "nat_type": re.compile(r"[A-Za-z][A-Za-z ]{0,39}")}


def _candidates(message: dict) -> list[dict]:
    """Validated candidates: type, ip, port, and protocol udp or tcp."""
    raw = message.get("candidates")
    if not isinstance(raw, list) or len(raw) > MAX_CANDIDATES:
        raise SignalingError("bad-request", f"candidates must be a list of at most {MAX_CANDIDATES}")
    clean = []
    for candidate in raw:
        if not isinstance(candidate, dict):
            raise SignalingError("bad-request", "a candidate must be an object")
        kind, ip, port = candidate.get("type"), candidate.get("ip"), candidate.get("port")
        protocol = candidate.get("protocol", "udp")
        if kind not in CANDIDATE_TYPES or protocol not in ("udp", "tcp"):
            raise SignalingError("bad-request", f"candidate type must be one of {', '.join(CANDIDATE_TYPES)}")
        try:
            ip = str(ipaddress.ip_address(ip))
        except (ValueError, TypeError):
            raise SignalingError("bad-request", "candidate ip is not an IP address") from None
        if not isinstance(port, int) or not 0 < port < 65536:
            raise SignalingError("bad-request", "candidate port must be 1-65535")
        clean.append({"type": kind, "ip": ip, "port": port, "protocol": protocol})
    return clean


def _awaits_end(entry: dict, answer: dict) -> bool:
    """The caller trickles and its end-of-candidates has not come, but the callee does not trickle:
    its punch is all it will learn, so the punch waits for that end (at most END_WAIT_SECONDS)."""
    return not entry["end"] and not answer.get("trickle")


def _flag(message: dict, name: str) -> bool:
    """An optional boolean field (absent: False)."""
    value = message.get(name, False)
    if not isinstance(value, bool):
        raise SignalingError("bad-request", f"{name} must be true or false")
    return value


def _ice_credentials(message: dict) -> dict:
    """The optional ``ufrag``, ``pwd``, ``fingerprint`` and ``session`` of a connect or answer, checked,
    for passing on unchanged."""
    found = {}
    for name, pattern in ICE_CREDENTIALS.items():
        value = message.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise SignalingError("bad-request", f"{name} must be {pattern.pattern}")
        found[name] = value
    return found



class Connects:
    """Mixed into SignalingNode: the connect, connect-answer and connect-decline ops."""

    async def _connect(self, session: Session, message: dict):
        to = text_field(message, "to")
        candidates = _candidates(message)
        credentials = _ice_credentials(message)
        trickle = _flag(message, "trickle")
        await self._check_buddy_online(session, to)
        if session.gone:
            return None
        self._expire_connects()
        if len(self.pending) >= MAX_PENDING_CONNECTS:
            raise SignalingError("busy", "too many connects in progress")
        # The token names this node, so an answer given on another node is
        # routed back here.
        token = f"{secrets.token_urlsafe(16)}.{self.config.node_name}"
        self.pending[token] = {"from": session, "to": to, "candidates": candidates, "credentials": credentials,
                               "trickle": trickle, "end": not trickle, "expires": self.clock.seconds() + CONNECT_SECONDS}
        self.refresh_rtt(session)
        other = self.sessions.get(to)
        if other is not None:
            self.refresh_rtt(other)  # ahead of the request, so its pong comes before the answer
        self._deliver(to, {"op": "connect-request", "from": session.user, "token": token, "candidates": candidates,
                           **credentials, **({"trickle": True} if trickle else {})})
        return {"op": "connect-pending", "token": token, "to": to}

    def _connect_answer(self, session: Session, message: dict):
        token = text_field(message, "token")
        trickle = _flag(message, "trickle")
        answer = {"kind": "connect-answer", "token": token, "user": session.user, "rtt": session.rtt,
                  "address": list(session.address), "candidates": _candidates(message),
                  "credentials": _ice_credentials(message), "trickle": trickle, "end": not trickle}
        self._to_connect_origin(answer, self._complete_connect)

    def _to_connect_origin(self, envelope: dict, here) -> None:
        """Apply an answer or decline with ``here`` when this node holds its token (for this
        user), else route it to the node the token names; not-found (with the request's id)
        for a token of this node that is unknown, expired or someone else's."""
        token = envelope["token"]
        self._expire_connects()
        entry = self.pending.get(token)
        if entry is not None and entry["to"] == envelope["user"]:
            here(envelope)
            return
        origin = token.rpartition(".")[2]
        if entry is not None or origin == self.config.node_name or not origin:
            raise SignalingError("not-found", "unknown or expired connect token")
        self.directory.route(origin, envelope)

    def _complete_connect(self, answer: dict) -> None:
        """B answered: punch now, or once the pongs still out have come (at most PONG_WAIT_SECONDS)."""
        self._expire_connects()
        token, b_user = answer.get("token"), answer.get("user")
        entry = self.pending.get(token)
        if entry is None or entry["to"] != b_user:
            self._deliver(b_user, {"op": "error", "id": None, "code": "not-found",
                                   "reason": "unknown or expired connect token"})
            return
        del self.pending[token]
        waiting = [side for side in (entry["from"], self.sessions.get(b_user)) if side and side.ping_token]
        if (not waiting and not _awaits_end(entry, answer)) or len(self.starting) >= MAX_PENDING_CONNECTS:
            self._punch(token, entry, answer)  # else no room to wait: known RTTs, what came so far
            return
        wait = END_WAIT_SECONDS if _awaits_end(entry, answer) else PONG_WAIT_SECONDS
        self.starting[token] = (entry, answer, waiting, self.clock.seconds() + wait)
        self.clock.callLater(wait, self.release_starts)

    def refresh_rtt(self, session: Session) -> None:
        """Ping session unless its RTT is fresh or a ping is already out."""
        stale = session.rtt_at is None or self.clock.seconds() - session.rtt_at > RTT_FRESH_SECONDS
        if stale and session.ping_token is None:
            self.send_ping(session)

    def release_starts(self) -> None:
        """Punch every held connect whose pongs have come, or whose wait is over."""
        now = self.clock.seconds()
        for token, (entry, answer, waiting, deadline) in list(self.starting.items()):
            if deadline <= now or not (any(side.ping_token for side in waiting) or _awaits_end(entry, answer)):
                del self.starting[token]
                self._punch(token, entry, answer)

    def _punch(self, token: str, entry: dict, answer: dict) -> None:
        """Both sides get each other's candidates and the same start instant."""
        a, b_user = entry["from"], answer["user"]
        if self.sessions.get(a.user) is not a:
            self._deliver(b_user, {"op": "error", "id": None, "code": "offline", "reason": "the requester has gone"})
            return
        # Each side's punch carries the PEER's ICE credentials (an answer
        # routed from an older node may have none).
        b_credentials = answer.get("credentials") if isinstance(answer.get("credentials"), dict) else {}
        # Both must act at the same instant: the node sends each side a delay
        # that makes start = now + longest one-way time + margin, less that
        # side's own one-way time (half its measured round trip). A local B's
        # RTT is read now: its pong may have come after its answer.
        b = self.sessions.get(b_user)
        rtt_a = a.rtt if a.rtt is not None else DEFAULT_RTT_SECONDS
        rtt_b = b.rtt if b is not None else answer.get("rtt")
        rtt_b = rtt_b if isinstance(rtt_b, (int, float)) and rtt_b >= 0 else DEFAULT_RTT_SECONDS
        delay = max(rtt_a, rtt_b) / 2 + PUNCH_MARGIN_SECONDS
        # An answer routed from an older node has no end: it did not trickle.
        a_more, b_more = not entry["end"], not answer.get("end", True)
        a.send({"op": "punch", "token": token, "peer": b_user, "candidates": answer["candidates"],
                "peer_address": answer["address"], "start_in_ms": round((delay - rtt_a / 2) * 1000, 1),
                "turn": self.turn_credentials(a.user), **b_credentials, **({"trickle": True} if b_more else {})})
        self._deliver(b_user, {"op": "punch", "token": token, "peer": a.user, "candidates": entry["candidates"],
                               "peer_address": list(a.address), "start_in_ms": round((delay - rtt_b / 2) * 1000, 1),
                               "turn": self.turn_credentials(b_user), **entry["credentials"],
                               **({"trickle": True} if a_more else {})})
        if a_more or b_more:  # candidates still to come go straight to the peer
            self.trickling[token] = {"a": a, "b": b_user, "expires": entry["expires"],
                                     "counts": {a.user: len(entry["candidates"]), b_user: len(answer["candidates"])},
                                     "more": {side for side, more in ((a.user, a_more), (b_user, b_more)) if more}}

    def _connect_candidates(self, session: Session, message: dict):
        """RFC 8838 §8: more candidates of a connect, or end-of-candidates; to the node holding the token."""
        token = text_field(message, "token")
        envelope = {"kind": "connect-candidates", "token": token, "user": session.user,
                    "candidates": _candidates(message), "end": _flag(message, "end")}
        self._expire_connects()
        if token in self.pending or token in self.starting or token in self.trickling:
            self._add_candidates(envelope)
            return
        origin = token.rpartition(".")[2]
        if origin == self.config.node_name or not origin:
            raise SignalingError("not-found", "unknown or expired connect token")
        self.directory.route(origin, envelope)

    def _add_candidates(self, envelope: dict) -> None:
        """Trickled candidates: into the punch not yet sent, else on to the peer."""
        token, user, candidates, end = envelope["token"], envelope["user"], envelope["candidates"], envelope["end"]
        self._expire_connects()
        entry = self.pending.get(token) or (self.starting[token][0] if token in self.starting else None)
        if entry is not None:
            side = entry if entry["from"].user == user else None
            if side is None and token in self.starting and entry["to"] == user:
                side = self.starting[token][1]  # B's answer, not yet punched
            if side is None:
                raise SignalingError("not-found", "unknown or expired connect token")
            if side["end"]:
                raise SignalingError("bad-request", "candidates after end-of-candidates")
            if len(side["candidates"]) + len(candidates) > MAX_CANDIDATES:
                raise SignalingError("bad-request", f"at most {MAX_CANDIDATES} candidates per connect")
            side["candidates"] = side["candidates"] + candidates
            side["end"] = end
            if end and token in self.starting:
                self.release_starts()
            return
        state = self.trickling.get(token)
        if state is None or user not in state["counts"]:
            raise SignalingError("not-found", "unknown or expired connect token")
        if user not in state["more"]:
            raise SignalingError("bad-request", "candidates after end-of-candidates")
        if state["counts"][user] + len(candidates) > MAX_CANDIDATES:
            raise SignalingError("bad-request", f"at most {MAX_CANDIDATES} candidates per connect")
        state["counts"][user] += len(candidates)
        frame = {"op": "connect-candidates", "token": token, "candidates": candidates, "end": end}
        if user == state["a"].user:
            self._deliver(state["b"], frame)
        else:
            state["a"].send(frame)
        if end:
            state["more"].discard(user)
            if not state["more"]:
                del self.trickling[token]

    def _connect_decline(self, session: Session, message: dict):
        token = text_field(message, "token")
        decline = {"kind": "connect-decline", "token": token, "user": session.user}
        if message.get("reason") is not None:
            decline["reason"] = text_field(message, "reason", MAX_REASON_BYTES)
        self._to_connect_origin(decline, self._decline)

    def _decline(self, decline: dict) -> None:
        entry = self.pending.get(decline.get("token"))
        if entry is not None and entry["to"] == decline.get("user"):
            del self.pending[decline["token"]]
            entry["from"].send({"op": "connect-declined", "token": decline["token"], "peer": decline["user"],
                                **({"reason": decline["reason"]} if isinstance(decline.get("reason"), str) else {})})

    def _expire_connects(self) -> None:
        now = self.clock.seconds()
        for held in (self.pending, self.trickling):
            while held:
                token, entry = next(iter(held.items()))
                if entry["expires"] > now:
                    break
                del held[token]
