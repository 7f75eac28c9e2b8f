"""The NAT analyzer: how the NAT (or NATs) between us and a STUN server behave.

RFC 5780 §4.3 (mapping behaviour: Binding requests from one socket to the
server's primary address, its alternate IP, and its alternate IP and port),
§4.4 (filtering behaviour: CHANGE-REQUEST asks the server to answer from its
alternate IP and port, or its alternate port), §4.5 (hairpinning), §4.6
(binding lifetime, with RESPONSE-PORT aiming a response at an older
mapping), and the RFC 3489 §5 "classic" labels derived from them; RFC 4787
§4.1 (port preservation and allocation) for port prediction; RFC 5382 §5 for
TCP mapping.

The decisions are sans-IO functions of what was observed
(``mapping_behaviour``, ``filtering_behaviour``, ``classic_type``,
``port_allocation``, ``prediction_easy``, ``lifetime_schedule``,
``lifetime_bounds``); the probing, on Twisted, only gathers the
observations. Apps call::

    report = await check(reactor, ("198.51.100.1", 3478))
    print(report.to_text())

ALG detection sends a SIP INVITE carrying our private address (over UDP
and TCP) to the super node's echo service (``rendezvous.node.echo``, port 5060 by
default; ``--echo-port`` on the node) and compares the copy it saw
(``rendezvous.peer.sip_probe``); without an echo service the report says
``alg: null`` with the reason rather than guessing.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from twisted.internet import defer, error, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol

from upnp_helper.probe import NAMES as GATEWAY_NAMES
from upnp_helper.probe import GatewayAnswer
from upnp_helper.probe import probe as probe_gateways

from rendezvous.peer import sip_probe
from rendezvous.wire.echo_probe import MAX_PROBE_BYTES, EchoCodecError
from rendezvous.wire.echo_probe import decode_reply as decode_echo
from rendezvous.wire.echo_probe import probe as echo_probe
from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.attributes import decode_error_code, encode_change_request, encode_uint16
from rendezvous.peer.stun_client import StunClientProtocol, TransactionTimeout
from rendezvous.peer.tcp_binding import ReusePortConnector, StreamProbe, StreamProbeFactory

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"

# Classic (RFC 3489) labels.
UDP_BLOCKED = "UDP blocked"
OPEN_INTERNET = "open internet"
SYMMETRIC_FIREWALL = "symmetric UDP firewall"
FULL_CONE = "full cone"
RESTRICTED_CONE = "restricted cone"
PORT_RESTRICTED_CONE = "port restricted cone"
SYMMETRIC = "symmetric"

PRESERVING = "preserving"
SEQUENTIAL = "sequential"
RANDOM = "random"

ALG_UNSUPPORTED = "unsupported by server"
DEFAULT_ECHO_PORT = 5060

# A super node's plain firewall port (TCP), tried when its STUN port is blocked.
DEFAULT_TCP_FALLBACK_PORT = 80

# The largest port step still called sequential allocation.
MAX_SEQUENTIAL_DELTA = 64
# Probe waits for the binding lifetime search, seconds after the mapping was made.
LIFETIME_STEPS_SECONDS = (1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800)


class NatCheckError(Exception):
    """The check could not run at all (bad server address, no local socket)."""


# ---------------------------------------------------------------------------
# Sans-IO decisions


def mapping_behaviour(test1: Address | None, test2: Address | None, test3: Address | None) -> str | None:
    """RFC 5780 §4.3 from the mapped addresses seen by the server's primary
    address (test I), alternate IP (test II) and alternate IP and port (test III).

    None when a needed answer is missing.
    """
    if test1 is None or test2 is None:
        return None
    if test2 == test1:
        return ENDPOINT_INDEPENDENT
    if test3 is None:
        return None
    if test3 == test2:
        return ADDRESS_DEPENDENT
    return ADDRESS_AND_PORT_DEPENDENT


def filtering_behaviour(from_other_ip_and_port: bool | None, from_other_port: bool | None) -> str | None:
    """RFC 5780 §4.4 from whether the answers to CHANGE-REQUEST (change IP and
    port: test II; change port: test III) arrived. None when not tested.
    """
    if from_other_ip_and_port is None:
        return None
    if from_other_ip_and_port:
        return ENDPOINT_INDEPENDENT
    if from_other_port is None:
        return None
    return ADDRESS_DEPENDENT if from_other_port else ADDRESS_AND_PORT_DEPENDENT


def classic_type(udp_blocked: bool | None, nat_present: bool | None, mapping: str | None,
                 filtering: str | None) -> str | None:
    """The RFC 3489 label for familiarity; None when it cannot be told."""
    if udp_blocked:
        return UDP_BLOCKED
    if nat_present is False:
        if filtering is None:
            return None
        return OPEN_INTERNET if filtering == ENDPOINT_INDEPENDENT else SYMMETRIC_FIREWALL
    if mapping is None:
        return None
    if mapping != ENDPOINT_INDEPENDENT:
        return SYMMETRIC
    return {
        ENDPOINT_INDEPENDENT: FULL_CONE,
        ADDRESS_DEPENDENT: RESTRICTED_CONE,
        ADDRESS_AND_PORT_DEPENDENT: PORT_RESTRICTED_CONE,
    }.get(filtering)


@dataclass(frozen=True)
class PortAllocation:
    """How the NAT picks external ports for new mappings (RFC 4787 §4.1).

    ``samples`` are (local port, mapped port) of sockets opened one after
    another; ``delta`` is the step of sequential allocation.
    """

    pattern: str | None
    delta: int | None = None
    samples: tuple[tuple[int, int], ...] = ()


def port_allocation(samples: list[tuple[int, int]]) -> PortAllocation:
    """Classify mapped ports as preserving, sequential (with its delta) or random.

    Sequential means most steps between consecutive mappings (at least two
    thirds) are one and the same small nonzero delta.
    """
    frozen = tuple((int(a), int(b)) for a, b in samples)
    if not frozen:
        return PortAllocation(None, None, frozen)
    if all(local == mapped for local, mapped in frozen):
        return PortAllocation(PRESERVING, None, frozen)
    mapped = [m for _, m in frozen]
    deltas = [b - a for a, b in pairwise(mapped)]
    if len(deltas) < 2:
        return PortAllocation(None, None, frozen)
    delta, count = Counter(deltas).most_common(1)[0]
    if delta != 0 and abs(delta) <= MAX_SEQUENTIAL_DELTA and 3 * count >= 2 * len(deltas):
        return PortAllocation(SEQUENTIAL, delta, frozen)
    return PortAllocation(RANDOM, None, frozen)


def prediction_easy(mapping: str | None, allocation: PortAllocation | None) -> bool | None:
    """Whether a peer can guess the port this NAT will use toward it.

    Endpoint-independent mapping keeps the port the server saw; otherwise
    preserving or sequential allocation can be extrapolated and random can not.
    """
    if mapping == ENDPOINT_INDEPENDENT:
        return True
    pattern = allocation.pattern if allocation else None
    if pattern in (PRESERVING, SEQUENTIAL):
        return True
    if pattern == RANDOM:
        return False
    return None


def lifetime_schedule(max_seconds: float, probe_seconds: float) -> list[float]:
    """Waits (after each mapping is made) at which to test whether it is alive.

    Each wait gets its own mapping, probed once, so probes never refresh
    each other; they run side by side, so the search lasts as long as the
    longest wait plus one probe, which stays within max_seconds.
    """
    longest = max_seconds - probe_seconds
    if longest < 1:
        return []
    waits = [float(s) for s in LIFETIME_STEPS_SECONDS if s < longest]
    if not waits or waits[-1] < longest:
        waits.append(float(int(longest)))
    return waits


def lifetime_bounds(results: list[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(longest wait a mapping survived before the first one that died, that first death).

    ``(None, None)`` without results; an upper bound of None means every
    mapping outlived the search.
    """
    lower, upper = None, None
    for wait, alive in sorted(results):
        if alive:
            lower = wait
        else:
            upper = wait
            break
    return lower, upper


