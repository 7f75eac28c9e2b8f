"""Twisted endpoints over sessions: any Protocol on a stream to a buddy, as txtorcon does for Tor.

    endpoint = clientFromString(reactor, "rendezvous:host=198.18.0.1:user=alice:"
                                         "password-file=/run/alice.pw:peer=bob")
    protocol = await connectProtocol(endpoint, MyProtocol())
    port = await serverFromString(reactor, "rendezvous:host=198.18.0.1:user=bob:"
                                           "password-env=BOB_PASSWORD").listen(factory)
    await port.stopListening()                       # sessions closed, logged out

The strings are parsed by ``parse_client`` and ``parse_server``, which the
plugin twisted/plugins/rendezvous_endpoints.py names; docs/EMBEDDING.md
lists their parameters. A client endpoint runs each protocol on a new
stream (RFC 9000 §2) of a session to the peer, made by a logged-in
``Client`` or reused while one is open; a server endpoint has the Client
``listen()`` and gives each stream a buddy opens to the factory's protocol.

Endpoints of one user on one reactor share one login (a node keeps one
login per user), and a client endpoint's sessions: the login ends
``linger_seconds`` after its last stream ended and no port listens, or when
the reactor shuts down. Endpoints built on an application's own ``Client``
never close it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from rendezvous.peer.client import Client
from rendezvous.peer.connection import ConnectError
from rendezvous.peer.quic_streams import PeerAddress
from rendezvous.peer.session import Session

log = Logger()

DEFAULT_PORT = 3478
DEFAULT_TLS_PORT = 5349
LINGER_SECONDS = 10.0  # how long an unused login (and its sessions) stays for the next connect


@dataclass(frozen=True)
class Login:
    """Who logs in where, with which ``Client.login`` options; endpoints with equal Logins share one login."""

    servers: tuple[tuple[str, int], ...]
    user: str
    password: str = field(repr=False)
    tls: bool = False
    tls_verify: bool = True
    options: tuple[tuple[str, object], ...] = ()  # more Client.login options, as (name, value) pairs

    def login(self, reactor) -> Deferred:
        """Fires with a logged-in Client (fails as ``Client.login`` does)."""
        return Client.login(reactor, self.user, self.password, list(self.servers), tls=self.tls,
                            tls_verify=self.tls_verify, **dict(self.options))


class _Shared:
    """One login shared by the endpoints that name it: its Client, its users, its listening port."""

    def __init__(self, reactor, key, login: Login | None = None, client: Client | None = None) -> None:
        self.reactor, self.key, self.login, self.client = reactor, key, login, client
        self.owned = client is None  # logged in here, so logged out here
        self.port: ListeningPort | None = None
        self.users = 0  # open client streams, connects under way and listening ports
        self._login_lock = DeferredLock()
        self._peer_locks: dict[str, DeferredLock] = {}
        self._linger = None
        self._shutdown = reactor.addSystemEventTrigger("before", "shutdown", self.close) if self.owned else None
        self._closed: Deferred | None = None  # fires once the Client is closed

    def hold(self) -> None:
        self.users += 1
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None

    def release(self, linger_seconds: float) -> Deferred:
        """One user fewer; after the last, an owned login closes at once or after ``linger_seconds``
        (an application's Client is only forgotten)."""
        self.users -= 1
        if self.users:
            return succeed(None)
        if linger_seconds <= 0 or not self.owned:
            return self.close()
        self._linger = self.reactor.callLater(linger_seconds, self.close)
        return succeed(None)

    async def logged_in(self) -> Client:
        async with self._login_lock:
            if self._closed is not None:
                raise ConnectError("the login was closed (the reactor is shutting down)")
            if self.owned and self.client is not None and not self.client.signaling.connected:
                await self.client.close()  # the node dropped us: log in again
                self.client = None
            if self.client is None:
                self.client = await self.login.login(self.reactor)
            return self.client

    async def session_to(self, peer: str) -> Session:
        """An open session this side made to ``peer`` (by an endpoint or the application), or a new one."""
        async with self._peer_locks.setdefault(peer, DeferredLock()):
            client = self.client or await self.logged_in()
            for session in client.sessions:
                if isinstance(session, Session) and session.is_client and session.peer == peer:
                    return session
            return await (await self.logged_in()).connect(peer)

    def close(self) -> Deferred:
        """Forget this login; an owned Client closes its sessions and logs out. Fires when that is
        done (the reactor's shutdown waits for it too)."""
        if self._closed is None:
            if _logins.get(self.key) is self:
                del _logins[self.key]
            if self._linger is not None and self._linger.active():
                self._linger.cancel()
            self._linger = None
            client, self.client = self.client, None
            if self.owned and client is not None:
                log.info("{user} logs out: no endpoint uses the login", user=client.user)
                self._closed = client.close()
            else:
                self._closed = succeed(None)
            self._closed.addBoth(self._forget_shutdown)
        waiter = Deferred()
        self._closed.addBoth(lambda result: (waiter.callback(None), result)[1])
        return waiter

    def _forget_shutdown(self, result):
        if self._shutdown is not None:
            self.reactor.removeSystemEventTrigger(self._shutdown)
            self._shutdown = None
        return result


_logins: dict[tuple, _Shared] = {}


def _shared(reactor, source: Login | Client) -> _Shared:
    key = (reactor, source)
    if key not in _logins:
        if isinstance(source, Client):
            _logins[key] = _Shared(reactor, key, client=source)
        else:
            _logins[key] = _Shared(reactor, key, login=source)
    return _logins[key]


@implementer(IStreamClientEndpoint)
class ClientEndpoint:
    """Connects a protocol to a new stream of a session to ``peer``.

    ``source`` is a Login (shared with other endpoints naming an equal one)
    or an application's logged-in Client.
    """

    def __init__(self, reactor, source: Login | Client, peer: str, linger_seconds: float = LINGER_SECONDS) -> None:
        self.reactor, self.source, self.peer, self.linger_seconds = reactor, source, peer, linger_seconds

    def connect(self, factory) -> Deferred:
        """Fires with ``factory.buildProtocol(PeerAddress(peer))``, connected to its stream (its
        ``transport.session`` is the Session). Fails as ``Client.login`` and ``Client.connect`` do
        (ConnectError with ``attempts`` when the peer declines or cannot be reached), or with
        ConnectError when the factory builds no protocol."""
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory):
        shared = _shared(self.reactor, self.source)
        shared.hold()
        try:
            session = await shared.session_to(self.peer)
            protocol = factory.buildProtocol(PeerAddress(self.peer))
            if protocol is None:
                raise ConnectError(f"the factory built no protocol for {self.peer}")
            transport = session.open_stream(protocol)
        except BaseException:
            shared.release(self.linger_seconds)
            raise
        transport.notify_lost(lambda _: shared.release(self.linger_seconds))
        return protocol


