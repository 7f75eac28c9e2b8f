"""A long-lived logged-in client: sessions to buddies and from them, the buddy list, presence.

    client = await Client.login(reactor, "alice", password, [("198.18.0.1", 3478)])
    session = await client.connect("bob")            # we call
    await client.listen(on_session)                   # buddies call us
    await client.add_buddy("carol")                   # docs/PROTOCOL.md buddy-add
    client.on_presence(lambda frame: ...)             # buddies come and go
    await client.close()                              # sessions closed, logged out

Each connect gathers candidates, exchanges them (with ICE credentials and
this user's certificate fingerprint) through the node, runs the checks and
the TCP punch at the node's instant, and secures the path with a session
(``connector``, ``checks``, ``trust``). The calling side names the session
(``session`` in the connect frame); when its path is lost, and every
``recheck_seconds`` while it runs on a relay, it restarts ICE under the
same name (RFC 8445 §2.4: new credentials and candidates, relay first
again) and the session moves to the new path without a new handshake.
The client keeps a relay allocation ready for the next session
(``spare_relay``), so a session's first byte does not wait for one.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import replace
from pathlib import Path

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rendezvous.peer.checks import _Session
from rendezvous.peer.connection import ConnectError, Connection
from rendezvous.peer import nat_memory
from rendezvous.peer.connector import _credentials, _Options, _peer_hint, _presence, _Punches, _state_dir, _trust
from rendezvous.peer.gathering import UPNP_DISCOVERY_SECONDS, UPNP_SECONDS
from rendezvous.peer.outcomes import SETTLE_WAIT_SECONDS, report_when_settled
from rendezvous.peer.pins import FINGERPRINT_CHANGED, FingerprintChanged
from rendezvous.peer.prediction import NatHint
from rendezvous.peer.session import Session
from rendezvous.peer.spare_relay import SpareRelay
from upnp_helper import discover_gateway

log = Logger()

NO_GATEWAY_SECONDS = 300.0  # how long "no gateway here" is believed
UDP_SILENT_SECONDS = 300.0  # how long "STUN over UDP goes unanswered here" is believed


class Client:
    """A user logged in to a super node (``signaling``, a SignalingClient).

    Known data are attributes: ``user``, ``hint`` (this side's NAT as the
    last gathering saw it), ``sessions`` (made and accepted, open or not),
    ``reports`` (with ``report_outcome``: a Deferred per connect() firing with
    the field test's answer, or None when it was not reported).
    """

    def __init__(self, reactor, signaling, options: _Options, trust, state_dir: Path | None = None) -> None:
        self.reactor, self.signaling, self.options, self.trust = reactor, signaling, options, trust
        self.user = signaling.user
        self.hint = NatHint(None)
        self.sessions: list[Session | Connection] = []
        self.reports: list[Deferred] = []
        self.state_dir = state_dir
        self._on_session = None
        self._accept = None
        self._named: dict[tuple[str, str], Session] = {}  # (peer, session name): sessions a restart may reach
        self._no_gateway_until = 0.0  # no UPnP/NAT-PMP/PCP gateway answered: do not look again before
        self._udp_silent_until = 0.0  # STUN over UDP went unanswered: do not wait for it again before
        self._search: Deferred | None = None  # the background gateway search
        self._punches = _Punches(signaling)
        self._spare: SpareRelay | None = None  # an allocation ready for the next session (spare_relay)
        signaling.on("connect-request", self._request)

    @classmethod
    def login(cls, reactor, user: str, password: str, servers=None, host_cache=None, *, tls: bool = False,
              tls_verify: bool = True, **options) -> Deferred:
        """Log in as ``user``; fires with a Client. Options as ``rendezvous.peer.connect`` takes
        (they apply to every session); raises TypeError or ValueError for a bad one at once.
        Fails with the login's errors (SignalingRequestError, SignalingUnavailable)."""
        options = _Options(tls=tls, tls_verify=tls_verify, **options)
        trust = _trust(options, user, host_cache)

        async def run() -> Client:
            from rendezvous.peer.signaling_client import SignalingClient

            signaling = await SignalingClient.login(reactor, user, password, servers=servers,
                                                    host_cache=host_cache, tls=tls, tls_verify=tls_verify)
            client = cls(reactor, signaling, options, trust, _state_dir(options, host_cache))
            client._look_for_gateway()
            if options.spare_relay and options.relay_transports:
                client._spare = SpareRelay(reactor, signaling, options, signaling.nat64)
                client._spare.start()
            return client

        return Deferred.fromCoroutine(run())

    # -- sessions ------------------------------------------------------------

    def connect(self, peer: str) -> Deferred:
        """A session to the buddy ``peer`` by the best path; fires with a Session (a Connection
        with ``plaintext``). Fails as ``rendezvous.peer.connect`` does."""
        return Deferred.fromCoroutine(self._connect(peer))

    async def _connect(self, peer: str) -> Session | Connection:
        name = secrets.token_urlsafe(12)
        connection, punch, session = await self._path(peer, name)
        made = await self._secure(connection, punch, is_client=True)
        if isinstance(made, Session):
            self._name(made, name)
            made.restarter = self._restart
            self._recheck(made)
        if self.options.report_outcome:
            self._report(made, punch.get("nat_type"), session)
        return self._made(made)

    def _nat(self) -> dict | None:
        """This side's NAT as its last nat-check saw it (within a day), if it was checked."""
        return self.state_dir and nat_memory.recent(self.state_dir, self.reactor.seconds())

    def _nat_field(self) -> dict:
        """With report_outcome, this side's checked NAT type for the peer's outcome report."""
        nat_type = self.options.report_outcome and (self._nat() or {}).get("nat_type")
        return {"nat_type": nat_type} if nat_type else {}

    def _report(self, made: Session | Connection, peer_nat_type: str | None, session: _Session) -> None:
        """Submit the outcome to the node's field test once the checks are over (if the node takes them);
        the peer's NAT type is what its nat-check saw, when it sent one (it reports outcomes too), its
        mapping what its presence said during the checks (it may be offline by the time we report)."""
        url = (self.signaling.welcome or {}).get("results")
        if not url:
            log.info("session outcome not reported: the node takes no field-test results")
            self.reports.append(succeed(None))
            return

        async def sides() -> tuple[dict, dict]:  # read once the checks are over and gathering has ended
            try:
                await _copy(session.gathered).addTimeout(SETTLE_WAIT_SECONDS, self.reactor)
            except Exception:  # no hint after all: the report says the mapping is unknown
                pass
            remote = session.peer_hint
            if remote.mapping is None:
                remote = await _peer_hint(self.signaling, made.peer)
            peer = {"mapping": remote.mapping, **({"nat_type": peer_nat_type} if peer_nat_type else {})}
            return self._nat() or {"mapping": session.hint.mapping}, peer

        self.reports.append(report_when_settled(self.reactor, made, sides, url, verify=self.options.tls_verify))

    async def _path(self, peer: str, name: str, fingerprint: str | None = None
                    ) -> tuple[Connection, dict, _Session]:
        """A new path to ``peer`` for the session ``name`` (relay first): the Connection, the punch, and the
        checks that found it (their NAT hints; their gathering may still run).
        With ``fingerprint`` (a restart), the peer must present the one the session was made with."""
        session = self._session(controlling=True)
        session.peer = peer
        try:
            return await self._exchange(session, peer, name, fingerprint)
        except BaseException:
            session.close()  # its sockets, UPnP lease and TURN allocation
            raise

    async def _exchange(self, session: _Session, peer: str, name: str, fingerprint: str | None):
        looked_up = Deferred.fromCoroutine(_peer_hint(self.signaling, peer))  # meanwhile
        trickle = self._trickles()
        session.on_gathered = self._gathered
        candidates = await session.gather(_copy(looked_up), trickle=trickle)
        fields = {**_credentials(session, self.trust), **self._nat_field()}
        if self.trust is not None:
            fields["session"] = name
        if trickle:
            fields["trickle"] = True
        pending = await self.signaling.request("connect", to=peer, candidates=candidates, **fields)
        if trickle:
            self._punches.trickle(pending["token"], session, candidates)
        peer_hint = await looked_up
        punch = await self._punches.wait(pending["token"], self.reactor, self.options.timeout_seconds)
        if punch.get("op") == "connect-declined":
            if punch.get("reason") == FINGERPRINT_CHANGED:
                raise ConnectError(f"{peer} refused: the fingerprint the node passed on for you is not the one "
                                   f"{peer} pinned (is the node swapping fingerprints?)", session.attempts)
            raise ConnectError(f"{peer} declined", session.attempts)
        if fingerprint is not None and punch.get("fingerprint") != fingerprint:
            raise ConnectError(f"{peer} answered the restart with another fingerprint", session.attempts)
        if self.trust is not None:
            self.trust.check(peer, punch.get("fingerprint"), session.attempts)
        return await session.start(punch, peer_hint), punch, session

    def _trickles(self, request: dict | None = None) -> bool:
        """Whether to trickle candidates (RFC 8838): the node passes them on (its welcome says so),
        the options allow it and, when answering, the caller trickles too."""
        welcome = self.signaling.welcome if isinstance(self.signaling.welcome, dict) else {}
        return (self.options.trickle and welcome.get("trickle") is True
                and (request is None or request.get("trickle") is True))

    def _gathered(self, session: _Session) -> None:
        """Gathering ended: this side's NAT hint is known; presence says it to the buddies
        (a trickling peer looks it up after our end-of-candidates); what it found missing is remembered."""
        self._learn(None, session)
        self.hint = session.hint
        _presence(self.signaling, session.hint)

    def _restart(self, made: Session) -> Deferred:
        """ICE restart for ``made``: fires with its new Connection."""
        async def run() -> Connection:
            connection, _, _ = await self._path(made.peer, made.id, made.peer_fingerprint)
            return connection

        return Deferred.fromCoroutine(run())

    def _recheck(self, made: Session) -> None:
        """Every ``recheck_seconds`` while the session runs on a relay, try for a direct path again
        (not when direct paths are off: the restart would only find the relay again)."""
        if not self.options.direct_transports:
            return
        def due() -> None:
            if made._closed_reason is None and made.path.startswith("turn-"):
                made.restart().addErrback(lambda f: log.info(
                    "re-check of the path to {peer} failed: {error}", peer=made.peer, error=f.getErrorMessage()))

        loop = LoopingCall(due)
        loop.clock = self.reactor
        loop.start(self.options.recheck_seconds, now=False)
        made.when_closed().addCallback(lambda _: loop.running and loop.stop())

    def _name(self, made: Session, name: str) -> None:
        made.id = name
        key = (made.peer, name)
        self._named[key] = made
        made.when_closed().addCallback(lambda _: self._named.pop(key, None))

    def listen(self, on_session, accept=lambda peer: True) -> Deferred:
        """Answer buddies' connects: ``on_session(session)`` for each, ``accept(peer)`` decides who may.

        Learns this side's NAT hint first (a short UDP gathering) and sets
        presence with it; fires with this Client once online."""
        self._on_session, self._accept = on_session, accept

        async def run() -> Client:
            udp_only = replace(self.options, relay_transports=(), upnp=False,
                               direct_transports=tuple(t for t in self.options.direct_transports if t == "udp"))
            probe = _Session(self.reactor, self.signaling, udp_only, False)
            try:
                await probe.gather()
            finally:
                probe.close()
            self._learn(None, probe)
            self.hint = probe.hint
            _presence(self.signaling, probe.hint)
            return self

        return Deferred.fromCoroutine(run())

    def _request(self, message: dict) -> None:
        peer, token = message.get("from"), message.get("token")
        if self._on_session is None or not self._accept(peer):
            self.signaling.send("connect-decline", token=token)
            return
        if self.trust is not None and isinstance(message.get("fingerprint"), str):
            try:
                self.trust.pins.check(peer, message["fingerprint"], self.trust.allow_new_fingerprint)
            except FingerprintChanged as e:
                log.warn("refused a connect: {error}", error=e)
                self.signaling.send("connect-decline", token=token, reason=FINGERPRINT_CHANGED)
                return
        Deferred.fromCoroutine(self._answer(message)).addErrback(
            lambda f: log.info("connection from {peer} failed: {error}", peer=peer, error=f.getErrorMessage()))

    async def _answer(self, request: dict) -> None:
        session = self._session(controlling=False)
        session.peer = request.get("from")
        try:
            await self._answer_with(session, request)
        except BaseException:
            session.close()
            raise

    async def _answer_with(self, session: _Session, request: dict) -> None:
        restarted = self._named.get((session.peer, request.get("session")))
        generation = restarted.begin_restart() if restarted is not None else None
        looked_up = Deferred.fromCoroutine(_peer_hint(self.signaling, session.peer))  # meanwhile
        trickle = self._trickles(request)
        if trickle:
            session.on_gathered = self._gathered
        candidates = await session.gather(_copy(looked_up), trickle=trickle)
        waiting = self._punches.wait(request["token"], self.reactor, self.options.timeout_seconds)
        # connect-answer has no reply frame: the punch is the answer.
        self.signaling.send("connect-answer", token=request["token"], candidates=candidates,
                            **_credentials(session, self.trust), **self._nat_field(),
                            **({"trickle": True} if trickle else {}))
        if trickle:
            self._punches.trickle(request["token"], session, candidates)
        peer_hint = await looked_up
        punch = await waiting
        if self.trust is not None and restarted is None:
            self.trust.check(session.peer, punch.get("fingerprint"), session.attempts)
        connection = await session.start(punch, peer_hint)
        if restarted is not None:  # an ICE restart of a running session: same peer key, new path
            if punch.get("fingerprint") != restarted.peer_fingerprint:
                connection.close()
                raise ConnectError(f"{session.peer} restarted with another fingerprint", session.attempts)
            restarted.adopt(generation, connection)  # unless a later restart came meanwhile
            return
        made = await self._secure(connection, punch, is_client=False)
        if isinstance(made, Session) and isinstance(request.get("session"), str):
            self._name(made, request["session"])
        self._on_session(self._made(made))

    async def _secure(self, connection: Connection, punch: dict, is_client: bool) -> Session | Connection:
        if self.trust is None:
            return connection
        return await self.trust.secure(self.reactor, connection, punch, is_client)

    def _made(self, made: Session | Connection) -> Session | Connection:
        """Keep a session until it ends (a plaintext Connection until the client closes)."""
        self.sessions.append(made)
        if isinstance(made, Session):
            made.when_closed().addCallback(lambda _: made in self.sessions and self.sessions.remove(made))
        return made

    # -- what this network has -------------------------------------------------

    def _look_for_gateway(self) -> None:
        """Look for a UPnP/NAT-PMP/PCP gateway once, in the background, so that no session waits
        UPNP_SECONDS for one that is not there (remembered for NO_GATEWAY_SECONDS)."""
        if self.options.upnp is False or (self.options.upnp is None
                                          and ipaddress.ip_address(self.signaling.server[0]).is_loopback):
            return
        self._search = search = discover_gateway(self.reactor, timeout_seconds=UPNP_DISCOVERY_SECONDS)
        search.addTimeout(UPNP_SECONDS, self.reactor).addCallbacks(
            lambda gateway: gateway.close(), lambda f: f.check(CancelledError) or self._no_gateway())

    def _no_gateway(self) -> None:
        self._no_gateway_until = self.reactor.seconds() + NO_GATEWAY_SECONDS

    def _session(self, controlling: bool) -> _Session:
        """A connection attempt with this client's options, less what the network is known not to have."""
        options = self.options
        if self.reactor.seconds() < self._no_gateway_until:
            options = replace(options, upnp=False)
        session = _Session(self.reactor, self.signaling, options, controlling)
        session.spare = self._spare
        session.udp_silent = self.reactor.seconds() < self._udp_silent_until
        session.done.addBoth(self._learn, session)
        return session

    def _learn(self, result, session: _Session):
        """Remember what a gathering found missing: a gateway, or any answer to STUN over UDP."""
        if any(a.technique == "upnp" and a.outcome == "failed" for a in session.attempts):
            self._no_gateway()
        if any(a.technique == "srflx" and a.outcome == "failed" for a in session.attempts):
            self._udp_silent_until = self.reactor.seconds() + UDP_SILENT_SECONDS
        return result

    # -- buddies and presence --------------------------------------------------

    def buddies(self) -> Deferred:
        """Fires with the buddy list, every page of it: [{"user", "relation", "state"?}] (docs/PROTOCOL.md
        buddy-list)."""
        return self.signaling.buddy_list()

    def add_buddy(self, name: str) -> Deferred:
        """Ask ``name`` to be a buddy (accepting its request if it asked first); fires with the state."""
        return self.signaling.request("buddy-add", user=name).addCallback(lambda reply: reply["state"])

    def accept_buddy(self, name: str) -> Deferred:
        """Accept ``name``'s request; fires with "accepted"."""
        return self.signaling.request("buddy-accept", user=name).addCallback(lambda reply: reply["state"])

    def remove_buddy(self, name: str) -> Deferred:
        """End the buddy relation with ``name``; fires with "removed"."""
        return self.signaling.request("buddy-remove", user=name).addCallback(lambda reply: reply["state"])

    def on_presence(self, callback) -> None:
        """Call ``callback(frame)`` for each buddy's presence change ({"user", "state", ...})."""
        self.signaling.on("presence", callback)

    def close(self) -> Deferred:
        """Close every session and log out; fires when done."""
        if self._search is not None:
            self._search.cancel()  # a search still running stops being waited for; its thread ends alone
        closing = [maybeDeferred(s.close) for s in list(self.sessions)]  # each close takes itself out
        self.sessions = []
        if self._spare is not None:
            closing.append(self._spare.close())
        closing.append(maybeDeferred(self.signaling.close))
        return DeferredList(closing).addCallback(lambda _: None)



def _copy(d: Deferred) -> Deferred:
    """A second Deferred with ``d``'s result (``d`` keeps its own, for its other awaiter)."""
    copy: Deferred = Deferred()

    def both(result):
        copy.callback(result)
        return result

    d.addCallback(both)
    return copy
