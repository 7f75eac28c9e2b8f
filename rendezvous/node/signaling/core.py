"""The super node's signaling core, sans-IO (docs/PROTOCOL.md, "Signaling v1").

Sessions arrive as objects with ``send(dict)``, ``close()`` and the
client's address; ``receive(session, message)`` applies one decoded frame.
The ops live in mixins by job: ``Login`` (login.py), ``Buddies``
(buddies.py: presence, lookup, short messages) and ``Connects``
(connects.py: the connect coordination of hole punching); this class
holds the sessions, dispatch, pings, delivery here or on another node, and
the host cache.

Ops that ask the account store are coroutines: the store answers in a
thread (``accounts_async``), and a session's later frames wait in its
backlog, so each session's requests are answered in order. When the store
cannot be reached, requests that need it get ``unavailable``, and what a
logged-in session does with its buddies falls back on the buddy list it
read last.

Every field, list and table is bounded; an unauthenticated session may only
register, log in, resume or answer pings; a session that sends too many bad
frames is closed. Logs carry session ids, never passwords.
"""

import inspect
import os
import secrets
from collections import OrderedDict, deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from rendezvous.node.accounts import StoreUnavailable
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.signaling.buddies import Buddies
from rendezvous.node.signaling.connects import Connects
from rendezvous.node.signaling.login import Login
from rendezvous.node.signaling.session import LocalDirectory, Session, SignalingConfig, SignalingError
from rendezvous.wire.frames import FrameError, fitting
from rendezvous.wire.host_entries import host_entry

log = Logger()

MAX_ERRORS = 5
MAX_BACKLOG = 32  # frames kept while an earlier request of the session waits for the account store
MAX_PING_TOKEN = 64  # characters of a client's ping token echoed in the pong
ERROR_DECAY_SECONDS = 10
HOST_CACHE_SIZE = 200
HOST_TTL_SECONDS = 3600
# Bytes of host entries a welcome, hosts or redirect carries: the newest that fit, so the frame always does.
HOST_CACHE_BYTES = 12 * 1024


