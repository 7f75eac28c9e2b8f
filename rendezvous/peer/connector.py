"""``connect()`` and ``listen()``: two peers connected by the best path there is.

Both log in to a super node (``rendezvous.peer.signaling_client``), advertise
presence with a NAT hint (``rendezvous.peer.prediction.NatHint``), gather
candidates (``gathering``), exchange them with ICE credentials through the
node (docs/PROTOCOL.md, connect / connect-answer / punch), and at the
instant the node gives run ICE connectivity checks (``checks``, RFC 8445)
and TCP hole punching (``tcp_path``). Over the path that wins
(``connection``) runs an encrypted QUIC session whose peer proved the
fingerprint that came with its candidates (``trust``, ``session``); only
``plaintext=True`` hands over the bare ``Connection``. Here: the options,
the waiters for pushed ``punch`` frames, the helpers the long-lived
``Client`` (``client``) uses, and the one-shot ``connect()`` and
``listen()`` built on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from rendezvous.peer.checks import _Session
from rendezvous.peer.connection import Connection
from rendezvous.peer.relay_race import RELAY_TRANSPORTS
from rendezvous.peer.ice import CONSENT_TIMEOUT_SECONDS
from rendezvous.peer.prediction import SPRAY_PROBES, SPRAY_SOCKETS, NatHint
from rendezvous.peer.session import Session
from rendezvous.peer.trust import Trust, default_state_dir
from rendezvous.stun.addresses import Address

log = Logger()

DIRECT_TRANSPORTS = ("udp", "tcp")
TCP_PUNCH_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 30.0
RECHECK_SECONDS = 60.0


@dataclass
class _Options:
    include_loopback: bool = False
    ipv6_temporary: bool = False  # also offer temporary (RFC 8981 privacy) IPv6 host candidates
    direct_transports: tuple = DIRECT_TRANSPORTS
    relay_transports: tuple = RELAY_TRANSPORTS
    tls_verify: bool = True
    stun_server: Address | None = None
    spray_sockets: int = SPRAY_SOCKETS
    spray_probes: int = SPRAY_PROBES
    timeout_seconds: float = CONNECT_TIMEOUT_SECONDS
    keepalive_seconds: float | None = None  # None: from the binding lifetimes, else 15 s
    binding_lifetime_seconds: float | None = None  # measured (nat_check), told to the peer in presence
    relay_wait_seconds: float = 4.0
    consent_timeout_seconds: float = CONSENT_TIMEOUT_SECONDS
    tls: bool = False
    tcp_low_ttl: int | None = None
    tcp_punch_seconds: float = TCP_PUNCH_SECONDS
    upnp: bool | None = None  # None: when the node is not on loopback
    plaintext: bool = False  # hand over the bare datagram Connection, no session
    recheck_seconds: float = RECHECK_SECONDS  # a session on a relay tries for a direct path this often
    trickle: bool = True  # send candidates as they are found (RFC 8838) where the node passes them on
    state_dir: Path | None = None  # the identity and pins; None: the host cache's folder, else the default
    allow_new_fingerprint: bool = False  # accept a peer whose fingerprint differs from its pin (and re-pin)
    spare_relay: bool = True  # a logged-in Client keeps a relay allocation ready for its next session
    report_outcome: bool = False  # tell the node's field test how each connect() went (rendezvous.peer.outcomes)

    def __post_init__(self) -> None:
        self.direct_transports = tuple(self.direct_transports)
        self.relay_transports = tuple(self.relay_transports)
        if not set(self.direct_transports) <= set(DIRECT_TRANSPORTS):
            raise ValueError(f"direct_transports are among {DIRECT_TRANSPORTS}")
        if not set(self.relay_transports) <= set(RELAY_TRANSPORTS):
            raise ValueError(f"relay_transports are among {RELAY_TRANSPORTS}")
        if not self.consent_timeout_seconds > 0:
            raise ValueError("consent_timeout_seconds must be positive")
        if not self.recheck_seconds > 0:
            raise ValueError("recheck_seconds must be positive")

    @property
    def direct(self) -> bool:
        """Direct UDP candidates (host, srflx, predicted, birthday)."""
        return "udp" in self.direct_transports


class _Punches:
    """Per-token waiters for pushed ``punch`` and ``connect-declined`` frames, and the sessions that
    take a connect's trickled candidates (``connect-candidates``)."""

    def __init__(self, signaling) -> None:
        self.waiters: dict[str, Deferred] = {}
        self.early: dict[str, dict] = {}
        self.trickling: dict[str, _Session] = {}
        signaling.on("punch", self._frame)
        signaling.on("connect-declined", self._frame)
        signaling.on("connect-candidates", self._candidates)

    def trickle(self, token: str, session: _Session, signaled: list[dict]) -> None:
        """Send ``session``'s candidates found after ``signaled`` for ``token``, and give it the peer's."""
        self.trickling = {t: s for t, s in self.trickling.items() if not s.settled}
        self.trickling[token] = session
        session.trickle(lambda candidates, end: session.signaling.send(
            "connect-candidates", token=token, candidates=candidates, end=end), signaled)

    def _candidates(self, message: dict) -> None:
        session = self.trickling.get(message.get("token"))
        if session is not None and isinstance(message.get("candidates"), list):
            session.add_candidates(message["candidates"], message.get("end") is True)

    def _frame(self, message: dict) -> None:
        token = message.get("token")
        waiter = self.waiters.pop(token, None)
        if waiter is None:
            if len(self.early) < 16:
                self.early[token] = message
            return
        waiter.callback(message)

    def wait(self, token: str, reactor, seconds: float) -> Deferred:
        if token in self.early:
            return succeed(self.early.pop(token))
        d = Deferred(lambda _: self.waiters.pop(token, None))
        self.waiters[token] = d
        return d.addTimeout(seconds, reactor)