# ---------------------------------------------------------------------------
# The report


@dataclass
class NatReport:
    """What the check found; None anywhere means "not determined" (see ``notes``)."""

    server: str
    other_address: str | None = None
    server_answered: bool = False
    rfc5780: bool | None = None
    udp_blocked: bool | None = None
    local_address: str | None = None
    mapped_address: str | None = None
    nat_present: bool | None = None
    mapping: str | None = None
    filtering: str | None = None
    classic: str | None = None
    port_preservation: bool | None = None
    port_allocation: PortAllocation | None = None
    port_prediction_easy: bool | None = None
    hairpinning: bool | None = None
    binding_lifetime_seconds: float | None = None
    binding_lifetime_max_seconds: float | None = None
    tcp_mapping: str | None = None
    tcp_port_preservation: bool | None = None
    tcp_server_port: int | None = None
    mapped_address_rewritten: bool | None = None
    alg: bool | None = None
    alg_reason: str | None = ALG_UNSUPPORTED
    alg_rewritten: dict[str, list[str] | None] | None = None
    upnp: dict[str, GatewayAnswer] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict (``mapping``/``filtering`` use the RFC 5780 words)."""
        data = asdict(self)
        allocation = self.port_allocation
        data["port_allocation"] = {
            "pattern": allocation.pattern if allocation else None,
            "delta": allocation.delta if allocation else None,
            "samples": [list(s) for s in allocation.samples] if allocation else [],
            "prediction": _easy_word(self.port_prediction_easy),
        }
        data["nat_type"] = self.classic
        data["upnp"] = None if self.upnp is None else {name: a.to_dict() for name, a in self.upnp.items()}
        return data

    def to_json(self) -> str:
        """The report as a JSON document."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """A readable report, in the manner of the TUM NAT Analyzer."""
        lines = [f"NAT check against {self.server}"
                 + (f" (alternate {self.other_address})" if self.other_address else "")]

        def row(name: str, value: str) -> None:
            lines.append(f"  {name + ':':<22}{value}")

        if not self.server_answered:
            row("Result", "the server did not answer (see the notes)")
        row("Local address", self.local_address or "unknown")
        row("Mapped address", self.mapped_address or "unknown")
        row("NAT type", self.classic or "unknown")
        if self.udp_blocked:
            row("UDP", "blocked (no answer over UDP, but over TCP)")
        mapping = _behaviour_text(self.mapping, "mapping")
        easy = self.port_prediction_easy
        if easy is not None and not self.udp_blocked:
            mapping += ", port prediction is " + ("easy" if easy else "hard")
        row("Mapping", mapping)
        row("Filtering", _behaviour_text(self.filtering, "filtering"))
        row("Port preservation", _yes_no(self.port_preservation))
        allocation = self.port_allocation
        if allocation and allocation.pattern == SEQUENTIAL:
            row("Port allocation", f"sequential, delta {allocation.delta:+d}")
        else:
            row("Port allocation", (allocation.pattern if allocation else None) or "unknown")
        row("Hairpinning", _yes_no(self.hairpinning))
        row("UDP binding lifetime", self._lifetime_text())
        tcp_text = _behaviour_text(self.tcp_mapping, "mapping")
        if self.tcp_port_preservation is not None:
            tcp_text += ", port " + ("preserved" if self.tcp_port_preservation else "changed")
        if self.tcp_server_port is not None and not self.server.endswith(f":{self.tcp_server_port}"):
            tcp_text += f" (only port {self.tcp_server_port} answered)"
        row("TCP", tcp_text)
        if self.mapped_address_rewritten:
            row("Address rewriting", "MAPPED-ADDRESS was rewritten on the way: an ALG is on the path")
        row("ALG", self._alg_text())
        row("Port mapping", self._gateway_text())
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines) + "\n"

    def _alg_text(self) -> str:
        if self.alg is None:
            return "not tested (" + (self.alg_reason or "unknown") + ")"
        seen = {name: fields for name, fields in (self.alg_rewritten or {}).items() if fields is not None}
        if not self.alg:
            return "none seen (SIP INVITE echoed unchanged over " + ", ".join(n.upper() for n in seen) + ")"
        return "SIP payload rewritten: " + "; ".join(
            f"{name.upper()}: {', '.join(fields)}" for name, fields in seen.items() if fields)

    def _gateway_text(self) -> str:
        if self.upnp is None:
            return "not tested"
        answered = [a for a in self.upnp.values() if a.answered]
        if not answered:
            return "no gateway answered (" + ", ".join(GATEWAY_NAMES[name] for name in self.upnp) + ")"
        return "; ".join(f"{GATEWAY_NAMES[a.protocol]} answered"
                         + (f", external address {a.external_address}" if a.external_address else "")
                         + (f" ({a.error})" if a.error else "") for a in answered)

    def _lifetime_text(self) -> str:
        lower, upper = self.binding_lifetime_seconds, self.binding_lifetime_max_seconds
        if lower is None and upper is None:
            return "not measured"
        if upper is None:
            return f"at least {lower:g} s"
        if lower is None:
            return f"less than {upper:g} s"
        return f"between {lower:g} and {upper:g} s"


def _behaviour_text(value: str | None, what: str) -> str:
    if value is None:
        return "unknown"
    return f"{value.replace('-', ' ').capitalize()} {what}"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _easy_word(value: bool | None) -> str | None:
    return None if value is None else ("easy" if value else "hard")


def _show(address: Address | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


# ---------------------------------------------------------------------------
# Probing on Twisted


class ServerError(Exception):
    """The server answered with an error response."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code


