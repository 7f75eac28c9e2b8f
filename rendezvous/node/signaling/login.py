"""Signaling login: register, login, resume, logout, draining and the welcome's TURN credentials."""

import secrets

from twisted.logger import Logger

from rendezvous.node.accounts import AccountError
from rendezvous.node.signaling.session import Session, SignalingError, text_field

log = Logger()

RESUME_SECONDS = 120
LOGIN_BURST, LOGIN_PER_SECOND = 5, 0.2


class Login:
    """Mixed into SignalingNode: who a session is."""

    def _register(self, session: Session, message: dict):
        if not self.config.open_registration:
            raise SignalingError("forbidden", "registration is closed on this node")
        user, password = text_field(message, "user"), text_field(message, "password", 1024)
        if not self._login_by_ip.allow(session.address[0], self.clock.seconds()):
            raise SignalingError("rate-limited", "too many attempts")
        try:
            self.accounts.add(user, password, self.config.realm)
        except AccountError as e:
            raise SignalingError("conflict", str(e)) from None
        return {"op": "registered", "user": user}

    def _login(self, session: Session, message: dict):
        user, password = text_field(message, "user"), text_field(message, "password", 1024)
        self._check_logged_out(session)
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

