"""A session: one connection attempt, from its candidates to the path that wins.

At the instant the node gives, ICE connectivity checks run (``rendezvous.peer.ice``,
RFC 8445 §7), with a birthday spray when a random-mapping NAT faces an
endpoint-independent one (``rendezvous.peer.prediction``). The connecting
side is controlling and nominates: a direct pair as soon as it is the best
valid one, a relayed pair only after every direct try ended. When direct
UDP cannot work at all (one side learned its public address over TCP but
none over UDP, so its NAT lets no UDP out, and the two are not behind one
public address), nothing waits for it: the punched stream, else the relay,
is taken as soon as it works. Gathering (``gathering``) and the TCP punch
(``tcp_path``) are mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from rendezvous.peer.connection import DATA_MARK, Attempt, ConnectError, Connection
from rendezvous.peer.gathering import _Gathering
from rendezvous.peer.ice import Agent, PairState, Send, random_credentials
from rendezvous.peer.prediction import BirthdaySpray, NatHint, keepalive_seconds, spray_role
from rendezvous.peer.tcp_path import _tcp_target, _TcpPath
from rendezvous.stun.addresses import Address

if TYPE_CHECKING:
    from rendezvous.peer.connector import _Options

log = Logger()

RELAY_GRACE_SECONDS = 5.0  # the relay stays up this long after the connection moved off it


@dataclass
class _Session(_Gathering, _TcpPath):
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
        self._init_gathering()
        self._init_tcp_path()
        self.peer_hint = NatHint(None)
        self.spray: BirthdaySpray | None = None
        self.connection: Connection | None = None
        self.done: Deferred = Deferred()  # the first usable Connection (on a relayed pair, with relay_first)
        self.settled = False  # the checks are over: a path is selected (or none is)
        self._timer = None
        self._deadline = None
        self._started = None
        self._spray_role = None
        self._udp_hopeless = False  # no direct UDP pair can work (set when the checks begin)

    # -- checks ------------------------------------------------------------

    def start(self, punch: dict, peer_hint: NatHint) -> Deferred:
        """Take the peer's candidates and credentials; begin at the node's start instant."""
        if not punch.get("ufrag") or not punch.get("pwd"):
            self.close()
            self.done.errback(ConnectError("the peer sent no ICE credentials", self.attempts))
            return self.done
        if self.turn is not None:  # now, not at the start instant: a check through the relay before its
            # permission is installed is dropped (RFC 8656 §9) and costs a retransmission
            candidates = [c for c in punch.get("candidates", []) if isinstance(c, dict)]
            for ip in {c.get("ip") for c in candidates if c.get("protocol", "udp") == "udp" and c.get("ip")}:
                self.turn.create_permission([(ip, 0)]).addErrback(lambda _: None)
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

    def packet(self, base: str, source: Address, data: bytes) -> None:
        """A datagram on a base: application data of a pair that works, or STUN for the agent."""
        if data[:1] == DATA_MARK:
            pair = self.agent.pairs.get((base, source))
            if self.connection is not None and pair is not None and pair.state is PairState.SUCCEEDED:
                self.connection._deliver(data[1:])  # the old path's too while the connection moves
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
        if self.settled:
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
        if self.settled:
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
        if self.settled:
            return
        selected = self.agent.selected
        if selected is not None:
            self._finish(selected)
        elif not self.options.plaintext and self.connection is None and any(p.relayed for p in self.agent.valid()):
            self._hand_over(next(p for p in self.agent.valid() if p.relayed))
        elif (self.agent.failed and (self.spray is None or self.spray.deadline is None)
              and self.tcp_punch is None and self.tcp_stream is None):
            self._fail("every candidate pair failed")

    def _finish(self, pair) -> None:
        self._complete(self._path(pair), pair.local.base, pair.mapped or pair.local.address, pair.remote.address)

    def _complete(self, path: str, base: str, local: Address, remote: Address, detail: str = "") -> None:
        """The checks are over: record the attempts, free what lost, settle the connection on the winner."""
        elapsed = self.reactor.seconds() - self._started
        techniques = self._techniques()
        for technique in techniques + ([path] if path not in techniques else []):
            outcome = "selected" if technique == path else "not-selected"
            self.attempts.append(Attempt(technique, round(elapsed * 1000, 1), outcome,
                                         detail if technique == path else ""))
        self.settled = True
        if self.spray is not None:
            self.spray.stop()
        for name in [n for n in self.sockets if n.startswith("spray-") and n != base]:
            self._close_socket(name)
        self._cancel_timers()
        if base != "relay" and self.turn is not None:
            if self.connection is not None and self.connection.base == "relay":
                self.reactor.callLater(RELAY_GRACE_SECONDS, self._release_relay)  # packets still in flight
            else:
                self._release_relay()
        if base != "tcp":
            self._close_tcp()
        if self.connection is None:
            self._hand_over_on(path, base, local, remote)
        self.connection._settle(path, base, local, remote)

    def _hand_over(self, pair) -> None:
        """Relay first: a relayed pair works, so the connection starts on it while the checks go on,
        with consent watching it (a peer that vanishes now is noticed, not only after the checks)."""
        self.agent.watch(pair, self.reactor.seconds())
        self._hand_over_on(self._path(pair), pair.local.base, pair.mapped or pair.local.address,
                           pair.remote.address, settled=False)

    def _hand_over_on(self, path: str, base: str, local: Address, remote: Address, settled: bool = True) -> None:
        interval = self.options.keepalive_seconds or keepalive_seconds([self.hint.lifetime_seconds,
                                                                        self.peer_hint.lifetime_seconds])
        self.connection = connection = Connection(self.peer, path, local, remote, self.attempts, self, interval,
                                                  base, settled)
        if base == "relay" and self.turn_transport in ("tcp", "tls"):
            self.turn.when_closed().addCallback(
                lambda _: connection.base == "relay" and connection._path_lost("the relay connection closed"))
        self.done.callback(connection)

    def _release_relay(self) -> None:
        if self.turn is not None and (self.connection is None or self.connection.base != "relay"):
            self.turn.close()
            self.turn = None

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
        self.settled = True
        elapsed = round((self.reactor.seconds() - (self._started or self.reactor.seconds())) * 1000, 1)
        for technique in self._techniques():
            self.attempts.append(Attempt(technique, elapsed, "failed"))
        self._cancel_timers()
        self.close()
        if not self.done.called:
            self.done.errback(ConnectError(f"{reason} (tried: {', '.join(self._techniques()) or 'nothing'})",
                                           self.attempts))

    def _give_up(self) -> None:
        if self.settled:
            return
        if self.connection is not None:  # nothing better than the relayed pair it runs on
            connection = self.connection
            self._complete(connection.path, connection.base, connection.local, connection.remote)
        else:
            self._fail(f"no path within {self.options.timeout_seconds} s")

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = None

    def _attempt(self, technique: str, started: float, outcome: str, detail: str = "") -> None:
        self.attempts.append(Attempt(technique, round((self.reactor.seconds() - started) * 1000, 1), outcome, detail))

    # -- after selection ---------------------------------------------------

    def close(self) -> Deferred:
        """Close every socket and the relay allocation; the checks are over."""
        self.settled = True  # late packets (the relay deallocating) must not revive the checks
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