def _state_dir(options: _Options, host_cache) -> Path:
    """Where the identity, pins and the last NAT check live: the option, the host cache's folder, the default."""
    return options.state_dir or (Path(host_cache.path).parent if host_cache is not None else default_state_dir())


def _trust(options: _Options, user: str, host_cache) -> Trust | None:
    """The user's identity and pins, from the state directory (None in plaintext mode)."""
    if options.plaintext:
        return None
    return Trust.load(_state_dir(options, host_cache), user, options.allow_new_fingerprint)


def _credentials(session: _Session, trust: Trust | None) -> dict:
    """What goes to the peer with the candidates: ICE credentials and our fingerprint."""
    found = {"ufrag": session.agent.local_ufrag, "pwd": session.agent.local_pwd}
    if trust is not None:
        found["fingerprint"] = trust.identity.fingerprint
    return found


def _presence(signaling, hint: NatHint) -> None:
    """Advertise presence with the NAT hint (a failure only costs the peer the hint)."""
    maybeDeferred(signaling.set_presence, "online", nat_type=hint.to_presence()).addErrback(
        lambda f: log.info("presence not set: {error}", error=f.getErrorMessage()))


async def _peer_hint(signaling, peer: str) -> NatHint:
    try:
        found = await signaling.request("lookup", user=peer)
    except Exception:  # not a buddy, offline, an old node: no hint
        return NatHint(None)
    return NatHint.from_presence(found.get("nat_type"))


def connect(reactor, user: str, password: str, peer: str, servers=None, host_cache=None, *,
            tls: bool = False, tls_verify: bool = True, **options) -> Deferred:
    """Log in as ``user`` and connect to the buddy ``peer``; fires with a Session.

    ``servers`` are (host, port) super nodes tried after the ``host_cache``
    (a rendezvous.peer.host_cache.HostCache); ``tls`` logs in over TLS (and
    ``tls_verify=False`` accepts a self-signed node). Options:
    ``direct_transports`` (default ("udp", "tcp"): direct UDP candidates and
    TCP hole punching; () for relay only), ``relay_transports`` (default
    ("udp", "tcp", "tls"); () for no relay), ``tcp_low_ttl`` (the TTL of
    the first punching SYN; default None, a full TTL), ``tcp_punch_seconds``,
    ``upnp`` (map the UDP port on the LAN's gateway: True, False, or None,
    the default: unless the node is on loopback),
    ``include_loopback``, ``ipv6_temporary`` (also offer temporary IPv6
    host candidates), ``stun_server``, ``timeout_seconds``,
    ``keepalive_seconds`` (default: half the shorter of the two sides'
    measured binding lifetimes, else 15 s), ``binding_lifetime_seconds``
    (this side's, e.g. nat_check's ``binding_lifetime_seconds``; sent to the
    peer in presence), ``relay_wait_seconds``, ``consent_timeout_seconds``
    (RFC 7675: how long the peer may leave consent checks unanswered
    before ``when_lost`` fires; default 30), ``spray_sockets``,
    ``spray_probes``, ``state_dir`` (where ``USER.identity.pem``, made on
    first use, and ``USER.pins.json`` live; default: the host cache's
    folder, else ``~/.local/state/txrendezvous``), ``allow_new_fingerprint``
    (accept and re-pin a peer whose fingerprint changed), ``trickle``
    (default True: send candidates as they are found, RFC 8838, where the
    node passes them on), ``plaintext``
    (fire with the bare datagram Connection instead of a Session),
    ``report_outcome`` (default False: tell the node's field test what was
    tried and which path won, once the checks are over; no address is sent); an
    unknown one raises TypeError, a bad value ValueError. Fails with
    ConnectError (its ``attempts`` say what was tried), FingerprintChanged,
    SessionError (the peer did not prove its fingerprint),
    SignalingRequestError (e.g. the peer is offline or not a buddy) or a
    login error.
    """
    from rendezvous.peer.client import Client

    async def run() -> Session | Connection:
        client = await Client.login(reactor, user, password, servers, host_cache, tls=tls, tls_verify=tls_verify,
                                    **options)
        try:
            made = await client.connect(peer)
        except BaseException:
            client.close()
            raise
        if options.get("plaintext"):
            made.signaling = client  # logged out with the connection
        else:
            made.when_closed().addCallback(lambda _: client.close())  # logged out with the session
        return made

    _Options(tls=tls, tls_verify=tls_verify, **options)  # bad options raise here, before any login
    return Deferred.fromCoroutine(run())


def listen(reactor, user: str, password: str, on_connection, servers=None, host_cache=None, *,
           tls: bool = False, tls_verify: bool = True, accept=lambda peer: True, **options) -> Deferred:
    """Log in as ``user`` and answer connect-requests; fires with the Client once online.

    ``on_connection(session)`` is called for each peer that connects (with
    a Connection when ``plaintext=True``) and ``accept(peer)`` decides who
    may (default: every buddy). Options as in ``connect``. Fails with a
    login error.
    """
    from rendezvous.peer.client import Client

    async def run():
        client = await Client.login(reactor, user, password, servers, host_cache, tls=tls, tls_verify=tls_verify,
                                    **options)
        return await client.listen(on_connection, accept)

    _Options(tls=tls, tls_verify=tls_verify, **options)
    return Deferred.fromCoroutine(run())


