"""A client of the super node's signaling protocol (docs/PROTOCOL.md, "Signaling v1").

``SignalingClient.login(reactor, user, password, ...)`` tries super nodes in
order — the host cache's entries, then the bootstrap ``servers`` — over TCP
or TLS (each node's addresses raced, RFC 8305: ``happy_eyeballs``; IPv4
through NAT64 on an IPv6-only host: ``nat64``), follows a ``redirect`` from
a draining node to the nodes it offers, and fires with a logged-in client
once a ``welcome`` arrives; the welcome's
``host_cache`` is merged into the HostCache and saved. After that:

- ``request(op, **fields)`` sends a frame with a fresh ``id`` and fires with
  the reply carrying that id (an ``error`` reply fails it with
  ``SignalingRequestError``); ``send(op, **fields)`` is for ops the node
  does not answer on success (``connect-answer``, ``connect-decline``).
- ``on(op, callback)`` receives pushed frames (``connect-request``,
  ``punch``, ``presence``, ``message``, ``connect-declined``, ``redirect``,
  ``replaced``, and ``error`` without an id); pings are answered here.

Everything is bounded: one frame of input (``FrameReader``), requests in
flight, pushed frames kept for handlers not registered yet, frames written
while the node does not read, and silence (the node pings every 30 s).
The client core only writes through a callable; ``_SignalingStream`` is the
thin Twisted adapter.
"""

import ipaddress
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from relay.client import tls_options

from rendezvous.peer.happy_eyeballs import plan, race
from rendezvous.peer.host_cache import HostCache, host_entry
from rendezvous.peer.nat64 import discover, has_route
from rendezvous.wire.frames import FrameError, FrameReader, encode
from rendezvous.wire.streams import IDLE_TIMEOUT_SECONDS, BoundedWrites, send_at_once

log = Logger()

MAX_REQUESTS_IN_FLIGHT = 64
MAX_UNHANDLED_FRAMES = 64
MAX_REDIRECTS = 3
REQUEST_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0


