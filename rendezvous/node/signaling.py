"""The super node's signaling core, sans-IO (docs/PROTOCOL.md, "Signaling v1").

Sessions arrive as objects with ``send(dict)``, ``close()`` and the
client's address; ``receive(session, message)`` applies one decoded frame.
Login, presence shared with accepted buddies, lookup, short messages, and
the connect coordination of hole punching: A's candidates (and ICE
ufrag/pwd, passed through) go to B with a one-time token, B's answer goes
back, and both are told to start at the same instant, computed from each
side's measured round-trip time (as libp2p DCUtR does), with ephemeral
TURN credentials for this node's relay.

Every field, list and table is bounded; an unauthenticated session may only
register, log in, resume or answer pings; a session that sends too many bad
frames is closed. Logs carry session ids, never passwords.
"""

import ipaddress
import os
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.logger import Logger

from relay.limits import RateLimiter

from rendezvous.node.accounts import AccountError, AccountStore
from rendezvous.wire.fingerprints import FINGERPRINT
from rendezvous.wire.host_entries import host_entry

log = Logger()

PRESENCE_STATES = ("online", "away", "busy", "offline")
NAT_TYPE_MAX = 64
MAX_TEXT_BYTES = 4096
MAX_CANDIDATES = 32
MAX_ERRORS = 5
RESUME_SECONDS = 120
CONNECT_SECONDS = 30
PUNCH_MARGIN_SECONDS = 0.05
DEFAULT_RTT_SECONDS = 0.2
MAX_PENDING_CONNECTS = 10000
LOGIN_BURST, LOGIN_PER_SECOND = 5, 0.2
CANDIDATE_TYPES = ("host", "srflx", "upnp", "predicted", "relay", "prflx")
HOST_CACHE_SIZE = 200
HOST_TTL_SECONDS = 3600
# ICE credentials (RFC 8445 §5.3; RFC 8839 §5.4: ice-char is ALPHA / DIGIT / "+" / "/").
ICE_CREDENTIALS = {"ufrag": re.compile(r"[A-Za-z0-9+/]{4,64}"), "pwd": re.compile(r"[A-Za-z0-9+/]{22,128}"),
                   "fingerprint": FINGERPRINT, "session": re.compile(r"[A-Za-z0-9_-]{8,64}")}


