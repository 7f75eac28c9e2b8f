"""Signaling login: register, login, resume, logout, draining and the welcome's TURN credentials."""

import ipaddress
import secrets
from collections import deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relay.limits import RateLimiter

from rendezvous.node.accounts import AccountError, AccountPolicyError, StoreUnavailable, check_new_account
from rendezvous.node.signaling.session import MAX_PASSWORD_BYTES, Session, SignalingError, text_field

log = Logger()

RESUME_SECONDS = 120
# Failed logins allowed (token buckets; a success gives its token back):
LOGIN_BURST, LOGIN_PER_SECOND = 5, 0.2  # per account and source
LOGIN_SOURCE_BURST, LOGIN_SOURCE_PER_SECOND = 20, 0.8  # per source, all accounts (and registrations)
LOGIN_ACCOUNT_BURST, LOGIN_ACCOUNT_PER_SECOND = 100, 1.0  # per account, all sources
# Logins from one source that may wait for that source's logins in flight (their tokens come back
# when they succeed), rather than be refused while the buckets are only lent out.
LOGIN_QUEUE = 256


def source_key(ip: str) -> str:
    """Whom a source address counts as: an IPv4 address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Login:
    """Mixed into SignalingNode: who a session is."""

    async def _register(self, session: Session, message: dict):
        if not self.config.open_registration:
            raise SignalingError("forbidden", "registration is closed on this node")
        user, password = text_field(message, "user"), text_field(message, "password", MAX_PASSWORD_BYTES)
        if not self._login_by_source.allow(source_key(session.address[0]), self.clock.seconds()):
            raise SignalingError("rate-limited", "too many attempts from this address")
        try:
            check_new_account(user, password)
            await self.accounts.add(user, password, self.config.realm)
        except AccountPolicyError as e:
            raise SignalingError(e.code, str(e)) from None
        except AccountError as e:
            raise SignalingError("conflict", str(e)) from None
        return {"op": "registered", "user": user}

    async def _login(self, session: Session, message: dict):
        user, password = text_field(message, "user"), text_field(message, "password", MAX_PASSWORD_BYTES)
        self._check_logged_out(session)
        source = source_key(session.address[0])
        buckets = await self._login_tokens(user, source)
        if buckets is None:
            raise SignalingError("rate-limited", "too many failed logins; try again later")
        try:
            try:
                right = await self.accounts.check_password(user, password)
            except StoreUnavailable:
                right = None
            if right is not False:  # only failures count against the limits
                for limiter, key in buckets:
                    limiter.refund(key)
        finally:
            self._login_done(source)
        if right is None:
            raise StoreUnavailable("no answer to a login")
        if not right:
            log.info("failed login for {user} from {client}", user=user, client=session.address[0])
            raise SignalingError("unauthenticated", "wrong user name or password")
        if session.gone:  # closed while the password was checked
            return None
        return self._start(session, user)

    def _init_login_limits(self) -> None:
        self._logins_in_flight: dict[str, int] = {}
        self._logins_waiting: dict[str, deque] = {}
        self._login_by_account_source = RateLimiter(LOGIN_BURST, LOGIN_PER_SECOND)
        self._login_by_source = RateLimiter(LOGIN_SOURCE_BURST, LOGIN_SOURCE_PER_SECOND)
        self._login_by_account = RateLimiter(LOGIN_ACCOUNT_BURST, LOGIN_ACCOUNT_PER_SECOND)

    async def _login_tokens(self, user: str, source: str) -> list | None:
        """The login's tokens (see _take_login_tokens), once there are some; None when refused.

        While the source's buckets are empty only because its other logins
        hold their tokens (a password check takes a while), a login waits for
        one of them to finish, at most LOGIN_QUEUE of them: many users behind
        one NAT logging in at once (after a node failover, say) get in at the
        rate their passwords are checked. Failed guesses keep their tokens, so
        the limits on guessing stay as they are.
        """
        while True:
            buckets = self._take_login_tokens(user, source)
            if buckets is not None:
                self._logins_in_flight[source] = self._logins_in_flight.get(source, 0) + 1
                return buckets
            waiting = self._logins_waiting.setdefault(source, deque())
            if not self._logins_in_flight.get(source) or len(waiting) >= LOGIN_QUEUE:
                if not waiting:
                    del self._logins_waiting[source]
                return None
            turn = Deferred()
            waiting.append(turn)
            await turn

    def _login_done(self, source: str) -> None:
        """A login of source has its answer: with others still in flight the next waiting one tries
        for tokens again; with none, every waiting one does (those that find none are refused)."""
        left = self._logins_in_flight[source] - 1
        if left:
            self._logins_in_flight[source] = left
        else:
            del self._logins_in_flight[source]
        waiting = self._logins_waiting.get(source)
        if not waiting:
            return
        turns = [waiting.popleft()] if left else [waiting.popleft() for _ in range(len(waiting))]
        if not waiting:
            del self._logins_waiting[source]
        for turn in turns:
            turn.callback(None)

    def _take_login_tokens(self, user: str, source: str) -> list | None:
        """A token from each login bucket, narrowest first, or None (and none taken) when one is empty.

        A guesser at one address empties only its own buckets, never the
        account's: its refused attempts take nothing from the wider ones.
        """
        now, taken = self.clock.seconds(), []
        for limiter, key in ((self._login_by_account_source, (user, source)), (self._login_by_source, source),
                             (self._login_by_account, user)):
            if not limiter.allow(key, now):
                for earlier, earlier_key in taken:
                    earlier.refund(earlier_key)
                return None
            taken.append((limiter, key))
        return taken

    def _resume(self, session: Session, message: dict):
        """A token works once: a live session's (which it replaces), or a closed one's for RESUME_SECONDS."""
        token = text_field(message, "token")
        self._check_logged_out(session)
        user = self.live_tokens.pop(token, None)
        if user is not None:
            buddies = self.sessions[user].buddies
        else:
            user, expires, buddies = self.resume_tokens.pop(token, (None, 0, frozenset()))
            if expires < self.clock.seconds():
                raise SignalingError("unauthenticated", "unknown or expired resume token")
        session.buddies = buddies  # until the store is read again
        return self._start(session, user, resumed=True)

    def _check_logged_out(self, session: Session) -> None:
        if session.user is not None:
            raise SignalingError("conflict", f"already logged in as {session.user}; log out first")

    def keep_resumable(self, session: Session) -> None:
        """The connection of a logged-in session closed: its token works for RESUME_SECONDS more."""
        if self.live_tokens.pop(session.resume_token, None) is not None:
            self.resume_tokens[session.resume_token] = (session.user, self.clock.seconds() + RESUME_SECONDS,
                                                        session.buddies)
            while len(self.resume_tokens) > 4 * len(self.sessions) + 1000:
                self.resume_tokens.popitem(last=False)

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
        if previous is not None:
            self.live_tokens.pop(previous.resume_token, None)
            previous.send({"op": "replaced", "reason": "logged in elsewhere"})
            previous.user = None
            previous.close()
        session.user = user
        session.state = "online"
        session.started_at = self.clock.seconds()
        self.sessions[user] = session
        self.logins += 1
        session.resume_token = token = secrets.token_urlsafe(24)
        self.live_tokens[token] = user
        self.directory.publish_presence(user, "online", session.nat_type)
        self._background(self._notify_buddies(session, "online"))
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
            "node_ips": list(self.config.public_ips),
            "host_cache": self.host_cache(),
            "relays": self.config.relays,
            "latest_client_version": self.config.latest_client_version,
            "turn": self.turn_credentials(user),
            "results": self.config.results_url,
            "trickle": True,
        }


    def _turn_credentials(self, session: Session, message: dict):
        """Fresh relay credentials for a client logged in longer than the welcome's ``ttl``."""
        return {"op": "turn-credentials", "turn": self.turn_credentials(session.user)}

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
        self.live_tokens.pop(session.resume_token, None)  # a logout is not resumable
        if self.sessions.get(user) is session:
            self._offline(session)
        session.user = None
        session.state = "offline"
        return {"op": "logged-out", "user": user}