class _ProbeSocket(StunClientProtocol):
    """A STUN client socket that can also wait for a message it did not ask for
    (a hairpinned request, a response aimed at it with RESPONSE-PORT)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._awaited: dict[bytes, Deferred] = {}
        self.port: int | None = None

    def await_message(self, transaction_id: bytes) -> Deferred:
        """Fires with (Message, sender) when a message with this id arrives."""
        done: Deferred = Deferred(lambda _: self._awaited.pop(transaction_id, None))
        self._awaited[transaction_id] = done
        return done

    def datagramReceived(self, data: bytes, addr) -> None:
        if self._awaited:
            try:
                message = Message.decode(data)
            except CodecError:
                return
            done = self._awaited.pop(message.transaction_id, None)
            if done is not None:
                done.callback((message, addr[:2]))
                return
        super().datagramReceived(data, addr)


class _EchoSocket(DatagramProtocol):
    """A UDP socket whose next echo answer fires ``next_answer()``."""

    def __init__(self) -> None:
        self._waiting: Deferred | None = None

    def next_answer(self) -> Deferred:
        self._waiting = Deferred()
        return self._waiting

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            answer = decode_echo(data)
        except EchoCodecError:
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.callback(answer)


class _EchoStream(Protocol):
    """Fires ``closed`` with all that came back."""

    def __init__(self) -> None:
        self.closed: Deferred = Deferred()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_PROBE_BYTES:
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        if not self.closed.called:
            self.closed.callback(self.buffer)


def binding_request(change_ip: bool = False, change_port: bool = False, response_port: int | None = None) -> Message:
    """A Binding request, with CHANGE-REQUEST or RESPONSE-PORT when asked (RFC 5780 §7)."""
    request = Message(Method.BINDING, Class.REQUEST)
    if change_ip or change_port:
        request.add(Attr.CHANGE_REQUEST, encode_change_request(change_ip, change_port))
    if response_port is not None:
        request.add(Attr.RESPONSE_PORT, encode_uint16(response_port))
    return request


def _is_alternate(other: Address | None, server: Address) -> bool:
    """Whether OTHER-ADDRESS names an RFC 5780 alternate: another IP and another port."""
    return other is not None and other[0] != server[0] and other[1] != server[1]


def mapped_address(response: Message) -> Address | None:
    """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from a server without it."""
    return response.address(Attr.XOR_MAPPED_ADDRESS) or response.address(Attr.MAPPED_ADDRESS)


def _raise_for_error(response: Message) -> Message:
    if response.cls == Class.ERROR:
        code, reason = 0, ""
        value = response.get(Attr.ERROR_CODE)
        if value is not None:
            try:
                code, reason = decode_error_code(value)
            except CodecError:
                pass
        raise ServerError(code, reason)
    return response


class _Checker:
    """One run of the check; gathers observations, then asks the decisions."""

    def __init__(self, reactor, server: Address, lifetime_max_seconds: float, tcp: bool,
                 rto_seconds: float, allocation_samples: int, progress: Callable[[str], None] | None,
                 tcp_fallback_port: int | None = None, upnp_timeout_seconds: float | None = None,
                 echo_port: int | None = None) -> None:
        self.reactor = reactor
        self.echo_port = echo_port
        self.upnp_timeout_seconds = upnp_timeout_seconds
        self.server = server
        self.lifetime_max_seconds = lifetime_max_seconds
        self.tcp = tcp
        self.tcp_fallback_port = tcp_fallback_port
        # A short schedule: 4 sends, then 8 RTOs (3 s with the default RTO).
        self.timing = {"rto_seconds": rto_seconds, "rc": 4, "rm": 8}
        self.probe_seconds = rto_seconds * (1 + 2 + 4 + 8)
        self.allocation_samples = allocation_samples
        self.progress = progress or (lambda line: None)
        self.ports: list = []
        self.report = NatReport(server=_show(server))

    # -- sockets ------------------------------------------------------------

    def _open(self) -> _ProbeSocket:
        probe = _ProbeSocket(self.reactor, **self.timing)
        listening = self.reactor.listenUDP(0, probe)
        probe.port = listening.getHost().port
        self.ports.append(listening)
        return probe

    async def _close_all(self) -> None:
        ports, self.ports = self.ports, []
        for listening in ports:
            await defer.maybeDeferred(listening.stopListening)

    async def _binding(self, probe: _ProbeSocket, address: Address, **flags) -> tuple[Message, Address]:
        response, sender = await probe.request(binding_request(**flags), address)
        return _raise_for_error(response), sender

    async def _answered(self, probe: _ProbeSocket, address: Address, expect_from: Address, **flags) -> bool | None:
        """Whether a (changed) response arrives; None if it came from the wrong place."""
        try:
            _, sender = await self._binding(probe, address, **flags)
        except TransactionTimeout:
            return False
        return True if tuple(sender) == tuple(expect_from) else None

    async def _arrives(self, listener: _ProbeSocket, sender: _ProbeSocket, message: Message,
                       destination: Address) -> str:
        """Send message from sender; "arrived" when listener gets it (or its
        response), "answered" when sender itself gets the answer, "lost" else."""
        outcome: Deferred = Deferred()

        def settle(result: str) -> None:
            if not outcome.called:
                outcome.callback(result)

        arrived = listener.await_message(message.transaction_id)
        arrived.addCallbacks(lambda _: settle("arrived"), lambda _: None)
        sent = sender.request(message, destination)
        sent.addCallbacks(lambda _: settle("answered"), lambda _: settle("lost"))
        try:
            return await outcome
        finally:
            arrived.cancel()
            sent.cancel()

    # -- the run ------------------------------------------------------------

    async def run(self) -> NatReport:
        gateways = None
        if self.upnp_timeout_seconds is not None:
            self.progress("port mapping: asking the LAN's gateway (UPnP IGD, NAT-PMP, PCP) for "
                          f"{self.upnp_timeout_seconds:g} s")
            gateways = probe_gateways(self.reactor, timeout_seconds=self.upnp_timeout_seconds)
        try:
            await self._run()
        finally:
            await self._close_all()
            if gateways is not None:
                self.report.upnp = await gateways
        report = self.report
        report.classic = classic_type(report.udp_blocked, report.nat_present, report.mapping, report.filtering)
        report.port_prediction_easy = None if report.udp_blocked else prediction_easy(
            report.mapping, report.port_allocation)
        return report

    async def _run(self) -> None:
        report = self.report
        server = self.server
        self.progress(f"test I: Binding request to {_show(server)} over UDP")
        first = self._open()
        local_ip = _local_ip(server)
        report.local_address = _show((local_ip, first.port))
        try:
            response, _ = await self._binding(first, server)
        except TransactionTimeout:
            self.progress("no answer over UDP")
            if self.tcp:
                await self._tcp()
            if report.server_answered:
                report.udp_blocked = True
                report.notes.append("the server answers over TCP but not over UDP: UDP is blocked")
            else:
                report.notes.append("no answer over UDP" + (" or TCP" if self.tcp else " (TCP not tried)"))
            return
        report.server_answered = True
        report.udp_blocked = False
        mapped = mapped_address(response)
        report.mapped_address = _show(mapped)
        report.nat_present = mapped != (local_ip, first.port)
        report.port_preservation = mapped is not None and mapped[1] == first.port
        plain = response.address(Attr.MAPPED_ADDRESS)
        if response.get(Attr.XOR_MAPPED_ADDRESS) is not None and plain is not None:
            report.mapped_address_rewritten = plain != mapped
        other = response.address(Attr.OTHER_ADDRESS)
        report.rfc5780 = _is_alternate(other, server)
        report.other_address = _show(other)
        if not report.rfc5780:
            report.notes.append("the server has no RFC 5780 alternate address (OTHER-ADDRESS): "
                                "mapping and filtering cannot be tested")
        else:
            await self._mapping(first, mapped, other)
        await self._allocation()
        # The rest use sockets of their own, so they run side by side; the
        # lifetime search (the longest) starts first.
        tests = [Deferred.fromCoroutine(self._lifetime())]
        if report.rfc5780:
            tests.append(Deferred.fromCoroutine(self._filtering(other)))
        tests.append(Deferred.fromCoroutine(self._hairpinning(first, mapped)))
        if self.tcp:
            tests.append(Deferred.fromCoroutine(self._tcp()))
        else:
            report.notes.append("TCP not tested (--no-tcp)")
        if self.echo_port:
            tests.append(Deferred.fromCoroutine(self._alg()))
        else:
            report.alg_reason = "not asked for"
        try:
            await defer.gatherResults(tests, consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()

    async def _mapping(self, first: _ProbeSocket, mapped: Address, other: Address) -> None:
        report = self.report
        self.progress(f"test II: mapping toward the alternate IP {other[0]}:{self.server[1]}")
        try:
            second = mapped_address((await self._binding(first, (other[0], self.server[1])))[0])
            self.progress(f"test III: mapping toward the alternate IP and port {_show(other)}")
            third = mapped_address((await self._binding(first, other))[0]) if second != mapped else None
        except (TransactionTimeout, ServerError) as e:
            report.notes.append(f"mapping test failed: {e}")
            return
        report.mapping = mapping_behaviour(mapped, second, third)

    async def _filtering(self, other: Address) -> None:
        report = self.report
        self.progress("filtering tests: answers from the alternate IP and port, and the alternate port")
        probe = self._open()
        try:
            await self._binding(probe, self.server)
        except (TransactionTimeout, ServerError) as e:
            report.notes.append(f"filtering test failed: {e}")
            return
        both, port_only = await defer.gatherResults([
            Deferred.fromCoroutine(self._answered(probe, self.server, other, change_ip=True, change_port=True)),
            Deferred.fromCoroutine(self._answered(probe, self.server, (self.server[0], other[1]),
                                                  change_port=True)),
        ])
        if both is None or port_only is None:
            report.notes.append("the server answered a CHANGE-REQUEST from the wrong address")
            return
        report.filtering = filtering_behaviour(both, port_only)

    async def _allocation(self) -> None:
        report = self.report
        self.progress(f"port allocation: {self.allocation_samples} new sockets, one after another")
        samples = []
        for _ in range(self.allocation_samples):
            probe = self._open()
            try:
                mapped = mapped_address((await self._binding(probe, self.server))[0])
            except (TransactionTimeout, ServerError):
                continue
            if mapped is not None:
                samples.append((probe.port, mapped[1]))
        report.port_allocation = port_allocation(samples)

    async def _hairpinning(self, first: _ProbeSocket, mapped: Address | None) -> None:
        if mapped is None:
            return
        self.progress(f"hairpinning: a second socket sends to our mapped address {_show(mapped)}")
        outcome = await self._arrives(first, self._open(), binding_request(), mapped)
        self.report.hairpinning = outcome == "arrived"

    async def _lifetime(self) -> None:
        report = self.report
        waits = lifetime_schedule(self.lifetime_max_seconds, self.probe_seconds)
        if not waits:
            report.notes.append("UDP binding lifetime not measured (--lifetime-max-seconds too small)")
            return
        self.progress(f"binding lifetime: {len(waits)} mappings probed after "
                      + ", ".join(f"{w:g}" for w in waits) + " s (in the background)")
        results = await defer.gatherResults([Deferred.fromCoroutine(self._survives(w)) for w in waits])
        results = [(w, alive) for w, alive in zip(waits, results) if alive is not None]
        if len(results) != len(waits):
            report.notes.append("the server does not support RESPONSE-PORT: binding lifetime not measured")
            return
        report.binding_lifetime_seconds, report.binding_lifetime_max_seconds = lifetime_bounds(results)
        self.progress("binding lifetime: done")

    async def _survives(self, wait_seconds: float) -> bool | None:
        """Make a mapping, wait, then have the server answer a second socket's
        request to the first mapping's port (RFC 5780 §4.6)."""
        holder = self._open()
        try:
            response, _ = await self._binding(holder, self.server)
        except (TransactionTimeout, ServerError):
            return False
        mapped = mapped_address(response)
        if mapped is None:
            return False
        await _sleep(self.reactor, wait_seconds)
        outcome = await self._arrives(holder, self._open(), binding_request(response_port=mapped[1]), self.server)
        if outcome == "answered":
            return None  # an error response (RESPONSE-PORT unknown), or the server ignored it
        return outcome == "arrived"

    async def _alg(self) -> None:
        """A SIP INVITE with our private address through the echo service, over
        UDP and TCP; which fields came back rewritten."""
        report = self.report
        echo = (self.server[0], self.echo_port)
        self.progress(f"ALG: a SIP INVITE to the echo service at {_show(echo)} over UDP and TCP")
        results = await defer.gatherResults([Deferred.fromCoroutine(self._echo_udp(echo)),
                                             Deferred.fromCoroutine(self._echo_tcp(echo))])
        report.alg_rewritten = dict(zip(("udp", "tcp"), results))
        answered = [fields for fields in results if fields is not None]
        if not answered:
            report.alg_reason = f"no echo service answered at port {self.echo_port}"
            return
        report.alg = any(answered)
        report.alg_reason = None

    async def _echo_udp(self, echo: Address) -> list[str] | None:
        listening = self.reactor.listenUDP(0, _EchoSocket())
        self.ports.append(listening)
        socket_ = listening.protocol
        local = (_local_ip(echo), listening.getHost().port)
        sent = sip_probe.invite(local[0], local[1], echo[0], echo[1], local[1] + 2)
        wait = self.timing["rto_seconds"]
        for _ in range(4):
            listening.write(echo_probe(sent), echo)
            try:
                payload, _ = await socket_.next_answer().addTimeout(wait, self.reactor)
            except defer.TimeoutError:
                wait *= 2
                continue
            return sip_probe.rewritten_fields(sent, payload)
        return None

    async def _echo_tcp(self, echo: Address) -> list[str] | None:
        stream = _EchoStream()
        endpoint = TCP4ClientEndpoint(self.reactor, echo[0], echo[1], timeout=5)
        try:
            await connectProtocol(endpoint, stream).addTimeout(self.probe_seconds + 2, self.reactor)
            local = stream.transport.getHost()
            sent = sip_probe.invite(local.host, local.port, echo[0], echo[1], local.port + 2)
            stream.transport.write(echo_probe(sent))
            payload, _ = decode_echo(await stream.closed.addTimeout(self.probe_seconds + 2, self.reactor))
        except (*_TCP_FAILURES, EchoCodecError):
            return None
        finally:
            if stream.transport is not None:
                stream.transport.loseConnection()
        return sip_probe.rewritten_fields(sent, payload)

    async def _tcp(self) -> None:
        """RFC 5382 §5: the same local port toward three server endpoints.

        When the STUN port does not answer over TCP, the server's plain
        firewall port (a super node's TCP 80) is tried for the mapped address.
        """
        report = self.report
        server = self.server
        self.progress(f"TCP: Binding request to {_show(server)} over TCP")
        connectors = []
        try:
            try:
                first, local_port = await self._tcp_binding(server, 0, connectors)
            except _TCP_FAILURES as e:
                fallback = self.tcp_fallback_port
                if not fallback or fallback == server[1]:
                    raise
                report.notes.append(f"TCP to port {server[1]} failed ({e.__class__.__name__})")
                server = (server[0], fallback)
                self.progress(f"TCP: Binding request to the firewall port {_show(server)}")
                first, local_port = await self._tcp_binding(server, 0, connectors)
            report.server_answered = True
            report.tcp_server_port = server[1]
            mapped = mapped_address(first)
            report.tcp_port_preservation = mapped is not None and mapped[1] == local_port
            other = first.address(Attr.OTHER_ADDRESS)
            if report.rfc5780 is None:
                report.rfc5780 = _is_alternate(other, server)
                report.other_address = _show(other)
            if server != self.server:
                report.notes.append(f"TCP answered only on port {server[1]}: TCP mapping not tested")
                return
            if other is None or other[0] == server[0]:
                return
            self.progress(f"TCP: from the same local port {local_port} to the alternate IP and port")
            second, _ = await self._tcp_binding((other[0], server[1]), local_port, connectors)
            third, _ = await self._tcp_binding(other, local_port, connectors)
            report.tcp_mapping = mapping_behaviour(mapped, mapped_address(second), mapped_address(third))
        except _TCP_FAILURES as e:
            report.notes.append(f"TCP test failed: {e.__class__.__name__}: {e}")
        finally:
            for connector in connectors:
                connector.disconnect()

    async def _tcp_binding(self, address: Address, local_port: int, connectors: list) -> tuple[Message, int]:
        probe = StreamProbe(binding_request().encode())
        connector = ReusePortConnector(address[0], address[1], StreamProbeFactory(probe), 5,
                                       ("0.0.0.0", local_port), self.reactor)
        connectors.append(connector)
        connector.connect()
        probe.answered.addTimeout(self.probe_seconds + 2, self.reactor)
        response = _raise_for_error(await probe.answered)
        return response, connector.transport.getHost().port if local_port == 0 else local_port