@implementer(IListeningPort)
class ListeningPort:
    """Sessions from buddies (those in ``allow``, or all): each stream they open gets the factory's protocol."""

    def __init__(self, shared: _Shared, factory, allow: frozenset[str] | None) -> None:
        self.shared, self.factory, self.allow = shared, factory, allow
        self.sessions: list[Session] = []
        self.listening = True

    def accepts(self, peer: str) -> bool:
        return self.listening and (self.allow is None or peer in self.allow)

    def session(self, session: Session) -> None:
        if not self.listening:
            session.close()
            return
        self.sessions.append(session)
        session.when_closed().addCallback(lambda _: session in self.sessions and self.sessions.remove(session))
        session.accept_streams(self.factory)

    def startListening(self) -> None:
        """Listening starts in ``ServerEndpoint.listen``."""

    def stopListening(self) -> Deferred:
        """Refuse new sessions, close those accepted; fires once the login is closed (when nothing
        else uses it)."""
        if not self.listening:
            return succeed(None)
        self.listening = False
        self.shared.port = None
        sessions, self.sessions = self.sessions, []
        for session in sessions:
            session.close()
        self.factory.doStop()
        return self.shared.release(0)

    def getHost(self) -> PeerAddress:
        return PeerAddress(self.shared.client.user if self.shared.client else self.shared.login.user)