class SignalingRequestError(Exception):
    """The node answered a request with an ``error`` frame."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SignalingConnectionLost(Exception):
    """The signaling connection closed before the reply came."""


class SignalingUnavailable(Exception):
    """No super node could be logged in to; ``attempts`` lists (server, error) pairs."""

    def __init__(self, attempts: list[tuple[tuple[str, int], str]]) -> None:
        tried = "; ".join(f"{host}:{port}: {error}" for (host, port), error in attempts) or "no server to try"
        super().__init__(f"no super node reachable ({tried})")
        self.attempts = attempts


class SignalingClient:
    """One signaling connection to a super node, logged in once ``login`` fires.

    Attributes set from the ``welcome``: ``user``, ``node``,
    ``mapped_address`` ((ip, port) as the node saw us), ``relays``,
    ``welcome`` (the whole frame) and ``server`` ((host, port) used);
    ``address`` is the happy eyeballs ``Target`` the connection went to
    (the node's address, and the NAT64 one dialled for it), ``nat64`` the
    ``Nat64`` it went through (None: it did not); ``local_address`` is our
    end of the connection.
    ``dropped`` counts pushed frames lost for want of a handler and
    frames that were not JSON objects.
    """

    def __init__(self, clock, request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.clock = clock
        self.request_timeout_seconds = request_timeout_seconds
        self.user: str | None = None
        self.node: str | None = None
        self.mapped_address: tuple[str, int] | None = None
        self.relays: list = []
        self.welcome: dict | None = None
        self.server: tuple[str, int] | None = None
        self.address = None  # happy_eyeballs.Target
        self.nat64 = None  # nat64.Nat64
        self.local_address: tuple[str, int] | None = None
        self.dropped = 0
        self.connected = False
        self._write: Callable[[bytes], None] | None = None
        self._disconnect: Callable[[], None] | None = None
        self._next_id = 0
        self._pending: dict[int, Deferred] = {}
        self._handlers: dict[str, list[Callable[[dict], Any]]] = {}
        self._unhandled: deque[dict] = deque()
        self._closed_waiters: list[Deferred] = []
        self._turn: tuple[dict | None, float] = (None, 0.0)  # the relay credentials, and when they came
        self._renewing: Deferred | None = None

    # -- the connection, as the adapter sees it --------------------------------

    def _attach(self, write: Callable[[bytes], None], disconnect: Callable[[], None],
                local_address: tuple[str, int] | None = None) -> None:
        self._write, self._disconnect, self.connected = write, disconnect, True
        self.local_address = local_address

    def _frame(self, message) -> None:
        """One decoded frame from the node (a dict, or a FrameError for a body that was not JSON)."""
        if not isinstance(message, dict):
            self.dropped += 1
            log.debug("ignoring a signaling frame: {error}", error=message)
            return
        op, request_id = message["op"], message.get("id")
        if op == "ping":
            token = message.get("token")
            self._send_frame({"op": "pong", "token": token if isinstance(token, str) else None})
            return
        if isinstance(request_id, int) and not isinstance(request_id, bool) and request_id in self._pending:
            waiter = self._pending.pop(request_id)
            if op == "error":
                waiter.errback(SignalingRequestError(str(message.get("code")), str(message.get("reason"))))
            else:
                waiter.callback(message)
            return
        handlers = self._handlers.get(op)
        if not handlers:
            if len(self._unhandled) == MAX_UNHANDLED_FRAMES:
                self._unhandled.popleft()
                self.dropped += 1
            self._unhandled.append(message)
            return
        for handler in list(handlers):
            self._call(handler, message)

    def _lost(self, reason: Exception | None = None) -> None:
        self.connected = False
        self._write = None
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.errback(SignalingConnectionLost(str(reason) if reason else "connection closed"))
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- the public API ------------------------------------------------------------

    @classmethod
    def login(cls, reactor, user: str, password: str, servers: list[tuple[str, int]] | None = None,
              host_cache: HostCache | None = None, tls: bool = False, tls_verify: bool = True,
              register: bool = False, timeout_seconds: float = 10, *, tls_ca_file: str | None = None,
              tls_hostname: str | None = None) -> Deferred:
        """Log in to the first super node that answers; fires with a SignalingClient.

        Servers are tried in order: ``host_cache.candidates()`` (its entries,
        then its bootstrap list), then ``servers``; each try (connect, TLS
        handshake, login) gets ``timeout_seconds``. A ``redirect`` reply
        sends the try to the hosts it offers (at most 3 redirects). With
        ``register`` the account is registered first (an existing one is
        fine). TLS verifies the node's certificate against the platform's
        trust store, or ``tls_ca_file``, for ``tls_hostname`` (default: the
        server's host); ``tls_verify=False`` is for development nodes only.

        Fails with SignalingRequestError when a node refuses the login
        (wrong password: code ``unauthenticated``), or SignalingUnavailable
        when no node could be reached.
        """
        order = list(host_cache.candidates()) if host_cache is not None else []
        order += [(str(h), int(p)) for h, p in servers or () if (str(h), int(p)) not in order]
        options = dict(user=user, password=password, tls=tls, tls_verify=tls_verify, tls_ca_file=tls_ca_file,
                       tls_hostname=tls_hostname, register=register, timeout_seconds=timeout_seconds)
        return Deferred.fromCoroutine(_login(cls, reactor, order, host_cache, options))

    def request(self, op: str, **fields) -> Deferred:
        """Send ``op`` with a fresh id; fires with the reply frame (a dict).

        Fails with SignalingRequestError for an ``error`` reply,
        SignalingConnectionLost if the connection goes first, TimeoutError
        after ``request_timeout_seconds``, and at once with
        SignalingRequestError("busy") when 64 requests are in flight.
        """
        if not self.connected:
            return fail(SignalingConnectionLost("not connected"))
        if len(self._pending) >= MAX_REQUESTS_IN_FLIGHT:
            return fail(SignalingRequestError("busy", f"{MAX_REQUESTS_IN_FLIGHT} requests already in flight"))
        self._next_id += 1
        request_id = self._next_id
        waiter = Deferred(lambda _: self._pending.pop(request_id, None))
        self._pending[request_id] = waiter
        self._send_frame({**fields, "op": op, "id": request_id})
        return waiter.addTimeout(self.request_timeout_seconds, self.clock)

    def turn_credentials(self) -> Deferred:
        """Fires with credentials for the node's relay ({username, password, ttl, realm, urls}, or None
        without a relay) good for at least half their ``ttl``: the welcome's while they are, else fresh
        ones from the node's ``turn-credentials`` (docs/PROTOCOL.md). If the node cannot give new
        ones, the last are kept (they may still do for a while)."""
        turn, at = self._turn
        if not isinstance(turn, dict) or self.clock.seconds() < at + _ttl(turn) / 2:
            return succeed(turn if isinstance(turn, dict) else None)
        if self._renewing is None:
            self._renewing = self.request("turn-credentials").addCallbacks(self._renewed, self._not_renewed)
        copy: Deferred = Deferred()
        self._renewing.addBoth(lambda result: (copy.callback(result), result)[1])
        return copy

    def _renewed(self, reply: dict) -> dict | None:
        self._renewing = None
        turn = reply.get("turn")
        self._turn = (turn, self.clock.seconds())
        return turn if isinstance(turn, dict) else None

    def _not_renewed(self, failure) -> dict | None:
        self._renewing = None
        log.info("relay credentials not renewed: {error}", error=failure.getErrorMessage())
        return self._turn[0]

    def send(self, op: str, **fields) -> None:
        """Send ``op`` without waiting for a reply (an error, if any, goes to ``on("error")``)."""
        if not self.connected:
            raise SignalingConnectionLost("not connected")
        self._send_frame({**fields, "op": op})

    def on(self, op: str, callback: Callable[[dict], Any]) -> None:
        """Call ``callback(frame)`` for each pushed frame of ``op``, starting with any held for it."""
        self._handlers.setdefault(op, []).append(callback)
        held = [m for m in self._unhandled if m["op"] == op]
        if held:
            self._unhandled = deque(m for m in self._unhandled if m["op"] != op)
            for message in held:
                self._call(callback, message)

    def off(self, op: str, callback: Callable[[dict], Any]) -> None:
        """Stop calling ``callback`` for ``op``."""
        handlers = self._handlers.get(op, [])
        if callback in handlers:
            handlers.remove(callback)

    def set_presence(self, state: str, nat_type: str | None = None) -> Deferred:
        """Tell the node (and so our buddies) our state; fires with ``presence-set``."""
        fields = {"state": state} if nat_type is None else {"state": state, "nat_type": nat_type}
        return self.request("presence", **fields)

    def buddy_list(self) -> Deferred:
        """Fires with the whole buddy list, [{"user", "relation", "state"?}], read page by page
        (docs/PROTOCOL.md, "Paged buddy lists"); fails as ``request`` does, or with SignalingRequestError
        ("bad-page") when a page's ``next`` does not move forward."""
        async def pages() -> list[dict]:
            entries, after = [], ""
            while True:
                reply = await self.request("buddy-list", **({"after": after} if after else {}))
                entries += reply["buddies"]
                following = reply.get("next")
                if following is None:
                    return entries
                if not isinstance(following, str) or following <= after:
                    raise SignalingRequestError("bad-page", f"next {following!r} does not follow {after!r}")
                after = following

        return Deferred.fromCoroutine(pages())

    def close(self) -> Deferred:
        """Close the connection; fires when it is gone."""
        closed = self.when_closed()
        if self.connected and self._disconnect is not None:
            self._disconnect()
        return closed

    def when_closed(self) -> Deferred:
        """A Deferred that fires (with None) once the connection is gone."""
        if not self.connected:
            return succeed(None)
        waiter = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    # -- inside --------------------------------------------------------------------

    def _send_frame(self, message: dict) -> None:
        if self._write is not None:
            self._write(encode(message))

    def _call(self, handler: Callable[[dict], Any], message: dict) -> None:
        try:
            handler(message)
        except Exception:
            log.failure("a handler of signaling {op} failed", op=message["op"])

    def _welcomed(self, welcome: dict, server: tuple[str, int]) -> None:
        self.welcome, self.server = welcome, server
        self.user, self.node = welcome.get("user"), welcome.get("node")
        mapped = welcome.get("mapped")
        if isinstance(mapped, list) and len(mapped) == 2:
            self.mapped_address = (str(mapped[0]), int(mapped[1]))
        self.relays = welcome.get("relays") or []
        self._turn = (welcome.get("turn"), self.clock.seconds())


@implementer(IHandshakeListener)
class _SignalingStream(BoundedWrites, Protocol, TimeoutMixin):
    """Moves frames between a TCP/TLS connection and a SignalingClient.

    It registers as the transport's producer: when the node stops reading
    and more than MAX_FRAMES_WHILE_PAUSED frames pile up, the connection is
    aborted rather than buffering without end. Silence longer than three of
    the node's ping intervals closes it too (a half-open connection).
    """

    def __init__(self, client: SignalingClient, tls: bool = False) -> None:
        self.client = client
        self.reader = FrameReader()
        self.handshake: Deferred | None = Deferred() if tls else None
        self.abort_later = None
        self.callLater = client.clock.callLater

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        send_at_once(self.transport)
        host = self.transport.getHost()
        self.client._attach(self._write, self._close, (host.host, host.port))
        self.setTimeout(IDLE_TIMEOUT_SECONDS)

    def handshakeCompleted(self) -> None:
        if self.handshake is not None and not self.handshake.called:
            self.handshake.callback(None)

    def _close(self) -> None:
        # TLS waits for a registered producer to go before its close_notify,
        # then for the node's; a node that never answers is cut off.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self.abort_later is None:
            self.abort_later = self.callLater(CLOSE_TIMEOUT_SECONDS, self.transport.abortConnection)

    def _write(self, data: bytes) -> None:
        self.write_frame(data, "the super node")

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        for message in self.reader.feed(data):
            if isinstance(message, FrameError) and message.fatal:
                log.info("closing the signaling stream: {error}", error=str(message))
                self.transport.abortConnection()
                return
            self.client._frame(message)

    def timeoutConnection(self) -> None:
        log.info("the super node has been silent for {seconds} s; closing", seconds=IDLE_TIMEOUT_SECONDS)
        self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if self.abort_later is not None and self.abort_later.active():
            self.abort_later.cancel()
        if self.handshake is not None and not self.handshake.called:
            self.handshake.errback(reason)
        error = reason.value if reason is not None and not reason.check(ConnectionDone) else None
        self.client._lost(error)


# -- logging in --------------------------------------------------------------------


async def _login(cls, reactor, order: list[tuple[str, int]], host_cache: HostCache | None,
                 options: dict) -> SignalingClient:
    attempts: list[tuple[tuple[str, int], str]] = []
    tried: set[tuple[str, int]] = set()
    redirects = 0
    while order:
        server = order.pop(0)
        if server in tried:
            continue
        tried.add(server)
        try:
            client, reply = await _attempt(cls, reactor, server, options, host_cache)
        except SignalingRequestError:
            raise  # the node answered: a wrong password is wrong everywhere
        except Exception as e:
            attempts.append((server, _describe(e)))
            log.info("signaling login via {host}:{port} failed: {error}", host=server[0], port=server[1],
                     error=_describe(e))
            continue
        if reply["op"] == "redirect":
            client.close()
            offered = [(e["host"], e["port"]) for e in map(host_entry, reply.get("hosts") or []) if e]
            attempts.append((server, f"redirected ({reply.get('reason')})"))
            if host_cache is not None:
                host_cache.merge(reply.get("hosts"))
            redirects += 1
            if redirects <= MAX_REDIRECTS:
                order = [s for s in offered if s not in tried] + order
            continue
        client._welcomed(reply, server)
        if host_cache is not None:
            this = {"host": server[0], "port": server[1], "ips": reply.get("node_ips")}  # both families
            host_cache.merge([this] + list(reply.get("host_cache") or []))
            host_cache.remember(server, client.address.ip)
            try:
                host_cache.save()
            except OSError as e:
                log.warn("could not save the host cache {path}: {error}",  # noqa: G010
                         path=str(host_cache.path), error=e)
        return client
    raise SignalingUnavailable(attempts)


async def _attempt(cls, reactor, server: tuple[str, int], options: dict,
                   host_cache: HostCache | None = None) -> tuple[SignalingClient, dict]:
    """Connect to one node, its addresses raced (RFC 8305, ``happy_eyeballs``), and log in on the
    connection that won; fires with the client and the welcome or redirect."""
    host, port = server
    timeout_seconds = options["timeout_seconds"]
    steps: list[Deferred] = []
    deadline = reactor.callLater(timeout_seconds, lambda: steps and steps[-1].cancel())
    client = None

    def step(d: Deferred) -> Deferred:
        steps.append(d)
        return d

    try:
        ips = host_cache.addresses(server) if host_cache is not None and server in host_cache.entries else None
        if ips is None:
            ips = await step(Deferred.fromCoroutine(_resolve(reactor, host, port)))
        nat64 = None
        if any(":" not in ip and not has_route(ip) for ip in ips):  # RFC 8305 §7.1: IPv4 through NAT64
            nat64 = await step(Deferred.fromCoroutine(discover(reactor, next(ip for ip in ips if ":" not in ip))))
        targets = plan(ips, has_route, nat64, host_cache.reached_via(server) if host_cache is not None else None)
        if not targets:
            raise SignalingConnectionLost(f"no route to {host} (no IPv4 route and no NAT64 prefix)")
        target, client = await step(race(
            reactor, targets, lambda t: Deferred.fromCoroutine(_connected(cls, reactor, host, t.dial, port,
                                                                          options))))
        client.nat64, client.address = nat64, target
        if options["register"]:
            try:
                await step(client.request("register", user=options["user"], password=options["password"]))
            except SignalingRequestError as e:
                if e.code != "conflict":
                    raise
        reply = await step(client.request("login", user=options["user"], password=options["password"]))
        if reply.get("op") not in ("welcome", "redirect"):
            raise SignalingConnectionLost(f"unexpected reply to login: {reply.get('op')}")
        return client, reply
    except BaseException:
        if client is not None:
            client.close()
        raise
    finally:
        if deadline.active():
            deadline.cancel()


async def _resolve(reactor, host: str, port: int) -> list[str]:
    """host if it is an address, else every address its name has (A and AAAA, system resolver)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await deferToThreadPool(reactor, reactor.getThreadPool(), socket.getaddrinfo, host, port, 0,
                                    socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


async def _connected(cls, reactor, host: str, ip: str, port: int, options: dict) -> SignalingClient:
    """A client on a TCP (and TLS) connection to one address of the node, not logged in yet; a
    cancelled attempt closes what it opened."""
    endpoint = (TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint)(reactor, ip, port,
                                                                         timeout=options["timeout_seconds"])
    if options["tls"]:
        endpoint = wrapClientTLS(
            tls_options(options["tls_hostname"] or host, options["tls_verify"], options["tls_ca_file"]), endpoint)
    client = cls(reactor, request_timeout_seconds=options["timeout_seconds"])
    stream = _SignalingStream(client, tls=options["tls"])
    try:
        await connectProtocol(endpoint, stream)
        if stream.handshake is not None:
            await stream.handshake
    except BaseException:
        client.close()
        raise
    return client


def _describe(error: BaseException) -> str:
    if isinstance(error, CancelledError):
        return "timed out"
    return str(error) or type(error).__name__


def _ttl(turn: dict) -> float:
    """The credentials' lifetime in seconds (0 for a missing or bad ``ttl``: renew each time)."""
    ttl = turn.get("ttl")
    return float(ttl) if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0 else 0.0
