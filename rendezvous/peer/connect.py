"""``connect()`` and ``listen()``: two peers connected by the best path there is.

Both log in to a super node (``rendezvous.peer.signaling_client``), advertise
presence with a NAT hint (``rendezvous.peer.prediction.NatHint``), gather
candidates — host, UPnP-mapped (``upnp_helper``: PCP, NAT-PMP or UPnP IGD
maps the main socket's port, removed on close), server-reflexive (STUN to
the node from the same socket),
predicted (sequential allocators), relayed (TURN on the node over UDP, then
TCP, then TLS, the last on the port signaling reached, which may be 443) —
exchange them with ICE credentials through the node (docs/PROTOCOL.md,
connect / connect-answer / punch), and at the instant the node gives run
ICE connectivity checks (``rendezvous.peer.ice``, RFC 8445), with a birthday
spray when a random-mapping NAT faces an endpoint-independent one. The
connecting side is controlling and nominates: a direct pair as soon as it
is the best valid one, a relayed pair only after every direct try ended.

TCP hole punching (``rendezvous.peer.tcp_punch``) runs from the same instant
(a simultaneous open needs an instant both sides share, and the node
gives one), from a TCP port whose mapping each side learned from the node
and advertised as ``protocol: "tcp"`` candidates. Its connection is used
only when no direct UDP pair wins: the controlling side selects it once
direct UDP has failed (or ``relay_wait_seconds`` passed without it), and
holds the relayed pair back while the punch is under way. When direct UDP
cannot work at all (one side learned its public address over TCP but none
over UDP, so its NAT lets no UDP out, and the two are not behind one
public address), nothing waits for it: the stream, else the relay, is
taken as soon as it works. On the stream,
each datagram is a frame: a 2-byte big-endian length, then the bytes
(docs/EMBEDDING.md). The controlled side's first frame, 0xD8, proves it
knows the controlling side's ICE password; the controlling side's 0xD9
frame does the same and selects the stream.

Application datagrams carry one leading byte, 0xD7 (a QUIC-range first
byte, RFC 9443: never STUN), so checks, keepalives (Binding indications,
RFC 8445 §11) and data share a socket.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import socket
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from relay import client as turn_client
from upnp_helper import LeaseKeeper, discover_gateway
from rendezvous.peer.ice import CONSENT_INTERVAL_SECONDS, CONSENT_TIMEOUT_SECONDS, Agent, Send, random_credentials
from rendezvous.peer.prediction import (SPRAY_PROBES, SPRAY_SOCKETS, BirthdaySpray, NatHint, hint_from_probes,
                         keepalive_seconds, predicted_ports, spray_role)
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.integrity import short_term_key
from rendezvous.peer.stun_client import StunClientProtocol, TransactionTimeout
from rendezvous.peer.tcp_binding import reuse_port
from rendezvous.peer.tcp_punch import punch_tcp, tcp_mapped_address

log = Logger()

DATA_MARK = b"\xd7"
HELLO_MARK = b"\xd8"    # on a punched TCP stream: the controlled side proves itself
SELECT_MARK = b"\xd9"   # ... and the controlling side selects the stream
MAX_DATAGRAM_BYTES = 65506  # a UDP payload less the mark; also fits a stream frame
DIRECT_TRANSPORTS = ("udp", "tcp")
TCP_PUNCH_SECONDS = 5.0
UPNP_DISCOVERY_SECONDS = 0.5   # per method (PCP / NAT-PMP, then UPnP IGD): a LAN gateway answers in ms
UPNP_SECONDS = 1.5             # discovery and mapping together, at most
UPNP_LEASE_SECONDS = 3600      # renewed at half-life while the connection lasts
CONNECT_TIMEOUT_SECONDS = 30.0
GATHER_RTO_SECONDS = 0.2
RELAY_TRANSPORTS = ("udp", "tcp", "tls")
RELAY_TIMEOUT_SECONDS = 3.0
ALLOCATION_SAMPLES = 3
CLOSE_TIMEOUT_SECONDS = 4.0


class ConnectError(Exception):
    """connect() could not reach the peer; ``attempts`` says what was tried."""

    def __init__(self, reason: str, attempts: list | None = None) -> None:
        super().__init__(reason)
        self.attempts = attempts or []


@dataclass(frozen=True)
class Attempt:
    """One technique tried: its name, how long it took and how it ended."""

    technique: str
    duration_ms: float
    outcome: str  # "succeeded", "failed", "selected", "not-selected"
    detail: str = ""


class Connection:
    """A datagram path to a peer.

    Known data are attributes: ``peer`` (user name), ``path`` ("udp-direct",
    "udp-predicted", "udp-birthday", "turn-udp", "turn-tcp", "turn-tls"),
    ``local`` and ``remote`` (the selected pair's addresses), ``attempts``
    (list of Attempt), ``keepalive_seconds`` (the interval of Binding
    indications). ``send(bytes)`` sends one datagram; ``set_receiver(f)``
    has ``f(bytes)`` called for each one that arrives; ``close()`` frees the
    sockets, the UPnP mapping and the relay allocation, and returns a
    Deferred that fires when done. ``when_lost()`` fires with a reason when
    the path is lost: the connection it rides ends (the punched TCP stream, or
    the TCP/TLS connection to the relay), or, on an ICE path (direct UDP or
    through the relay), the peer stops answering the consent checks sent
    every 4-6 s for ``consent_timeout_seconds`` (RFC 7675; default 30). The
    punched stream gets TCP keepalives that end it after as long a silence.
    Once lost, ``send`` drops what it is given.
    """

    def __init__(self, peer: str, path: str, local: Address, remote: Address, attempts: list[Attempt],
                 session: _Session, keepalive_seconds: float) -> None:
        self.peer, self.path, self.local, self.remote, self.attempts = peer, path, local, remote, attempts
        self.keepalive_seconds = keepalive_seconds
        self._session = session
        self._receiver = None
        self._early: list[bytes] = []
        self._closed: Deferred | None = None
        self._lost: str | None = None
        self._lost_waiters: list[Deferred] = []
        self.signaling = None  # the login connect() made, closed with the connection
        self._keepalive = LoopingCall(session.keepalive)
        self._keepalive.clock = session.reactor
        self._keepalive.start(keepalive_seconds, now=False)
        self._consent = None  # the next consent check (ICE paths only: the punched stream has none)
        if session.agent.selected is not None:
            self._consent = session.reactor.callLater(self._consent_interval(), self._check_consent)

    def __repr__(self) -> str:
        return f"<Connection {self.peer} {self.path} {self.local} -> {self.remote}>"

    def send(self, data: bytes) -> None:
        """Send one datagram to the peer (at most MAX_DATAGRAM_BYTES; small ones travel best).

        Raises ValueError for a larger one."""
        if len(data) > MAX_DATAGRAM_BYTES:
            raise ValueError(f"a datagram is at most {MAX_DATAGRAM_BYTES} bytes, not {len(data)}")
        if self._lost is None:
            self._session.write_selected(DATA_MARK + bytes(data))

    def set_receiver(self, receiver) -> None:
        """Call ``receiver(data)`` for every datagram from the peer (queued ones first)."""
        self._receiver = receiver
        early, self._early = self._early, []
        for data in early:
            receiver(data)

    def _deliver(self, data: bytes) -> None:
        if self._receiver is None:
            if len(self._early) < 64:
                self._early.append(data)
        else:
            self._receiver(data)

    def when_lost(self) -> Deferred:
        """A Deferred firing with the reason (str) if the path's connection ends before ``close()``."""
        if self._lost is not None:
            return succeed(self._lost)
        waiter: Deferred = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def _consent_interval(self) -> float:
        """RFC 7675 §5.1: 5 s (at most a sixth of the timeout), randomized to 0.8-1.2 times."""
        timeout = self._session.agent.consent_timeout_seconds
        return min(CONSENT_INTERVAL_SECONDS, timeout / 6) * random.uniform(0.8, 1.2)

    def _check_consent(self) -> None:
        self._consent = None
        session = self._session
        now = session.reactor.seconds()
        if session.agent.consent_expired(now):
            self._path_lost(f"consent expired: no answer to a consent check for "
                            f"{session.agent.consent_timeout_seconds:g} s (RFC 7675)")
            return
        send = session.agent.consent_check(now)
        if send is not None:
            session._write([send])
        self._consent = session.reactor.callLater(self._consent_interval(), self._check_consent)

    def _stop_timers(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        consent, self._consent = self._consent, None
        if consent is not None and consent.active():
            consent.cancel()

    def _path_lost(self, reason: str) -> None:
        if self._closed is not None or self._lost is not None:
            return
        self._stop_timers()
        self._lost = reason
        log.info("the {path} path to {peer} is lost: {reason}", path=self.path, peer=self.peer, reason=reason)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(reason)

    def close(self) -> Deferred:
        """Close the sockets and release the relay allocation; fires when done."""
        if self._closed is None:
            self._stop_timers()
            self._closed = self._session.close()
            if self.signaling is not None:
                maybeDeferred(self.signaling.close).addErrback(lambda _: None)
        return self._closed


class _Socket(StunClientProtocol):
    """One local UDP socket (an ICE base): gathering requests, checks and data."""

    def __init__(self, reactor, name: str, session: _Session) -> None:
        super().__init__(reactor, rto_seconds=GATHER_RTO_SECONDS, rc=3, rm=4)
        self.name = name
        self.session = session

    def datagramReceived(self, data: bytes, addr) -> None:
        if len(data) >= 20 and data[8:20] in self._pending:
            super().datagramReceived(data, addr)
        else:
            self.session.packet(self.name, tuple(addr[:2]), data)


@dataclass
class _Options:
    include_loopback: bool = False
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

    def __post_init__(self) -> None:
        self.direct_transports = tuple(self.direct_transports)
        self.relay_transports = tuple(self.relay_transports)
        if not set(self.direct_transports) <= set(DIRECT_TRANSPORTS):
            raise ValueError(f"direct_transports are among {DIRECT_TRANSPORTS}")
        if not set(self.relay_transports) <= set(RELAY_TRANSPORTS):
            raise ValueError(f"relay_transports are among {RELAY_TRANSPORTS}")
        if not self.consent_timeout_seconds > 0:
            raise ValueError("consent_timeout_seconds must be positive")

    @property
    def direct(self) -> bool:
        """Direct UDP candidates (host, srflx, predicted, birthday)."""
        return "udp" in self.direct_transports


@dataclass
class _Session:
    """One connection attempt: sockets, a TURN allocation, an ICE agent, a spray."""

    reactor: object
    signaling: object
    options: _Options
    controlling: bool
    attempts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        ufrag, pwd = random_credentials()
        self.agent = Agent(self.controlling, ufrag, pwd, relay_wait_seconds=self.options.relay_wait_seconds,
                           consent_timeout_seconds=self.options.consent_timeout_seconds)
        self.sockets: dict[str, tuple[_Socket, object]] = {}
        self.turn = None
        self.turn_transport: str | None = None
        self.hint = NatHint(None, lifetime_seconds=self.options.binding_lifetime_seconds)
        self.peer_hint = NatHint(None)
        self.srflx: Address | None = None
        self.spray: BirthdaySpray | None = None
        self.connection: Connection | None = None
        self.done: Deferred = Deferred()
        self._timer = None
        self._deadline = None
        self._started = None
        self._spray_role = None
        self.tcp_port: int | None = None
        self.tcp_mapped: Address | None = None
        self.tcp_candidates: list[dict] = []
        self.tcp_punch: Deferred | None = None   # the punch under way
        self.tcp_stream: _Stream | None = None   # its connection, once the peer proved itself
        self.tcp_technique = ""
        self.upnp_address: Address | None = None
        self._upnp_gateway = None
        self._upnp_keeper: LeaseKeeper | None = None
        self._tcp_placeholder: socket.socket | None = None
        self._tcp_started: float | None = None  # while the punch counts as a technique tried
        self._tcp_wake: float | None = None
        self._udp_hopeless = False  # no direct UDP pair can work (set when the checks begin)

    # -- gathering ---------------------------------------------------------

    def _open(self, name: str) -> _Socket:
        protocol = _Socket(self.reactor, name, self)
        port = self.reactor.listenUDP(0, protocol, interface="0.0.0.0")
        self.sockets[name] = (protocol, port)
        return protocol

    async def gather(self) -> list[dict]:
        """Open the main socket, learn srflx and the NAT hint, allocate a relay; the candidates."""
        main = self._open("main")
        port = main.transport.getHost().port
        stun = self.options.stun_server or _stun_server(self.signaling)
        hosts = _host_addresses(stun[0], self.options.include_loopback)
        self.agent.add_base("main", "host", (hosts[0] if hosts else "0.0.0.0", port), 65535,
                            pair=self.options.direct)
        if self.options.direct:
            upnp = None
            if self.options.upnp or (self.options.upnp is None and not ipaddress.ip_address(stun[0]).is_loopback):
                upnp = Deferred.fromCoroutine(self._upnp(port))
            for ip in hosts:
                self.agent.advertise(self.agent.candidate("host", (ip, port), "main"))
            await self._reflexive(main, stun)
            if upnp is not None:
                await upnp
        if "tcp" in self.options.direct_transports:
            await self._tcp(hosts)
        if self.options.relay_transports:
            await self._relay()
        udp = [c.to_wire() for c in self.agent.local_candidates]
        return (udp[:32 - len(self.tcp_candidates)] + self.tcp_candidates)[:32]

    async def _tcp(self, hosts: list[str]) -> None:
        """A TCP port held for the punch (SO_REUSEPORT), its host and mapped candidates."""
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reuse_port(placeholder)
        placeholder.bind(("0.0.0.0", 0))
        self._tcp_placeholder, self.tcp_port = placeholder, placeholder.getsockname()[1]
        self.tcp_candidates = [{"type": "host", "ip": ip, "port": self.tcp_port, "protocol": "tcp"} for ip in hosts]
        started = self.reactor.seconds()
        try:
            self.tcp_mapped = await tcp_mapped_address(self.reactor, self.tcp_port, tuple(self.signaling.server),
                                                       tls=self.options.tls, timeout_seconds=RELAY_TIMEOUT_SECONDS)
        except Exception as e:  # no TCP to the node from here: host candidates only
            self._attempt("tcp-srflx", started, "failed", str(e))
            return
        if self.tcp_mapped != (hosts[0] if hosts else None, self.tcp_port):
            self.tcp_candidates.insert(0, {"type": "srflx", "ip": self.tcp_mapped[0], "port": self.tcp_mapped[1],
                                           "protocol": "tcp"})

    async def _reflexive(self, main: _Socket, stun: Address) -> None:
        started = self.reactor.seconds()
        try:
            response, _ = await main.request(Message(Method.BINDING, Class.REQUEST), stun)
        except TransactionTimeout:
            self._attempt("srflx", started, "failed", "no answer from the STUN server")
            return
        mapped = response.address(Attr.XOR_MAPPED_ADDRESS)
        other = response.address(Attr.OTHER_ADDRESS)
        if mapped is None:
            return
        self.srflx = mapped
        toward_other = None
        if other is not None:
            try:
                toward_other = (await main.request(Message(Method.BINDING, Class.REQUEST), other))[0].address(
                    Attr.XOR_MAPPED_ADDRESS)
            except TransactionTimeout:
                pass
        samples = []
        if toward_other is not None and toward_other != mapped:
            samples = await self._samples(stun)
        self.hint = replace(hint_from_probes(mapped, toward_other, samples),
                            lifetime_seconds=self.options.binding_lifetime_seconds)
        local = main.transport.getHost().port
        if mapped != (self.agent.bases["main"].address[0], local):
            self.agent.advertise(self.agent.candidate("srflx", mapped, "main"))
        if self.hint.allocation == "sequential" and self.hint.delta and not self.hint.easy:
            for predicted in predicted_ports(mapped[1], self.hint.delta):
                self.agent.advertise(self.agent.candidate("predicted", (mapped[0], predicted), "main"))
        self._attempt("srflx", started, "succeeded", f"{mapped[0]}:{mapped[1]} ({self.hint.to_presence()})")

    async def _upnp(self, port: int) -> None:
        """Map the main socket's port on the LAN's gateway; advertise it (in place of an equal srflx).

        Bounded by UPNP_SECONDS without cancelling: miniupnpc blocks in a
        thread that cannot be interrupted (stopping its pool would wait for
        it), so a late gateway or mapping is let go when it comes."""
        started = self.reactor.seconds()
        gateway = mapping = None
        try:
            gateway = await self._bounded(discover_gateway(self.reactor, timeout_seconds=UPNP_DISCOVERY_SECONDS),
                                          started, lambda late: late.close())
            mapping = await self._bounded(gateway.add_mapping(port, "UDP", port, lease_seconds=UPNP_LEASE_SECONDS),
                                          started, lambda late: self._release(gateway, late))
            external = await self._bounded(gateway.external_address(), started, lambda late: None)
        except Exception as e:  # no gateway, a refusal, a timeout: no UPnP candidate
            self._attempt("upnp", started, "failed", str(e) or type(e).__name__)
            if gateway is not None:
                self._release(gateway, mapping)
            return
        self._upnp_gateway = gateway
        self.upnp_address = (external, mapping.external_port)
        self._upnp_keeper = LeaseKeeper(self.reactor, gateway, mapping)
        self._upnp_keeper.start()
        self.agent.local_candidates = [c for c in self.agent.local_candidates if c.address != self.upnp_address]
        self.agent.advertise(self.agent.candidate("upnp", self.upnp_address, "main"))
        self._attempt("upnp", started, "succeeded", f"{external}:{mapping.external_port}")

    def _bounded(self, d: Deferred, started: float, late) -> Deferred:
        """d's result, or TimeoutError once UPNP_SECONDS have passed since ``started``;
        a success that comes later goes to ``late``."""
        out = Deferred()
        left = max(0.0, UPNP_SECONDS - (self.reactor.seconds() - started))
        timer = self.reactor.callLater(left, lambda: out.called or out.errback(
            TimeoutError(f"no answer within {UPNP_SECONDS} s")))

        def settle(result):
            if out.called:
                if not isinstance(result, Failure):
                    late(result)
            else:
                timer.cancel()
                out.callback(result)  # a Failure goes to the errbacks

        d.addBoth(settle)
        return out

    def _release(self, gateway, mapping) -> Deferred:
        """Remove a mapping (when there is one; bounded) and close the gateway."""
        if mapping is None:
            gateway.close()
            return succeed(None)
        d = gateway.delete_mapping(mapping.external_port, "UDP").addTimeout(CLOSE_TIMEOUT_SECONDS, self.reactor)
        d.addErrback(lambda f: log.info("UPnP unmapping failed: {error}", error=f.getErrorMessage()))
        return d.addBoth(lambda _: gateway.close())

    def _unmap(self) -> Deferred:
        """Remove the UPnP mapping and let the gateway go."""
        gateway, self._upnp_gateway = self._upnp_gateway, None
        keeper, self._upnp_keeper = self._upnp_keeper, None
        if gateway is None:
            return succeed(None)
        keeper.stop()
        return self._release(gateway, keeper.mapping)

    async def _samples(self, stun: Address) -> list[tuple[int, int]]:
        """(local, mapped) ports of a few fresh sockets, for the allocation pattern."""
        probes = [self._open(f"sample-{i}") for i in range(ALLOCATION_SAMPLES)]
        results = await DeferredList([p.request(Message(Method.BINDING, Class.REQUEST), stun) for p in probes],
                                     consumeErrors=True)
        samples = []
        for probe, (ok, value) in zip(probes, results):
            if ok and value[0].address(Attr.XOR_MAPPED_ADDRESS):
                samples.append((probe.transport.getHost().port, value[0].address(Attr.XOR_MAPPED_ADDRESS)[1]))
            self._close_socket(probe.name)
        return samples

    async def _relay(self) -> None:
        """TURN on the node: UDP, then TCP, then TLS; the first allocation that works."""
        turn = self.signaling.welcome.get("turn") if isinstance(self.signaling.welcome, dict) else None
        if not turn:
            return
        for transport, server in _relay_targets(self.signaling, turn, self.options.relay_transports,
                                                        self.options.tls):
            started = self.reactor.seconds()
            try:
                client = await turn_client.connect(
                    self.reactor, server, transport, username=turn["username"], password=turn["password"],
                    realm=turn.get("realm"), tls_verify=self.options.tls_verify,
                    connect_timeout_seconds=RELAY_TIMEOUT_SECONDS, rto_seconds=GATHER_RTO_SECONDS, rc=3, rm=4,
                ).addTimeout(RELAY_TIMEOUT_SECONDS, self.reactor)
                relayed = await client.allocate().addTimeout(RELAY_TIMEOUT_SECONDS + 1, self.reactor)
            except Exception as e:  # every failure means "try the next transport"
                self._attempt(f"turn-{transport}", started, "failed", f"allocation: {e}")
                continue
            self.turn, self.turn_transport = client, transport
            client.on_data = lambda peer, data: self.packet("relay", tuple(peer), data)
            self.agent.add_base("relay", "relay", relayed, {"udp": 3, "tcp": 2, "tls": 1}[transport])
            self.agent.advertise(self.agent.candidate("relay", relayed, "relay"))
            return

    # -- checks ------------------------------------------------------------

    def start(self, punch: dict, peer_hint: NatHint) -> Deferred:
        """Take the peer's candidates and credentials; begin at the node's start instant."""
        if not punch.get("ufrag") or not punch.get("pwd"):
            self.done.errback(ConnectError("the peer sent no ICE credentials", self.attempts))
            return self.done
        delay = max(0.0, float(punch.get("start_in_ms") or 0) / 1000)
        self.reactor.callLater(delay, self._begin, punch, peer_hint)
        self._deadline = self.reactor.callLater(delay + self.options.timeout_seconds, self._give_up)
        return self.done

    def _begin(self, punch: dict, peer_hint: NatHint) -> None:
        now = self.reactor.seconds()
        self._started = self.reactor.seconds()
        self.peer_hint = peer_hint
        candidates = [c for c in punch.get("candidates", []) if isinstance(c, dict)]
        self.agent.set_remote(punch["ufrag"], punch["pwd"], candidates, now)
        if self.turn is not None:
            for ip in {c["ip"] for c in candidates if c.get("protocol", "udp") == "udp"}:
                self.turn.create_permission([(ip, 0)]).addErrback(lambda _: None)
        self._spray_role = spray_role(self.hint, peer_hint) if self.options.direct else None
        if self.upnp_address is not None or any(c.get("type") == "upnp" for c in candidates):
            self._spray_role = None  # the random side reaches the UPnP mapping without guessing
        srflx = next((c for c in candidates if c.get("type") == "srflx"), None)
        if self._spray_role and srflx is not None:
            peer = (srflx["ip"], srflx["port"])
            if self._spray_role == "hard":
                for i in range(self.options.spray_sockets):
                    sock = self._open(f"spray-{i}")
                    host = sock.transport.getHost()
                    self.agent.add_base(sock.name, "host", (host.host, host.port), 0, pair=False)
            self.spray = BirthdaySpray(self._spray_role, peer, now, sockets=self.options.spray_sockets,
                                       probes=self.options.spray_probes)
        mine = [c.to_wire() for c in self.agent.local_candidates] + self.tcp_candidates
        self._udp_hopeless = _direct_udp_hopeless(mine, candidates)
        if self._udp_hopeless:
            self.agent.relay_wait_seconds = 0.0  # a relayed pair need not wait for direct ones
        target = _tcp_target(self.tcp_mapped, [c for c in candidates if c.get("protocol") == "tcp"])
        if self.tcp_port is not None and target is not None:
            self._start_tcp(target, now)
        self._tick()

    def _start_tcp(self, target: Address, now: float) -> None:
        """Punch toward the peer's one TCP candidate both sides agree on; hold the relay meanwhile."""
        self.agent.hold_relayed = True
        self._tcp_started = self.reactor.seconds()
        self.tcp_punch = punch_tcp(self.reactor, self.tcp_port, [target], now, self.options.tcp_punch_seconds,
                                   Factory.forProtocol(lambda: _Stream(self)), low_ttl=self.options.tcp_low_ttl)
        self.tcp_punch.addCallbacks(self._tcp_connected, self._tcp_failed)

    def _tcp_connected(self, result) -> None:
        stream, _, technique = result
        self.tcp_technique = technique
        if self.done.called:
            stream.transport.abortConnection()
        elif not self.agent.controlling:
            stream.write_frame(HELLO_MARK + self._proof(HELLO_MARK, self.agent.local_ufrag, self.agent.remote_ufrag))

    def _tcp_failed(self, failure) -> None:
        self.tcp_punch = None
        if failure.check(CancelledError) or self.done.called:
            return
        self._attempt("tcp-punch", self._tcp_started, "failed", failure.getErrorMessage())
        self._tcp_started = None
        self.agent.hold_relayed = False
        self._check_done()
        self._schedule()

    def _proof(self, mark: bytes, sender: str, receiver: str) -> bytes:
        """HMAC of the ufrags keyed with the receiver's ICE password (which only the two peers know)."""
        key = short_term_key(self.agent.remote_pwd) if sender == self.agent.local_ufrag else self.agent._local_key
        return hmac.new(key, mark + f"{sender}:{receiver}".encode(), hashlib.sha256).digest()[:16]

    def stream_frame(self, stream: _Stream, frame: bytes) -> None:
        """A frame on the punched stream: the peer's proof, or data once the stream is selected."""
        mark = frame[:1]
        if mark == DATA_MARK:
            if self.connection is not None and self.selected_base == "tcp" and stream is self.tcp_stream:
                self.connection._deliver(frame[1:])
        elif mark in (HELLO_MARK, SELECT_MARK) and not self.done.called:
            expected_mark = HELLO_MARK if self.agent.controlling else SELECT_MARK
            proof = self._proof(mark, self.agent.remote_ufrag or "", self.agent.local_ufrag)
            if mark != expected_mark or not hmac.compare_digest(frame[1:], proof):
                stream.transport.abortConnection()
                return
            self.tcp_stream = stream
            if mark == SELECT_MARK:
                self._complete_tcp()
            else:
                self._tick()

    def _select_tcp_when_due(self, now: float) -> float | None:
        """Controlling: select the proven stream once direct UDP cannot win; else when to look again."""
        if (self.done.called or not self.agent.controlling or self.tcp_stream is None
                or self.agent.selected is not None):
            return None
        if any(not p.relayed for p in self.agent.valid()):
            return None  # direct UDP works: the agent nominates it
        udp_pending = not self._udp_hopeless and (
            any(not p.relayed and self.agent._pending(p) for p in self.agent.pairs.values())
            or (self.spray is not None and self.spray.deadline is not None))
        wake = (self.agent.started_at or now) + self.options.relay_wait_seconds
        if udp_pending and now < wake:
            return wake
        self.tcp_stream.write_frame(SELECT_MARK + self._proof(SELECT_MARK, self.agent.local_ufrag,
                                                              self.agent.remote_ufrag))
        self._complete_tcp()
        return None

    def _complete_tcp(self) -> None:
        stream = self.tcp_stream
        peer = stream.transport.getPeer()
        host = stream.transport.getHost()
        self._complete("tcp-punch", "tcp", self.tcp_mapped or (host.host, host.port), (peer.host, peer.port),
                       self.tcp_technique)

    def stream_lost(self, stream: _Stream) -> None:
        """The punched stream closed: before selection the relay may win after all; after, the path is lost."""
        if stream is self.tcp_stream and self.connection is not None:
            self.connection._path_lost("the TCP connection closed")
        elif stream is self.tcp_stream and not self.done.called:
            self.tcp_stream = self.tcp_punch = None
            self._tcp_started = None
            self.agent.hold_relayed = False
            self._check_done()
            self._schedule()

    def packet(self, base: str, source: Address, data: bytes) -> None:
        """A datagram on a base: application data of the selected pair, or STUN for the agent."""
        if data[:1] == DATA_MARK:
            selected = self.agent.selected
            if self.connection is not None and selected.local.base == base and selected.remote.address == source:
                self.connection._deliver(data[1:])
            return
        if not data or data[0] > 3:
            return
        self._write(self.agent.receive(data, base, source, self.reactor.seconds()))
        if self._started is not None:
            self._check_done()
            self._schedule()

    def _tick(self) -> None:
        if self._timer is not None and self._timer.active():  # called early, not by the timer
            self._timer.cancel()
        self._timer = None
        if self.done.called:
            return
        now = self.reactor.seconds()
        sends = self.agent.expire(now)
        if self.spray is not None and self.agent.selected is None:
            kind = "srflx" if self._spray_role == "hard" else "predicted"
            for index, destination in self.spray.due(now):
                base = f"spray-{index}" if self._spray_role == "hard" else "main"
                probe = self.agent.probe(base, destination, kind, now)
                if probe is not None:
                    sends.append(probe)
        self._write(sends)
        self._tcp_wake = self._select_tcp_when_due(now)
        self._check_done()
        self._schedule()

    def _schedule(self) -> None:
        if self.done.called:
            return
        times = [t for t in (self.agent.deadline, self.spray.deadline if self.spray else None,
                             self._tcp_wake) if t is not None]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if times:
            self._timer = self.reactor.callLater(max(0.0, min(times) - self.reactor.seconds()), self._tick)

    def _write(self, sends: list[Send]) -> None:
        for send in sends:
            self._write_one(send.base, send.destination, send.data)

    def _write_one(self, base: str, destination: Address, data: bytes) -> None:
        try:
            if base == "relay":
                if self.turn is not None:
                    self.turn.send(destination, data)
            elif base == "tcp":
                if self.tcp_stream is not None:
                    self.tcp_stream.write_frame(data)
            elif base in self.sockets:
                self.sockets[base][0].transport.write(data, destination)
        except OSError as e:  # unreachable networks, full buffers: the check just fails
            log.debug("send from {base} to {destination} failed: {error}", base=base, destination=destination,
                      error=e)

    def _check_done(self) -> None:
        if self.done.called:
            return
        selected = self.agent.selected
        if selected is not None:
            self._finish(selected)
        elif (self.agent.failed and (self.spray is None or self.spray.deadline is None)
              and self.tcp_punch is None and self.tcp_stream is None):
            self._fail("every candidate pair failed")

    def _finish(self, pair) -> None:
        self._complete(self._path(pair), pair.local.base, pair.mapped or pair.local.address, pair.remote.address)

    def _complete(self, path: str, base: str, local: Address, remote: Address, detail: str = "") -> None:
        elapsed = self.reactor.seconds() - self._started
        techniques = self._techniques()
        for technique in techniques + ([path] if path not in techniques else []):
            outcome = "selected" if technique == path else "not-selected"
            self.attempts.append(Attempt(technique, round(elapsed * 1000, 1), outcome,
                                         detail if technique == path else ""))
        if self.spray is not None:
            self.spray.stop()
        for name in [n for n in self.sockets if n.startswith("spray-") and n != base]:
            self._close_socket(name)
        self._cancel_timers()
        if base != "relay" and self.turn is not None:
            self.turn.close()
            self.turn = None
        if base != "tcp":
            self._close_tcp()
        self.selected_base, self.selected_remote = base, remote
        interval = self.options.keepalive_seconds or keepalive_seconds([self.hint.lifetime_seconds,
                                                                        self.peer_hint.lifetime_seconds])
        self.connection = connection = Connection(self.peer, path, local, remote, self.attempts, self, interval)
        if base == "relay" and self.turn_transport in ("tcp", "tls"):
            self.turn.when_closed().addCallback(lambda _: connection._path_lost("the relay connection closed"))
        self.done.callback(self.connection)

    def _close_tcp(self) -> None:
        punch, self.tcp_punch = self.tcp_punch, None
        if punch is not None:
            punch.cancel()
        stream, self.tcp_stream = self.tcp_stream, None
        if stream is not None and stream.transport is not None:
            stream.transport.abortConnection()
        if self._tcp_placeholder is not None:
            self._tcp_placeholder.close()
            self._tcp_placeholder = None

    def _techniques(self) -> list[str]:
        names = []
        if self.options.direct:
            names.append("udp-direct")
            if self._spray_role:
                names.append("udp-birthday")
        if self._tcp_started is not None:
            names.append("tcp-punch")
        if self.turn_transport:
            names.append(f"turn-{self.turn_transport}")
        return names

    def _path(self, pair) -> str:
        if pair.local.base == "relay":
            return f"turn-{self.turn_transport}"
        if pair.remote.kind == "relay":
            return "turn-udp"
        if self.upnp_address is not None and pair.mapped == self.upnp_address:
            return "udp-upnp"  # the peer reached us through our mapping
        if pair.local.base.startswith("spray-") or (self._spray_role == "easy" and pair.remote.kind in
                                                    ("prflx", "predicted")):
            return "udp-birthday"
        if pair.remote.kind == "predicted":
            return "udp-predicted"
        if pair.remote.kind == "upnp":
            return "udp-upnp"
        return "udp-direct"

    def _fail(self, reason: str) -> None:
        elapsed = round((self.reactor.seconds() - (self._started or self.reactor.seconds())) * 1000, 1)
        for technique in self._techniques():
            self.attempts.append(Attempt(technique, elapsed, "failed"))
        self._cancel_timers()
        self.close()
        self.done.errback(ConnectError(f"{reason} (tried: {', '.join(self._techniques()) or 'nothing'})",
                                       self.attempts))

    def _give_up(self) -> None:
        if not self.done.called:
            self._fail(f"no path within {self.options.timeout_seconds} s")

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = None

    def _attempt(self, technique: str, started: float, outcome: str, detail: str = "") -> None:
        self.attempts.append(Attempt(technique, round((self.reactor.seconds() - started) * 1000, 1), outcome, detail))

    # -- after selection ---------------------------------------------------

    def write_selected(self, data: bytes) -> None:
        self._write_one(self.selected_base, self.selected_remote, data)

    def keepalive(self) -> None:
        self.write_selected(self.agent.indication())

    def _close_socket(self, name: str) -> None:
        entry = self.sockets.pop(name, None)
        if entry is not None:
            entry[1].stopListening()

    def close(self) -> Deferred:
        """Close every socket and the relay allocation."""
        self._cancel_timers()
        if self.spray is not None:
            self.spray.stop()
        for name in list(self.sockets):
            self._close_socket(name)
        self._close_tcp()
        closing = [self._unmap()]
        turn, self.turn = self.turn, None
        if turn is not None:
            closing.append(turn.close())  # bounded by the client; never fails
        return DeferredList(closing).addCallback(lambda _: None)


class _Stream(Int16StringReceiver):
    """A punched TCP connection carrying frames: a 2-byte big-endian length, then that many bytes."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def connectionMade(self) -> None:
        # The stream's consent: a peer that stops acknowledging ends it (and so the path).
        _keep_alive(self.transport.getHandle(), self.session.options.consent_timeout_seconds)

    def write_frame(self, data: bytes) -> None:
        if self.transport is not None:
            self.sendString(data)

    def stringReceived(self, frame: bytes) -> None:
        if frame:
            self.session.stream_frame(self, frame)

    def connectionLost(self, reason=None) -> None:
        self.session.stream_lost(self)


# -- helpers ----------------------------------------------------------------


def _tcp_target(mapped: Address | None, candidates: list[dict]) -> Address | None:
    """The one peer TCP candidate to punch toward, chosen alike on both sides (so both
    open the same connection): its srflx, or its first host one when both sides share
    a public address (one NAT) or it has no srflx."""
    srflx = next((c for c in candidates if c.get("type") == "srflx"), None)
    host = next((c for c in candidates if c.get("type") == "host"), None)
    chosen = srflx if srflx is not None and (mapped is None or mapped[0] != srflx["ip"]) else host or srflx
    return (chosen["ip"], int(chosen["port"])) if chosen is not None else None


def _keep_alive(sock: socket.socket, seconds: float) -> None:
    """End a TCP connection whose peer has gone silent after about ``seconds``: keepalive
    probes when idle (Linux: after seconds/3, then every seconds/6) and TCP_USER_TIMEOUT
    for data left unacknowledged; what the platform lacks is skipped."""
    idle = max(1, round(seconds / 3))
    interval = max(1, round(seconds / 6))
    count = max(1, round((seconds - idle) / interval))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count),
                            ("TCP_USER_TIMEOUT", int(seconds * 1000))):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as e:
        log.debug("no TCP keepalives on the punched stream: {error}", error=e)


def _udp_blocked(candidates: list[dict]) -> bool:
    """A side behind a NAT that lets no UDP out: it learned its public address over TCP
    (a TCP srflx candidate) but none over UDP (no UDP srflx, UPnP or predicted one)."""
    udp_public = any(c.get("protocol", "udp") == "udp" and c.get("type") in ("srflx", "upnp", "predicted")
                     for c in candidates)
    return not udp_public and any(c.get("protocol") == "tcp" and c.get("type") == "srflx" for c in candidates)


def _direct_udp_hopeless(mine: list[dict], theirs: list[dict]) -> bool:
    """No direct UDP pair can work: a side's UDP is blocked, and the two do not share a
    public address (behind one NAT their host candidates might still meet on the LAN)."""
    def public(candidates: list[dict]) -> set[str]:
        return {c.get("ip") for c in candidates if c.get("type") in ("srflx", "upnp")}

    return (_udp_blocked(mine) or _udp_blocked(theirs)) and not public(mine) & public(theirs)


def _host_addresses(toward: str, include_loopback: bool) -> list[str]:
    """This host's IPv4 address toward the node (by a connected UDP socket, nothing sent),
    then the others of ``hostname -I`` style; loopback only when asked."""
    found = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((toward, 9))
        found.append(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    result = []
    for ip in found:
        address = ipaddress.ip_address(ip)
        if (address.is_loopback and not include_loopback) or address.is_unspecified or ip in result:
            continue
        result.append(ip)
    return result


def _stun_server(signaling) -> Address:
    """The node's STUN UDP address: from its TURN URLs, else its signaling address."""
    host, port = signaling.server
    for url in (signaling.welcome.get("turn") or {}).get("urls") or signaling.welcome.get("relays") or []:
        scheme, target, transport = _parse_turn_url(url)
        if scheme == "turn" and transport == "udp":
            return target
    return host, port


def _parse_turn_url(url: str) -> tuple[str, Address, str]:
    """RFC 7065: turn:host:port?transport=udp -> ("turn", (host, port), "udp")."""
    scheme, _, rest = url.partition(":")
    parts = urlsplit("//" + rest)
    transport = parse_qs(parts.query).get("transport", ["udp"])[0]
    port = parts.port or (5349 if scheme == "turns" else 3478)
    return scheme, (parts.hostname, port), "tls" if scheme == "turns" else transport


def _relay_targets(signaling, turn: dict, transports: tuple, tls: bool) -> list[tuple[str, Address]]:
    """(transport, server) to try, UDP then TCP then TLS; the signaling port itself last."""
    targets = []
    for url in turn.get("urls") or []:
        try:
            _, server, transport = _parse_turn_url(url)
        except ValueError:
            continue
        targets.append((transport, server))
    own = ("tls" if tls else "tcp", tuple(signaling.server))
    if own not in targets:
        targets.append(own)
    order = {t: i for i, t in enumerate(RELAY_TRANSPORTS)}
    return sorted([t for t in targets if t[0] in transports], key=lambda t: order[t[0]])


# -- the front doors ----------------------------------------------------------


class _Punches:
    """Per-token waiters for pushed ``punch`` and ``connect-declined`` frames."""

    def __init__(self, signaling) -> None:
        self.waiters: dict[str, Deferred] = {}
        self.early: dict[str, dict] = {}
        signaling.on("punch", self._frame)
        signaling.on("connect-declined", self._frame)

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
    """Log in as ``user`` and connect to the buddy ``peer``; fires with a Connection.

    ``servers`` are (host, port) super nodes tried after the ``host_cache``
    (a rendezvous.peer.host_cache.HostCache); ``tls`` logs in over TLS (and
    ``tls_verify=False`` accepts a self-signed node). Options:
    ``direct_transports`` (default ("udp", "tcp"): direct UDP candidates and
    TCP hole punching; () for relay only), ``relay_transports`` (default
    ("udp", "tcp", "tls"); () for no relay), ``tcp_low_ttl`` (the TTL of
    the first punching SYN; default None, a full TTL), ``tcp_punch_seconds``,
    ``upnp`` (map the UDP port on the LAN's gateway: True, False, or None,
    the default: unless the node is on loopback),
    ``include_loopback``, ``stun_server``, ``timeout_seconds``,
    ``keepalive_seconds`` (default: half the shorter of the two sides'
    measured binding lifetimes, else 15 s), ``binding_lifetime_seconds``
    (this side's, e.g. nat_check's ``binding_lifetime_seconds``; sent to the
    peer in presence), ``relay_wait_seconds``, ``consent_timeout_seconds``
    (RFC 7675: how long the peer may leave consent checks unanswered
    before ``when_lost`` fires; default 30), ``spray_sockets``,
    ``spray_probes``; an unknown one raises TypeError, a bad value
    ValueError. Fails with ConnectError (its ``attempts`` say what was
    tried), SignalingRequestError (e.g. the peer is offline or not a buddy)
    or a login error.
    """
    options = _Options(tls=tls, tls_verify=tls_verify, **options)

    async def run() -> Connection:
        from rendezvous.peer.signaling_client import SignalingClient

        signaling = await SignalingClient.login(reactor, user, password, servers=servers, host_cache=host_cache,
                                                tls=tls, tls_verify=tls_verify)
        try:
            return await _connect(reactor, signaling, peer, options)
        except BaseException:
            signaling.close()
            raise

    return Deferred.fromCoroutine(run())


async def _connect(reactor, signaling, peer: str, options: _Options) -> Connection:
    session = _Session(reactor, signaling, options, controlling=True)
    session.peer = peer
    punches = _Punches(signaling)
    candidates = await session.gather()
    _presence(signaling, session.hint)
    peer_hint = await _peer_hint(signaling, peer)
    pending = await signaling.request("connect", to=peer, candidates=candidates,
                                      ufrag=session.agent.local_ufrag, pwd=session.agent.local_pwd)
    punch = await punches.wait(pending["token"], reactor, options.timeout_seconds)
    if punch.get("op") == "connect-declined":
        session.close()
        raise ConnectError(f"{peer} declined", session.attempts)
    connection = await session.start(punch, peer_hint)
    connection.signaling = signaling
    return connection


class Listener:
    """The answering side: accepts connect-requests from buddies (see ``listen``)."""

    def __init__(self, reactor, signaling, on_connection, options: _Options, accept) -> None:
        self.reactor, self.signaling, self.options = reactor, signaling, options
        self.on_connection, self.accept = on_connection, accept
        self.hint = NatHint(None)
        self.connections: list[Connection] = []
        self._punches = _Punches(signaling)
        signaling.on("connect-request", self._request)

    def _request(self, message: dict) -> None:
        peer, token = message.get("from"), message.get("token")
        if not self.accept(peer):
            self.signaling.send("connect-decline", token=token)
            return
        Deferred.fromCoroutine(self._answer(message)).addErrback(
            lambda f: log.info("connection from {peer} failed: {error}", peer=peer, error=f.getErrorMessage()))

    async def _answer(self, request: dict) -> None:
        session = _Session(self.reactor, self.signaling, self.options, controlling=False)
        session.peer = request.get("from")
        candidates = await session.gather()
        peer_hint = await _peer_hint(self.signaling, session.peer)
        waiting = self._punches.wait(request["token"], self.reactor, self.options.timeout_seconds)
        # connect-answer has no reply frame: the punch is the answer.
        self.signaling.send("connect-answer", token=request["token"], candidates=candidates,
                            ufrag=session.agent.local_ufrag, pwd=session.agent.local_pwd)
        punch = await waiting
        connection = await session.start(punch, peer_hint)
        self.connections.append(connection)
        self.on_connection(connection)

    def close(self) -> Deferred:
        """Log out and close every connection made."""
        for connection in self.connections:
            connection.close()
        return maybeDeferred(self.signaling.close)


def listen(reactor, user: str, password: str, on_connection, servers=None, host_cache=None, *,
           tls: bool = False, tls_verify: bool = True, accept=lambda peer: True, **options) -> Deferred:
    """Log in as ``user`` and answer connect-requests; fires with a Listener once online.

    ``on_connection(connection)`` is called for each peer that connects and
    ``accept(peer)`` decides who may (default: every buddy). Options as in
    ``connect``. Fails with a login error.
    """
    options = _Options(tls=tls, tls_verify=tls_verify, **options)

    async def run() -> Listener:
        from rendezvous.peer.signaling_client import SignalingClient

        signaling = await SignalingClient.login(reactor, user, password, servers=servers, host_cache=host_cache,
                                                tls=tls, tls_verify=tls_verify)
        listener = Listener(reactor, signaling, on_connection, options, accept)
        udp_only = replace(options, direct_transports=tuple(t for t in options.direct_transports if t == "udp"),
                           relay_transports=(), upnp=False)
        probe = _Session(reactor, signaling, udp_only, False)
        try:
            await probe.gather()
        finally:
            probe.close()
        listener.hint = probe.hint
        _presence(signaling, probe.hint)
        return listener

    return Deferred.fromCoroutine(run())