@implementer(IStreamServerEndpoint)
class ServerEndpoint:
    """Listens for buddies' sessions (all, or those named in ``allow``) on a Login or a Client."""

    def __init__(self, reactor, source: Login | Client, allow: frozenset[str] | None = None) -> None:
        self.reactor, self.source, self.allow = reactor, source, allow

    def listen(self, factory) -> Deferred:
        """Fires with a ListeningPort once online; fails as ``Client.login`` does, or with
        CannotListenError when a port already listens on this login."""
        return Deferred.fromCoroutine(self._listen(factory))

    async def _listen(self, factory) -> ListeningPort:
        shared = _shared(self.reactor, self.source)
        user = self.source.user
        if shared.port is not None:
            raise CannotListenError(None, user, "a port already listens as this user")
        shared.hold()
        port = shared.port = ListeningPort(shared, factory, self.allow)
        try:
            client = await shared.logged_in()
            await client.listen(port.session, port.accepts)
        except BaseException:
            shared.port = None
            shared.release(0)
            raise
        factory.doStart()
        return port


# -- endpoint strings ----------------------------------------------------------------


def parse_client(reactor, *args: str, **params: str) -> ClientEndpoint:
    """``rendezvous:host=H:user=U:password-file=P:peer=B[:...]`` -> a ClientEndpoint (ValueError if bad)."""
    peer = params.pop("peer", None)
    linger = _seconds(params.pop("linger", LINGER_SECONDS), "linger")
    login = _login(args, params)
    if not peer:
        raise ValueError("a rendezvous: client endpoint needs peer=BUDDY")
    return ClientEndpoint(reactor, login, peer, linger_seconds=linger)


def parse_server(reactor, *args: str, **params: str) -> ServerEndpoint:
    """``rendezvous:host=H:user=U:password-env=NAME[:allow=A,B:...]`` -> a ServerEndpoint (ValueError if bad)."""
    allow = params.pop("allow", None)
    login = _login(args, params)
    return ServerEndpoint(reactor, login, frozenset(allow.split(",")) if allow else None)


def _login(args: tuple, params: dict) -> Login:
    """The parameters both kinds share; what is left over is an error."""
    if args:
        raise ValueError(f"rendezvous: endpoints take only name=value parameters, not {':'.join(args)!r}")
    if "password" in params:
        raise ValueError("rendezvous: endpoints take no password=; use password-file=PATH or password-env=NAME")
    host, user = params.pop("host", None), params.pop("user", None)
    if not host or not user:
        raise ValueError("a rendezvous: endpoint needs host=NODE and user=NAME")
    tls = _flag(params.pop("tls", "no"), "tls")
    port = int(params.pop("port", DEFAULT_TLS_PORT if tls else DEFAULT_PORT))
    if not 0 < port < 65536:
        raise ValueError(f"port={port} is out of range")
    password = read_password(params.pop("password-file", None), params.pop("password-env", None))
    tls_verify = not _flag(params.pop("insecure", "no"), "insecure")
    options = {}
    if "state-dir" in params:
        options["state_dir"] = Path(params.pop("state-dir"))
    if _flag(params.pop("relay-only", "no"), "relay-only"):
        options["direct_transports"] = ()
    if _flag(params.pop("loopback", "no"), "loopback"):
        options["include_loopback"] = True
    if _flag(params.pop("allow-new-fingerprint", "no"), "allow-new-fingerprint"):
        options["allow_new_fingerprint"] = True
    if "timeout" in params:
        options["timeout_seconds"] = _seconds(params.pop("timeout"), "timeout")
    if params:
        raise ValueError(f"unknown rendezvous: endpoint parameters: {', '.join(sorted(params))}")
    return Login(((host, port),), user, password, tls, tls_verify, tuple(sorted(options.items())))


def read_password(path: str | None, variable: str | None) -> str:
    """The first line of the file at ``path``, or environment variable ``variable`` (give one);
    ValueError when neither or both are given, or the password is unreadable or empty."""
    if (path is None) == (variable is None):
        raise ValueError("a rendezvous: endpoint needs one of password-file=PATH or password-env=NAME")
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise ValueError(f"cannot read password-file={path}: {e.strerror}") from None
        password = lines[0] if lines else ""
    else:
        password = os.environ.get(variable, "")
    if not password:
        raise ValueError(f"the password in {'password-file=' + path if path else '$' + variable} is empty")
    return password


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("yes", "true", "1", "on"):
        return True
    if value.lower() in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"{name}={value!r}: say yes or no")


def _seconds(value, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{name}={value!r} is negative")
    return seconds