class SignalingNode(Login, Buddies, Connects):
    """Sessions, presence and connect coordination of one super node."""

    def __init__(self, accounts: AsyncAccounts, clock, config: SignalingConfig, directory=None) -> None:
        self.accounts = accounts
        self.clock = clock
        self.config = config
        self.directory = directory or LocalDirectory()
        self.logins = 0
        self.draining = False
        self.sessions: dict[str, Session] = {}  # by user
        self.live_tokens: dict[str, str] = {}  # resume token -> user, of sessions logged in now
        self.resume_tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()  # of closed ones: (user, until)
        self.pending: OrderedDict[str, dict] = OrderedDict()  # connect token -> state
        self.starting: OrderedDict[str, tuple] = OrderedDict()  # answered, waiting for pongs: token -> state
        self.trickling: OrderedDict[str, dict] = OrderedDict()  # punched, candidates still coming: token -> state
        self._init_login_limits()
        self._ops = {
            "ping": self._ping, "pong": self._pong,
            "register": self._register, "login": self._login, "resume": self._resume,
            "logout": self._logout, "presence": self._presence,
            "buddy-add": self._buddy_add, "buddy-accept": self._buddy_accept,
            "buddy-remove": self._buddy_remove, "buddy-list": self._buddy_list,
            "lookup": self._lookup, "message": self._message,
            "connect": self._connect, "connect-answer": self._connect_answer,
            "connect-decline": self._connect_decline, "connect-candidates": self._connect_candidates,
            "hosts": self._hosts, "turn-credentials": self._turn_credentials,
        }
        self._open_ops = {"ping", "pong", "register", "login", "resume", "hosts"}
        # The host cache: other super nodes by (host, port), oldest first.
        self.hosts: OrderedDict[tuple, dict] = OrderedDict()
        self.learn_hosts(config.host_cache)

    # -- sessions ----------------------------------------------------------

    def closed(self, session: Session) -> None:
        """A connection went away: its user goes offline (resumable for a while)."""
        session.gone = True
        session.backlog = None
        if session.user is not None and self.sessions.get(session.user) is session:
            self.keep_resumable(session)
            self._offline(session)
            log.info("session {session} of {user} closed", session=session.id, user=session.user)

    def _offline(self, session: Session) -> None:
        del self.sessions[session.user]
        self.directory.publish_presence(session.user, "offline", session.nat_type)
        self._background(self._notify_buddies(session, "offline"))

    def _background(self, work) -> None:
        """Run a coroutine that nobody waits for; a failure is logged."""
        Deferred.fromCoroutine(work).addErrback(lambda failure: log.failure("background signaling work", failure))

    def send_ping(self, session: Session) -> None:
        """Ping session; its pong measures the round-trip time from now.

        So that the node's own work is not counted as network time, pings
        for an RTT go out after any slow step (the login's password hash).
        """
        session.ping_token = secrets.token_hex(4)
        session.ping_sent_at = self.clock.seconds()
        session.send({"op": "ping", "token": session.ping_token})

    def receive(self, session: Session, message) -> None:
        """Apply one frame (a dict, or a FrameError for a frame that was not JSON).

        While an earlier request waits for the account store the frame waits
        in the session's backlog (up to MAX_BACKLOG; past that it is refused
        with ``busy``).
        """
        if session.backlog is not None:
            if len(session.backlog) < MAX_BACKLOG or _fatal(message):  # the adapter reads nothing after a fatal one
                session.backlog.append(message)
            else:
                session.send({"op": "error", "id": _request_id(message), "code": "busy",
                              "reason": "too many requests waiting; wait for the answers"})
            return
        self._apply(session, message)

    def _apply(self, session: Session, message) -> None:
        answered = Deferred.fromCoroutine(self._answer(session, message))
        if answered.called:  # the usual case: nothing waited; an error in the code is raised here
            outcome = []
            answered.addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
            return
        session.backlog = deque()  # later frames wait their turn
        answered.addErrback(lambda failure: log.failure("request of session {session}", failure, session=session.id))
        answered.addCallback(lambda _: self._resume_backlog(session))

    async def _answer(self, session: Session, message) -> None:
        request_id = _request_id(message)
        if _fatal(message):  # after the frames before it are answered
            session.send({"op": "error", "id": None, "code": "bad-frame", "reason": str(message)})
            session.close()
            return
        try:
            if not isinstance(message, dict):
                raise SignalingError("bad-request", str(message))
            handler = self._ops.get(message["op"])
            if handler is None:
                raise SignalingError("bad-request", "unknown op")
            if session.user is None and message["op"] not in self._open_ops:
                raise SignalingError("unauthenticated", "log in first", abuse=True)
            reply = handler(session, message)
            if inspect.iscoroutine(reply):
                reply = await reply
        except StoreUnavailable as e:
            log.warn("account store unavailable for session {session}: {error}", session=session.id, error=e)
            session.send({"op": "error", "id": request_id, "code": "unavailable",
                          "reason": "the account database cannot be reached; try again later"})
            return
        except SignalingError as e:
            session.send({"op": "error", "id": request_id, "code": e.code, "reason": e.reason})
            if e.abuse and self._count_error(session) >= MAX_ERRORS:
                log.info("closing session {session}: too many bad requests", session=session.id)
                session.close()
            return
        if reply is not None:
            reply["id"] = request_id
            session.send(reply)
            if reply["op"] == "welcome":
                self.send_ping(session)  # the first RTT, timed after the password hashing

    def _resume_backlog(self, session: Session) -> None:
        """After a request that waited: apply the frames that came meanwhile, until one waits again."""
        if session.backlog is None:  # closed meanwhile
            return
        backlog, session.backlog = session.backlog, None
        while backlog and session.backlog is None and not session.gone:
            self._apply(session, backlog.popleft())
        if session.backlog is not None:
            session.backlog.extend(backlog)

    def _count_error(self, session: Session) -> float:
        """Count one bad request; the count falls by one every ERROR_DECAY_SECONDS."""
        now = self.clock.seconds()
        idle = now - (session.errors_at if session.errors_at is not None else now)
        session.errors = max(0.0, session.errors - idle / ERROR_DECAY_SECONDS) + 1
        session.errors_at = now
        return session.errors

    # -- the host cache -------------------------------------------------------

    def learn_hosts(self, entries, seen: float | None = None) -> None:
        """Merge super-node entries {host, port, load?}; the newest are kept, at most 200."""
        seen = self.clock.seconds() if seen is None else seen
        for entry in entries if isinstance(entries, list) else []:
            clean = host_entry(entry)
            if clean is None or self._is_me(clean["host"], clean["port"]):
                continue
            key = (clean["host"], clean["port"])
            known = self.hosts.pop(key, None)
            if known is not None and "ips" in known and "ips" not in clean:
                clean["ips"] = known["ips"]  # a hosts exchange sees one address; the registry told them all
            self.hosts[key] = {**clean, "seen": seen}
        while len(self.hosts) > HOST_CACHE_SIZE:
            self.hosts.popitem(last=False)

    def _is_me(self, host: str, port: int) -> bool:
        """Whether host:port is this node, at any of its public addresses."""
        return port == self.config.address[1] and host in (self.config.address[0], *self.config.public_ips)

    def host_cache(self) -> list[dict]:
        """Known super nodes, most recently seen first, without entries unseen for an hour, as many as
        fit in HOST_CACHE_BYTES."""
        cutoff = self.clock.seconds() - HOST_TTL_SECONDS
        for key in [k for k, e in self.hosts.items() if e["seen"] < cutoff]:
            del self.hosts[key]
        entries = ({key: value for key, value in entry.items() if key != "seen"}
                   for entry in reversed(self.hosts.values()))
        return fitting(entries, HOST_CACHE_BYTES)[0]

    def own_entry(self) -> dict:
        """This node's host-cache entry: its public address, load and, dual-stack, every public address."""
        host, port = self.config.address
        return host_entry({"host": host, "port": port, "load": len(self.sessions),
                           "ips": list(self.config.public_ips)}) or {"host": host, "port": port, "load": 0}

    def _hosts(self, session: Session, message: dict):
        """Host-cache exchange between super nodes: learn the caller, answer with our cache.

        Only the calling node itself is learned, and only at the address it
        connects from, so a stranger cannot fill the cache with others.
        """
        port = message.get("port")
        if isinstance(port, int):
            self.learn_hosts([{"host": session.address[0], "port": port, "load": message.get("load", 0)}])
        return {"op": "hosts", "node": self.config.node_name, "hosts": [self.own_entry()] + self.host_cache()}

    def _ping(self, session: Session, message: dict):
        token = message.get("token")
        return {"op": "pong", "token": token if isinstance(token, str) and len(token) <= MAX_PING_TOKEN else None}

    def _pong(self, session: Session, message: dict):
        if session.ping_token is not None and message.get("token") == session.ping_token:
            session.rtt_at = self.clock.seconds()
            session.rtt = max(0.0, session.rtt_at - session.ping_sent_at)
            session.ping_token = None
            self.release_starts()
        return None

    # -- presence and buddies ------------------------------------------------

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
                if envelope["message"].get("op") == "connect-request":
                    self.refresh_rtt(local)
                local.send(envelope["message"])
        elif kind == "connect-answer":
            self._complete_connect(envelope)
        elif kind == "connect-decline":
            self._decline(envelope)
        elif kind == "connect-candidates":
            try:
                self._add_candidates(envelope)
            except SignalingError as e:  # the sender is on another node: it learns nothing more
                log.info("trickled candidates dropped: {reason}", reason=e.reason)


def _fatal(message) -> bool:
    return isinstance(message, FrameError) and message.fatal


def _request_id(message) -> int | None:
    request_id = message.get("id") if isinstance(message, dict) else None
    if not isinstance(request_id, (int, type(None))) or isinstance(request_id, bool):
        return None
    return request_id


def node_name() -> str:
    """A default name for this node: host name and process id."""
    return f"{os.uname().nodename}:{os.getpid()}"