class SignalingError(Exception):
    """A request refused with an error frame: code and reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Session:
    """One client connection, as the core sees it."""

    send: object
    close: object
    address: tuple
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    user: str | None = None
    state: str = "offline"
    nat_type: str | None = None
    rtt: float | None = None
    errors: int = 0
    ping_sent_at: float | None = None
    ping_token: str | None = None
    started_at: float | None = None  # when it logged in


@dataclass
class SignalingConfig:
    realm: str = "txrendezvous"
    node_name: str = "local"
    open_registration: bool = False
    latest_client_version: str | None = None
    host_cache: list = field(default_factory=list)
    relays: list = field(default_factory=list)
    turn_secret: str | None = None
    address: tuple = ("", 0)  # this node's public (host, port), left out of its own host cache
    turn_credential_seconds: int = 3600


class LocalDirectory:
    """Presence and routing of one node alone (the embedded default).

    A shared directory (``rendezvous.node.redis_directory``) has the same three
    methods, answers ``locate`` from memory and calls back
    ``SignalingNode.handle_routed`` with envelopes other nodes route here.
    """

    def publish_presence(self, user: str, state: str, nat_type: str | None) -> None:
        pass

    def locate(self, user: str) -> dict | None:
        return None

    def route(self, node: str, envelope: dict) -> None:
        pass


def _text(message: dict, name: str, max_bytes: int = 128) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > max_bytes:
        raise SignalingError("bad-request", f"{name} must be a non-empty string of at most {max_bytes} bytes")
    return value


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


class SignalingNode:
    """Sessions, presence and connect coordination of one super node."""

    def __init__(self, accounts: AccountStore, clock, config: SignalingConfig, directory=None) -> None:
        self.accounts = accounts
        self.clock = clock
        self.config = config
        self.directory = directory or LocalDirectory()
        self.logins = 0
        self.draining = False
        self.sessions: dict[str, Session] = {}  # by user
        self.resume_tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.pending: OrderedDict[str, dict] = OrderedDict()  # connect token -> state
        self._login_by_user = RateLimiter(LOGIN_BURST, LOGIN_PER_SECOND)
        self._login_by_ip = RateLimiter(LOGIN_BURST * 4, LOGIN_PER_SECOND * 4)
        self._ops = {
            "ping": self._ping, "pong": self._pong,
            "register": self._register, "login": self._login, "resume": self._resume,
            "logout": self._logout, "presence": self._presence,
            "buddy-add": self._buddy_add, "buddy-accept": self._buddy_accept,
            "buddy-remove": self._buddy_remove, "buddy-list": self._buddy_list,
            "lookup": self._lookup, "message": self._message,
            "connect": self._connect, "connect-answer": self._connect_answer,
            "connect-decline": self._connect_decline, "hosts": self._hosts,
        }
        self._open_ops = {"ping", "pong", "register", "login", "resume", "hosts"}
        # The host cache: other super nodes by (host, port), oldest first.
        self.hosts: OrderedDict[tuple, dict] = OrderedDict()
        self.learn_hosts(config.host_cache)

    # -- sessions ----------------------------------------------------------

    def opened(self, session: Session) -> None:
        """A connection came up: measure its round-trip time at once."""
        self.send_ping(session)

    def closed(self, session: Session) -> None:
        """A connection went away: its user goes offline (resumable for a while)."""
        if session.user is not None and self.sessions.get(session.user) is session:
            del self.sessions[session.user]
            self.directory.publish_presence(session.user, "offline", session.nat_type)
            self._notify_buddies(session.user, "offline", session.nat_type)
            log.info("session {session} of {user} closed", session=session.id, user=session.user)

    def send_ping(self, session: Session) -> None:
        session.ping_token = secrets.token_hex(4)
        session.ping_sent_at = self.clock.seconds()
        session.send({"op": "ping", "token": session.ping_token})

    def receive(self, session: Session, message) -> None:
        """Apply one frame (a dict, or a FrameError for a frame that was not JSON)."""
        request_id = message.get("id") if isinstance(message, dict) else None
        if not isinstance(request_id, (int, type(None))) or isinstance(request_id, bool):
            request_id = None
        try:
            if not isinstance(message, dict):
                raise SignalingError("bad-request", str(message))
            handler = self._ops.get(message["op"])
            if handler is None:
                raise SignalingError("bad-request", "unknown op")
            if session.user is None and message["op"] not in self._open_ops:
                raise SignalingError("unauthenticated", "log in first")
            reply = handler(session, message)
        except SignalingError as e:
            session.errors += 1
            session.send({"op": "error", "id": request_id, "code": e.code, "reason": e.reason})
            if session.errors >= MAX_ERRORS:
                log.info("closing session {session}: too many errors", session=session.id)
                session.close()
            return
        if reply is not None:
            reply.setdefault("op", "ok")
            reply["id"] = request_id
            session.send(reply)

    # -- authentication ----------------------------------------------------

    def _register(self, session: Session, message: dict):
        if not self.config.open_registration:
            raise SignalingError("forbidden", "registration is closed on this node")
        user, password = _text(message, "user"), _text(message, "password", 1024)
        if not self._login_by_ip.allow(session.address[0], self.clock.seconds()):
            raise SignalingError("rate-limited", "too many attempts")
        try:
            self.accounts.add(user, password, self.config.realm)
        except AccountError as e:
            raise SignalingError("conflict", str(e)) from None
        return {"op": "registered", "user": user}

    def _login(self, session: Session, message: dict):
        user, password = _text(message, "user"), _text(message, "password", 1024)
        now = self.clock.seconds()
        if not (self._login_by_ip.allow(session.address[0], now) and self._login_by_user.allow(user, now)):
            raise SignalingError("rate-limited", "too many login attempts")
        if not self.accounts.check_password(user, password):
            log.info("failed login for {user} from {client}", user=user, client=session.address[0])
            raise SignalingError("unauthenticated", "wrong user name or password")
        # Only failures count against the limits.
        self._login_by_ip.refund(session.address[0])
        self._login_by_user.refund(user)
        return self._start(session, user)

    def _resume(self, session: Session, message: dict):
        token = _text(message, "token")
        entry = self.resume_tokens.pop(token, None)
        if entry is None or entry[1] < self.clock.seconds():
            raise SignalingError("unauthenticated", "unknown or expired resume token")
        return self._start(session, entry[0], resumed=True)

    def start_draining(self) -> None:
        """Send every session to other super nodes; refuse new logins from now on."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.send(self._redirect())

    def _redirect(self) -> dict:
        return {"op": "redirect", "reason": "this node is draining", "hosts": self.host_cache()}

    def _start(self, session: Session, user: str, resumed: bool = False) -> dict:
        if self.draining:
            return self._redirect()
        previous = self.sessions.get(user)
        if previous is not None and previous is not session:
            previous.send({"op": "replaced", "reason": "logged in elsewhere"})
            previous.user = None
            previous.close()
        session.user = user
        session.state = "online"
        session.started_at = self.clock.seconds()
        self.sessions[user] = session
        self.logins += 1
        token = secrets.token_urlsafe(24)
        self.resume_tokens[token] = (user, self.clock.seconds() + RESUME_SECONDS)
        while len(self.resume_tokens) > 4 * len(self.sessions) + 1000:
            self.resume_tokens.popitem(last=False)
        self.directory.publish_presence(user, "online", session.nat_type)
        self._notify_buddies(user, "online", session.nat_type)
        log.info("session {session} logged in as {user} from {client}", session=session.id, user=user,
                 client=session.address[0])
        return {
            "op": "welcome",
            "session": session.id,
            "user": user,
            "resumed": resumed,
            "resume_token": token,
            "resume_seconds": RESUME_SECONDS,
            "mapped": list(session.address),
            "node": self.config.node_name,
            "host_cache": self.host_cache(),
            "relays": self.config.relays,
            "latest_client_version": self.config.latest_client_version,
            "turn": self.turn_credentials(user),
        }

    # -- the host cache -------------------------------------------------------

    def learn_hosts(self, entries, seen: float | None = None) -> None:
        """Merge super-node entries {host, port, load?}; the newest are kept, at most 200."""
        seen = self.clock.seconds() if seen is None else seen
        for entry in entries if isinstance(entries, list) else []:
            clean = host_entry(entry)
            if clean is None or (clean["host"], clean["port"]) == self.config.address:
                continue
            key = (clean["host"], clean["port"])
            self.hosts.pop(key, None)
            self.hosts[key] = {**clean, "seen": seen}
        while len(self.hosts) > HOST_CACHE_SIZE:
            self.hosts.popitem(last=False)

    def host_cache(self) -> list[dict]:
        """Known super nodes, most recently seen first, without entries unseen for an hour."""
        cutoff = self.clock.seconds() - HOST_TTL_SECONDS
        for key in [k for k, e in self.hosts.items() if e["seen"] < cutoff]:
            del self.hosts[key]
        return [{"host": e["host"], "port": e["port"], "load": e["load"]} for e in reversed(self.hosts.values())]

    def _hosts(self, session: Session, message: dict):
        """Host-cache exchange between super nodes: learn the caller, answer with our cache.

        Only the calling node itself is learned, and only at the address it
        connects from, so a stranger cannot fill the cache with others.
        """
        port = message.get("port")
        if isinstance(port, int):
            self.learn_hosts([{"host": session.address[0], "port": port, "load": message.get("load", 0)}])
        me = {"host": self.config.address[0], "port": self.config.address[1], "load": len(self.sessions)}
        return {"op": "hosts", "node": self.config.node_name, "hosts": [me] + self.host_cache()}

    def turn_credentials(self, user: str) -> dict | None:
        """REST-style ephemeral credentials for this node's relay (username expiry:user)."""
        if not self.config.turn_secret:
            return None
        from relay.credentials import RestSecrets

        expiry = int(self.clock.seconds()) + self.config.turn_credential_seconds
        username = f"{expiry}:{user}"
        return {
            "username": username,
            "password": RestSecrets.password(self.config.turn_secret, username),
            "ttl": self.config.turn_credential_seconds,
            "realm": self.config.realm,
            "urls": self.config.relays,
        }

    def _logout(self, session: Session, message: dict):
        user = session.user
        self.closed(session)
        session.user = None
        session.state = "offline"
        return {"op": "logged-out", "user": user}

    def _ping(self, session: Session, message: dict):
        token = message.get("token")
        return {"op": "pong", "token": token if isinstance(token, str) and len(token) <= 64 else None}

    def _pong(self, session: Session, message: dict):
        if session.ping_token is not None and message.get("token") == session.ping_token:
            session.rtt = max(0.0, self.clock.seconds() - session.ping_sent_at)
            session.ping_token = None
        return None

    # -- presence and buddies ------------------------------------------------

    def _presence(self, session: Session, message: dict):
        state = message.get("state", session.state)
        if state not in PRESENCE_STATES:
            raise SignalingError("bad-request", f"state must be one of {', '.join(PRESENCE_STATES)}")
        nat_type = message.get("nat_type", session.nat_type)
        if nat_type is not None and (not isinstance(nat_type, str) or len(nat_type) > NAT_TYPE_MAX):
            raise SignalingError("bad-request", "nat_type must be a short string")
        session.state, session.nat_type = state, nat_type
        self.directory.publish_presence(session.user, state, nat_type)
        self._notify_buddies(session.user, state, nat_type)
        return {"op": "presence-set", "state": state}

    def _notify_buddies(self, user: str, state: str, nat_type: str | None) -> None:
        for buddy in self.accounts.accepted(user):
            self._deliver(buddy, {"op": "presence", "user": user, "state": state, "nat_type": nat_type,
                                  "node": self.config.node_name})

    # -- delivery, here or on another node ----------------------------------

    def _where(self, user: str) -> dict | None:
        """{"node", "state", "nat_type"} of an online user, local or remote; None if offline."""
        local = self.sessions.get(user)
        if local is not None:
            return {"node": self.config.node_name, "state": local.state, "nat_type": local.nat_type}
        remote = self.directory.locate(user)
        return remote if remote and remote.get("state") != "offline" else None

    def _deliver(self, user: str, message: dict) -> bool:
        """Send to user's session on this node, or route it to their node."""
        local = self.sessions.get(user)
        if local is not None:
            local.send(message)
            return True
        remote = self._where(user)
        if remote is None:
            return False
        self.directory.route(remote["node"], {"kind": "deliver", "to": user, "message": message})
        return True

    def handle_routed(self, envelope: dict) -> None:
        """An envelope another node routed here (through the shared directory)."""
        kind = envelope.get("kind")
        if kind == "deliver":
            local = self.sessions.get(envelope.get("to"))
            if local is not None and isinstance(envelope.get("message"), dict):
                local.send(envelope["message"])
        elif kind == "connect-answer":
            self._complete_connect(envelope)
        elif kind == "connect-decline":
            self._decline(envelope)

    def _buddy_add(self, session: Session, message: dict):
        buddy = _text(message, "user")
        try:
            state = self.accounts.request_buddy(session.user, buddy)
        except AccountError as e:
            raise SignalingError("not-found", str(e)) from None
        if state == "accepted":
            self._share_presence(session, buddy)
        else:
            self._deliver(buddy, {"op": "buddy-request", "from": session.user})
        return {"op": "buddy", "user": buddy, "state": state}

    def _buddy_accept(self, session: Session, message: dict):
        requester = _text(message, "user")
        try:
            self.accounts.accept_buddy(session.user, requester)
        except AccountError as e:
            raise SignalingError("not-found", str(e)) from None
        self._share_presence(session, requester)
        return {"op": "buddy", "user": requester, "state": "accepted"}

    def _share_presence(self, session: Session, buddy: str) -> None:
        """New buddies: each learns the other's presence, wherever they are."""
        where = self._where(buddy)
        if where is not None:
            session.send({"op": "presence", "user": buddy, **where})
        self._deliver(buddy, {"op": "presence", "user": session.user, "state": session.state,
                              "nat_type": session.nat_type, "node": self.config.node_name})

    def _buddy_remove(self, session: Session, message: dict):
        buddy = _text(message, "user")
        self.accounts.remove_buddy(session.user, buddy)
        return {"op": "buddy", "user": buddy, "state": "removed"}

    def _buddy_list(self, session: Session, message: dict):
        entries = []
        for name, relation in self.accounts.buddies(session.user):
            entry = {"user": name, "relation": relation}
            if relation == "accepted":
                where = self._where(name)
                entry["state"] = where["state"] if where else "offline"
            entries.append(entry)
        return {"op": "buddies", "buddies": entries}

    def _lookup(self, session: Session, message: dict):
        user = _text(message, "user")
        if not self.accounts.are_buddies(session.user, user):
            raise SignalingError("not-a-buddy", "lookup is for accepted buddies")
        where = self._where(user)
        return {
            "op": "peer", "user": user, "online": where is not None,
            "state": where["state"] if where else "offline",
            "node": where["node"] if where else None,
            "nat_type": where["nat_type"] if where else None,
        }

    def _check_buddy_online(self, session: Session, user: str) -> None:
        if not self.accounts.are_buddies(session.user, user):
            raise SignalingError("not-a-buddy", f"{user} is not an accepted buddy")
        if self._where(user) is None:
            raise SignalingError("offline", f"{user} is offline")

    def _message(self, session: Session, message: dict):
        to = _text(message, "to")
        text = _text(message, "text", MAX_TEXT_BYTES)
        self._check_buddy_online(session, to)
        self._deliver(to, {"op": "message", "from": session.user, "text": text})
        return {"op": "delivered", "to": to}

    # -- connect coordination ------------------------------------------------

    def _connect(self, session: Session, message: dict):
        to = _text(message, "to")
        candidates = _candidates(message)
        credentials = _ice_credentials(message)
        self._check_buddy_online(session, to)
        self._expire_connects()
        if len(self.pending) >= MAX_PENDING_CONNECTS:
            raise SignalingError("busy", "too many connects in progress")
        # The token names this node, so an answer given on another node is
        # routed back here.
        token = f"{secrets.token_urlsafe(16)}.{self.config.node_name}"
        self.pending[token] = {"from": session, "to": to, "candidates": candidates, "credentials": credentials,
                               "expires": self.clock.seconds() + CONNECT_SECONDS}
        other = self.sessions.get(to)
        if other is not None:
            self.send_ping(other)
        self._deliver(to, {"op": "connect-request", "from": session.user, "token": token, "candidates": candidates,
                           **credentials})
        return {"op": "connect-pending", "token": token, "to": to}

    def _connect_answer(self, session: Session, message: dict):
        token = _text(message, "token")
        answer = {"kind": "connect-answer", "token": token, "user": session.user, "rtt": session.rtt,
                  "address": list(session.address), "candidates": _candidates(message),
                  "credentials": _ice_credentials(message)}
        self._to_connect_origin(answer, self._complete_connect)

    def _to_connect_origin(self, envelope: dict, here) -> None:
        """Apply an answer or decline with ``here`` when this node holds its token, else
        route it to the node the token names."""
        token = envelope["token"]
        if token in self.pending:
            here(envelope)
            return
        origin = token.rpartition(".")[2]
        if origin == self.config.node_name or not origin:
            raise SignalingError("not-found", "unknown or expired connect token")
        self.directory.route(origin, envelope)

    def _complete_connect(self, answer: dict) -> None:
        """Both sides get each other's candidates and the same start instant."""
        self._expire_connects()
        token, b_user = answer.get("token"), answer.get("user")
        entry = self.pending.get(token)
        if entry is None or entry["to"] != b_user:
            self._deliver(b_user, {"op": "error", "id": None, "code": "not-found",
                                   "reason": "unknown or expired connect token"})
            return
        del self.pending[token]
        a = entry["from"]
        if self.sessions.get(a.user) is not a:
            self._deliver(b_user, {"op": "error", "id": None, "code": "offline", "reason": "the requester has gone"})
            return
        # Each side's punch carries the PEER's ICE credentials (an answer
        # routed from an older node may have none).
        b_credentials = answer.get("credentials") if isinstance(answer.get("credentials"), dict) else {}
        # Both must act at the same instant: the node sends each side a delay
        # that makes start = now + longest one-way time + margin, less that
        # side's own one-way time (half its measured round trip).
        rtt_a, rtt_b = a.rtt or DEFAULT_RTT_SECONDS, answer.get("rtt") or DEFAULT_RTT_SECONDS
        delay = max(rtt_a, rtt_b) / 2 + PUNCH_MARGIN_SECONDS
        a.send({"op": "punch", "token": token, "peer": b_user, "candidates": answer["candidates"],
                "peer_address": answer["address"], "start_in_ms": round((delay - rtt_a / 2) * 1000, 1),
                "turn": self.turn_credentials(a.user), **b_credentials})
        self._deliver(b_user, {"op": "punch", "token": token, "peer": a.user, "candidates": entry["candidates"],
                               "peer_address": list(a.address), "start_in_ms": round((delay - rtt_b / 2) * 1000, 1),
                               "turn": self.turn_credentials(b_user), **entry["credentials"]})

    def _connect_decline(self, session: Session, message: dict):
        token = _text(message, "token")
        self._to_connect_origin({"kind": "connect-decline", "token": token, "user": session.user}, self._decline)

    def _decline(self, decline: dict) -> None:
        entry = self.pending.get(decline.get("token"))
        if entry is not None and entry["to"] == decline.get("user"):
            del self.pending[decline["token"]]
            entry["from"].send({"op": "connect-declined", "token": decline["token"], "peer": decline["user"]})

    def _expire_connects(self) -> None:
        now = self.clock.seconds()
        while self.pending:
            token, entry = next(iter(self.pending.items()))
            if entry["expires"] > now:
                break
            del self.pending[token]


def node_name() -> str:
    """A default name for this node: host name and process id."""
    return f"{os.uname().nodename}:{os.getpid()}"
