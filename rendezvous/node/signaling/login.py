"""Signaling login: register, login, resume, logout, draining and the welcome's TURN credentials."""

import ipaddress
import secrets

from twisted.logger import Logger

from relay.limits import RateLimiter

from rendezvous.node.accounts import AccountError, AccountPolicyError, check_new_account
from rendezvous.node.signaling.session import MAX_PASSWORD_BYTES, Session, SignalingError, text_field

log = Logger()

RESUME_SECONDS = 120
# Failed logins allowed (token buckets; a success gives its token back):
LOGIN_BURST, LOGIN_PER_SECOND = 5, 0.2  # per account and source
LOGIN_SOURCE_BURST, LOGIN_SOURCE_PER_SECOND = 20, 0.8  # per source, all accounts (and registrations)
LOGIN_ACCOUNT_BURST, LOGIN_ACCOUNT_PER_SECOND = 100, 1.0  # per account, all sources


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

    def _register(self, session: Session, message: dict):
        if not self.config.open_registration:
            raise SignalingError("forbidden", "registration is closed on this node")
        user, password = text_field(message, "user"), text_field(message, "password", MAX_PASSWORD_BYTES)
        if not self._login_by_source.allow(source_key(session.address[0]), self.clock.seconds()):
            raise SignalingError("rate-limited", "too many attempts from this address")
        try:
            check_new_account(user, password)
            self.accounts.add(user, password, self.config.realm)
        except AccountPolicyError as e:
            raise SignalingError(e.code, str(e)) from None
        except AccountError as e:
            raise SignalingError("conflict", str(e)) from None
        return {"op": "registered", "user": user}

    def _login(self, session: Session, message: dict):
        user, password = text_field(message, "user"), text_field(message, "password", MAX_PASSWORD_BYTES)
        self._check_logged_out(session)
        buckets = self._take_login_tokens(user, source_key(session.address[0]))
        if buckets is None:
            raise SignalingError("rate-limited", "too many failed logins; try again later")
        if not self.accounts.check_password(user, password):
            log.info("failed login for {user} from {client}", user=user, client=session.address[0])
            raise SignalingError("unauthenticated", "wrong user name or password")
        for limiter, key in buckets:  # only failures count against the limits
            limiter.refund(key)
        return self._start(session, user)

    def _init_login_limits(self) -> None:
        self._login_by_account_source = RateLimiter(LOGIN_BURST, LOGIN_PER_SECOND)
        self._login_by_source = RateLimiter(LOGIN_SOURCE_BURST, LOGIN_SOURCE_PER_SECOND)
        self._login_by_account = RateLimiter(LOGIN_ACCOUNT_BURST, LOGIN_ACCOUNT_PER_SECOND)

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
        if user is None:
            user, expires = self.resume_tokens.pop(token, (None, 0))
            if expires < self.clock.seconds():
                raise SignalingError("unauthenticated", "unknown or expired resume token")
        return self._start(session, user, resumed=True)

    def _check_logged_out(self, session: Session) -> None:
        if session.user is not None:
            raise SignalingError("conflict", f"already logged in as {session.user}; log out first")

    def keep_resumable(self, session: Session) -> None:
        """The connection of a logged-in session closed: its token works for RESUME_SECONDS more."""
        if self.live_tokens.pop(session.resume_token, None) is not None:
            self.resume_tokens[session.resume_token] = (session.user, self.clock.seconds() + RESUME_SECONDS)
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
            "trickle": True,
        }


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
        self.closed(session)
        session.user = None
        session.state = "offline"
        return {"op": "logged-out", "user": user}