# Refused, reset, timed out, or not STUN.
_TCP_FAILURES = (error.ConnectError, error.ConnectionClosed, defer.TimeoutError, defer.CancelledError,
                 CodecError, ServerError, OSError)


def _local_ip(server: Address) -> str:
    """The local address the kernel routes toward the server (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(server)
        return s.getsockname()[0]


def _sleep(clock, seconds: float) -> Deferred:
    return task.deferLater(clock, seconds, lambda: None)


async def _resolve(reactor, host: str) -> str:
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    try:
        return await reactor.resolve(host)
    except (error.DNSLookupError, OSError) as e:
        raise NatCheckError(f"cannot resolve {host}: {e}") from None


def check(reactor, server: tuple[str, int], *, lifetime_max_seconds: float = 120.0, tcp: bool = True,
          rto_seconds: float = 0.2, allocation_samples: int = 5,
          progress: Callable[[str], None] | None = None,
          tcp_fallback_port: int | None = DEFAULT_TCP_FALLBACK_PORT,
          upnp_timeout_seconds: float | None = 2.0, echo_port: int | None = DEFAULT_ECHO_PORT) -> Deferred:
    """Analyse the NAT between this host and an RFC 5780 STUN server.

    ``server`` is (host, port) of the server's primary address (IPv4).
    The UDP binding lifetime search runs alongside the other tests and takes
    at most ``lifetime_max_seconds`` (0 skips it). ``progress`` is called
    with a line as each test starts. When the server's port does not answer
    over TCP, ``tcp_fallback_port`` (a super node's plain firewall port;
    None to skip) is tried, so a firewall letting out only TCP 80 still gets
    a verdict ("UDP blocked"). The LAN's gateway is asked for port mapping
    (UPnP IGD, NAT-PMP, PCP) for ``upnp_timeout_seconds`` alongside (None
    skips it). ALG detection uses the server's echo service at ``echo_port``
    (None skips it).

    Fires with a NatReport, which is partial (see its ``notes``) when the
    server does not answer or lacks RFC 5780; fails with NatCheckError when
    the server's name does not resolve.
    """

    async def go() -> NatReport:
        host, port = server
        ip = await _resolve(reactor, host)
        checker = _Checker(reactor, (ip, int(port)), lifetime_max_seconds, tcp, rto_seconds,
                           allocation_samples, progress, tcp_fallback_port, upnp_timeout_seconds, echo_port)
        return await checker.run()

    return Deferred.fromCoroutine(go())
