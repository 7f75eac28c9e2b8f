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

Trickle ICE (RFC 8838): candidates found after the first signaling frame
go to the peer through the node as they come (``trickle``), the peer's
join the checks as they arrive (``add_candidates``), and what needs both
sides' candidates (the spray, the TCP punch's target, whether direct UDP
is hopeless) waits for them, not the checks.
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
                           consent_timeout_seconds=self.options.consent_timeout_seconds,
                           relay_first=not self.options.plaintext)
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
        self._spray_decided = False
        self._spray_heard: set[str] = set()  # spray sockets a packet reached (the hard side)
        self._udp_hopeless = False  # no direct UDP pair can work (decided once both sides' candidates are known)
        self._remote_wire: list[dict] = []  # the peer's signaled candidates
        self._early_remote: list[dict] = []  # trickled before the start instant
        self._early_end = False
        self._permitted: set[str] = set()  # peer IPs the relay has a permission for
        self._trickle = None  # sends our later candidates to the peer
        self._signaled: list[dict] = []
        self._trickle_ended = False
        self._tcp_tried = False
        self._peer_trickled = False
        self._complete_at_begin = False  # the peer's candidates were complete at the punch (early relay checks)
        self.on_gathered = None  # called with this session when gathering ends, before end-of-candidates

    # -- checks ------------------------------------------------------------

    def start(self, punch: dict, peer_hint: NatHint) -> Deferred:
        """Take the peer's candidates and credentials; begin at the node's start instant."""
        if not punch.get("ufrag") or not punch.get("pwd"):
            self.close()
            self.done.errback(ConnectError("the peer sent no ICE credentials", self.attempts))
            return self.done
        self._remote_wire = [c for c in punch.get("candidates", []) if isinstance(c, dict)][:32]
        self._peer_trickled = punch.get("trickle") is True
        self.agent.remote_complete = not self._peer_trickled
        self._permit()
        delay = max(0.0, float(punch.get("start_in_ms") or 0) / 1000)
        relayed = [c for c in self._remote_wire if c.get("type") == "relay"]
        if delay and relayed:
            self._check_relayed_now(punch, relayed)
        self.reactor.callLater(delay, self._begin, punch, peer_hint)
        self._deadline = self.reactor.callLater(delay + self.options.timeout_seconds, self._give_up)
        return self.done

    def _check_relayed_now(self, punch: dict, relayed: list[dict]) -> None:
        """Checks to the peer's relayed candidates start at the punch, not at the node's instant: a
        relay admits them by its permissions (RFC 8656 §9), with no NAT mapping to open at the same
        moment, and the session's first byte goes that way. Nothing is nominated before the instant."""
        complete, self.agent.remote_complete = self.agent.remote_complete, False
        self._complete_at_begin = complete
        self.agent.set_remote(punch["ufrag"], punch["pwd"], relayed, self.reactor.seconds())
        self._tick()

    def _begin(self, punch: dict, peer_hint: NatHint) -> None:
        if self.settled:
            return
        now = self.reactor.seconds()
        self._started = now
        self.peer_hint = peer_hint
        self._remote_wire += self._early_remote[:32 - len(self._remote_wire)]
        if self.agent.started_at is None:
            self.agent.set_remote(punch["ufrag"], punch["pwd"], self._remote_wire, now)
        else:  # the relayed candidates are being checked already
            self.agent.remote_complete = self._complete_at_begin
            self.agent.add_remote(self._remote_wire)
            self.agent.started_at = now  # direct checks begin now: relay_wait_seconds counts from here
        self.agent.remote_complete = self.agent.remote_complete or self._early_end
        self._permit()
        self._progress()

    # -- trickle ICE (RFC 8838) ---------------------------------------------

    def trickle(self, send, signaled: list[dict]) -> None:
        """Send the candidates found after ``signaled`` with ``send(candidates, end)`` as they come,
        the last with ``end`` True (end-of-candidates, RFC 8838 §8.2)."""
        self._trickle, self._signaled = send, list(signaled)
        self._send_trickled()

    def _send_trickled(self) -> None:
        if self._trickle is None or self._trickle_ended or self.closed:
            return
        new = [c for c in self.local_wire_candidates() if c not in self._signaled][:32 - len(self._signaled)]
        end = self.agent.local_complete
        if new or end:
            self._signaled += new
            self._trickle_ended = end
            try:
                self._trickle(new, end)
            except Exception as e:  # signaling gone: the checks go on with what the peer has
                log.info("candidates not trickled: {error}", error=e)

    def _more_candidates(self) -> None:
        """A gathering probe ended: trickle what it found, and let the running checks use it."""
        self._send_trickled()
        if self._started is not None and not self.settled:
            self._progress()

    def add_candidates(self, candidates: list, end: bool) -> None:
        """The peer's trickled candidates (a ``connect-candidates`` frame), and its end-of-candidates."""
        if self.settled:
            return
        candidates = [c for c in candidates if isinstance(c, dict)]
        if self._started is None:
            self._early_remote = (self._early_remote + candidates)[:32]
            self._early_end = self._early_end or end
            return
        candidates = candidates[:32 - len(self._remote_wire)]
        self._remote_wire += candidates
        self.agent.add_remote(candidates)
        self.agent.remote_complete = self.agent.remote_complete or end
        self._permit()
        self._progress()

    def _permit(self) -> None:
        """Relay permissions for the peer's addresses, as soon as both are known: a check through the
        relay before its permission is installed is dropped (RFC 8656 §9) and costs a retransmission."""
        if self.turn is None:
            return
        for ip in {c.get("ip") for c in self._remote_wire if c.get("protocol", "udp") == "udp" and c.get("ip")}:
            if isinstance(ip, str) and ip not in self._permitted:
                self._permitted.add(ip)
                self.turn.create_permission([(ip, 0)]).addErrback(lambda _: None)

    def _progress(self) -> None:
        """Candidates came on either side: start what waited for them, and check."""
        now = self.reactor.seconds()
        self._maybe_spray(now)
        self._refresh_hopeless()
        self._maybe_start_tcp(now)
        self._tick()

    def _maybe_spray(self, now: float) -> None:
        """The birthday spray, once both sides' candidates are complete (NAT hints and UPnP known).
        A trickling peer told its NAT hint (presence) just before its end-of-candidates, after
        the lookup at the start: it is looked up again."""
        if self._spray_decided or not (self.agent.local_complete and self.agent.remote_complete):
            return
        self._spray_decided = True
        if not self.options.direct:
            return
        if not self._peer_trickled:
            self._spray(now)
            return

        async def fresh() -> None:
            try:
                found = await self.signaling.request("lookup", user=self.peer)
                self.peer_hint = NatHint.from_presence(found.get("nat_type"))
            except Exception as e:  # the hint from the start stands
                log.info("no fresh NAT hint of {peer}: {error}", peer=self.peer, error=e)
            if not self.settled:
                self._spray(self.reactor.seconds())
                self._tick()

        Deferred.fromCoroutine(fresh())

    def _spray(self, now: float) -> None:
        candidates = self._remote_wire
        self._spray_role = spray_role(self.hint, self.peer_hint)
        if self.upnp_address is not None or any(c.get("type") == "upnp" for c in candidates):
            self._spray_role = None  # the random side reaches the UPnP mapping without guessing
        srflx = _spray_target(candidates)
        if self._spray_role and srflx is not None:
            peer = (srflx["ip"], srflx["port"])
            if self._spray_role == "hard":
                for i in range(self.options.spray_sockets):
                    sock = self._open(f"spray-{i}")
                    host = sock.transport.getHost()
                    self.agent.add_base(sock.name, "host", (host.host, host.port), 0, pair=False)
            self.spray = BirthdaySpray(self._spray_role, peer, now, sockets=self.options.spray_sockets,
                                       probes=self.options.spray_probes)

    def _refresh_hopeless(self) -> None:
        """Decide whether direct UDP is hopeless once both sides' UDP and TCP candidates are known."""
        if self._udp_hopeless or not (self.reflexive_done and self.tcp_done and self.agent.remote_complete):
            return
        self._udp_hopeless = _direct_udp_hopeless(self.local_wire_candidates(), self._remote_wire)
        if self._udp_hopeless:
            self.agent.relay_wait_seconds = 0.0  # a relayed pair need not wait for direct ones

    def _hopeless_so_far(self) -> bool:
        """Direct UDP looks hopeless from the candidates signaled so far (not yet all of them)."""
        return _direct_udp_hopeless(self.local_wire_candidates(), self._remote_wire)

    def _maybe_start_tcp(self, now: float) -> None:
        """The TCP punch, once this side's mapping is learned and the peer's TCP target is known
        (its server-reflexive TCP candidate, or its end-of-candidates)."""
        if self._tcp_tried or self.tcp_port is None or not self.tcp_done or self.settled:
            return
        theirs = [c for c in self._remote_wire if c.get("protocol") == "tcp"]
        if not self.agent.remote_complete and not any(c.get("type") == "srflx" for c in theirs):
            return
        self._tcp_tried = True
        target = _tcp_target(self.tcp_mapped, theirs)
        if target is not None:
            self._start_tcp(target, now)

    def packet(self, base: str, source: Address, data: bytes) -> None:
        """A datagram on a base: application data of a pair that works, or STUN for the agent."""
        if data[:1] == DATA_MARK:
            pair = self.agent.pairs.get((base, source))
            if self.connection is not None and pair is not None and pair.state is PairState.SUCCEEDED:
                self.connection._deliver(data[1:])  # the old path's too while the connection moves
            return
        if not data or data[0] > 3:
            return
        if base.startswith("spray-"):
            self._spray_heard.add(base)
        self._write(self.agent.receive(data, base, source, self.reactor.seconds()))
        if self.agent.started_at is not None:
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
        elapsed = self.reactor.seconds() - (self._started or self.reactor.seconds())
        techniques = self._techniques()
        for technique in techniques + ([path] if path not in techniques else []):
            outcome = "selected" if technique == path else "not-selected"
            self.attempts.append(Attempt(technique, round(elapsed * 1000, 1), outcome,
                                         detail if technique == path else self._detail(technique)))
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

    def _detail(self, technique: str) -> str:
        """Why a technique that did not win may have lost: for the birthday spray, what it sent and when."""
        if technique == "udp-birthday" and self.spray is not None and self._started is not None:
            return f"{self.spray.describe(self._started)}, {self._spray_answered()} answered"
        return ""

    def _spray_answered(self) -> int:
        """Spray probes that met an open mapping: on the easy side, predicted pairs whose check succeeded;
        on the hard side, spray sockets the peer's probes reached."""
        if self._spray_role == "hard":
            return len(self._spray_heard)
        return sum(1 for p in self.agent.pairs.values() if p.remote.kind == "predicted"
                   and p.state is PairState.SUCCEEDED)

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
            self.attempts.append(Attempt(technique, elapsed, "failed", self._detail(technique)))
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
        self.settled = self.closed = True  # late packets (the relay deallocating) must not revive the checks
        self._cancel_timers()
        if self.spray is not None:
            self.spray.stop()
        for name in list(self.sockets):
            self._close_socket(name)
        closing = [self._close_tcp(), self._unmap()]
        turn, self.turn = self.turn, None
        if turn is not None:
            closing.append(turn.close())  # bounded by the client; never fails
        return DeferredList(closing).addCallback(lambda _: None)


def _spray_target(candidates: list[dict]) -> dict | None:
    """The peer's server-reflexive UDP IPv4 candidate: the birthday spray's target. Not its TCP one,
    which comes first in the list when the UDP one was trickled after the first frame."""
    return next((c for c in candidates if c.get("type") == "srflx" and c.get("protocol", "udp") == "udp"
                 and ":" not in str(c.get("ip"))), None)


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
