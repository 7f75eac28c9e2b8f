"""Gathering a session's candidates (RFC 8445 §5.1.1), mixed into ``checks._Session``.

Host (this machine's IPv4 addresses, the one toward the node first, and its
global IPv6 addresses, one socket each: no link-local ones, temporary
ones only with ``ipv6_temporary``), UPnP-mapped
(``upnp_helper``: PCP, NAT-PMP or UPnP IGD maps the main socket's port,
renewed at half-life, removed on close), server-reflexive (STUN to the node
from the same socket, RFC 8489; a Binding to the node's other address,
RFC 5780 §4.3, and, when that mapping differs, a few fresh sockets tell how
the NAT maps and allocates ports: the NAT hint), predicted (sequential
allocators, ``prediction``), TCP host and server-reflexive (a port held for
the punch, its mapping learned from the node), and relayed (TURN, RFC 8656,
on the node: UDP, the transport and port signaling reached (which may be
TLS on 443), TCP and TLS raced, the first allocation winning; a dual
allocation, RFC 8656 §7.1: an IPv4 relayed candidate and an IPv6 one).
IPv6 bases also get a server-reflexive candidate from the node's IPv6
address (it differs from the host address behind NPTv6). On an IPv6-only
host with NAT64 (``rendezvous.peer.nat64``, found at login) the UDP
sockets are IPv6 ones that reach IPv4 addresses through the NAT64, so the
candidates and checks above stay IPv4 (the srflx is the NAT64's mapping),
and TURN goes over IPv6 to a dual-stack node. All of these
run at once. With trickle ICE (RFC 8838) ``gather`` returns the host
candidates at once and the rest follow through ``_more_candidates`` as
each probe ends; ``gathered`` fires when the last one has.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay import client as turn_client
from rendezvous.peer.ice import local_preference
from rendezvous.peer.interfaces import ipv6_host_addresses
from rendezvous.peer.nat64 import Nat64
from rendezvous.peer.prediction import NatHint, hint_from_probes, predicted_ports
from rendezvous.peer.relay_race import RELAY_TIMEOUT_SECONDS, parse_turn_url, race
from rendezvous.peer.stun_client import StunClientProtocol, TransactionTimeout
from rendezvous.peer.tcp_binding import reuse_port
from rendezvous.peer.tcp_punch import tcp_mapped_address
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.addresses import Address, address_text
from upnp_helper import LeaseKeeper, discover_gateway

if TYPE_CHECKING:
    from rendezvous.peer.checks import _Session

log = Logger()

UPNP_DISCOVERY_SECONDS = 0.5   # per method (PCP / NAT-PMP, then UPnP IGD): a LAN gateway answers in ms
UPNP_SECONDS = 1.5             # discovery and mapping together, at most
UPNP_LEASE_SECONDS = 3600      # renewed at half-life while the connection lasts
GATHER_RTO_SECONDS = 0.2
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # of the main socket, as the relay's
ALLOCATION_SAMPLES = 3
MAX_IPV6_HOSTS = 4             # IPv6 host candidates (one socket each), at most
CLOSE_TIMEOUT_SECONDS = 4.0


class _Socket(StunClientProtocol):
    """One local UDP socket (an ICE base): gathering requests, checks and data."""

    def __init__(self, reactor, name: str, session: _Session, nat64: Nat64 | None = None) -> None:
        super().__init__(reactor, rto_seconds=GATHER_RTO_SECONDS, rc=3, rm=4)
        self.name = name
        self.session = session
        self.nat64 = nat64  # an IPv6 socket that reaches IPv4 addresses through this NAT64

    def datagramReceived(self, data: bytes, addr) -> None:
        if self.nat64 is not None:
            addr = self.nat64.to_ipv4(addr)
        if len(data) >= 20 and data[8:20] in self._pending:
            super().datagramReceived(data, addr)
        else:
            self.session.packet(self.name, tuple(addr[:2]), data)


class _Gathering:
    """The candidates of a session and what holds them: sockets, a UPnP mapping, a TCP port, a TURN allocation.

    Uses the session's ``reactor``, ``signaling``, ``options``, ``agent``,
    ``packet()`` (where datagrams go), ``_more_candidates()`` (a probe
    ended), ``_permit()`` (the relay is allocated) and ``_attempt()``."""

    def _init_gathering(self) -> None:
        self.sockets: dict[str, tuple[_Socket, object]] = {}
        self.turn = None
        self.turn_transport: str | None = None
        self.spare = None  # the logged-in client's SpareRelay: its allocation is taken before racing for one
        self.hint = NatHint(None, lifetime_seconds=self.options.binding_lifetime_seconds)
        self.srflx: Address | None = None
        self.udp_silent = False  # set by the client: STUN over UDP went unanswered lately, do not wait again
        self.tcp_port: int | None = None
        self.tcp_mapped: Address | None = None
        self.tcp_candidates: list[dict] = []
        self.upnp_address: Address | None = None
        self._upnp_gateway = None
        self._upnp_keeper: LeaseKeeper | None = None
        self._tcp_placeholder: socket.socket | None = None
        self.gathered: Deferred | None = None  # fires once every probe has ended
        self.nat64 = self.signaling.nat64  # this host reaches IPv4 through NAT64 only (else None)
        self.closed = False
        self.reflexive_done = False  # STUN over UDP answered or gave up: this side's UDP is known
        self.tcp_done = False  # the TCP mapping is learned (or cannot be)

    def _open(self, name: str, interface: str | None = None) -> _Socket:
        """A UDP socket on ``interface``; by default an IPv4 one, or on an IPv6-only host with NAT64
        an IPv6 one that reaches IPv4 addresses through it (``_Nat64Port``)."""
        nat64 = self.nat64 if interface is None else None
        protocol = _Socket(self.reactor, name, self, nat64)
        port = self.reactor.listenUDP(0, protocol, interface=interface or ("::" if nat64 else "0.0.0.0"))
        if nat64 is not None:
            protocol.transport = _Nat64Port(port, nat64)
        if name == "main":  # a session's packets: the default buffer drops bursts, and QUIC halves its window
            turn_client.set_socket_buffers(port.socket, SOCKET_BUFFER_BYTES)
        self.sockets[name] = (protocol, port)
        return protocol

    async def gather(self, peer_hint: Deferred | None = None, trickle: bool = False) -> list[dict]:
        """Open the main socket; learn srflx and the NAT hint, map a UPnP port, learn the TCP
        mapping and allocate a relay, all at once; the candidates. ``peer_hint`` (a Deferred
        firing with the peer's NatHint, looked up meanwhile) tells whether UPnP is needed.
        With ``trickle`` the host candidates come back at once and the probes go on."""
        main = self._open("main")
        port = main.transport.getHost().port
        stun = self.options.stun_server or _stun_server(self.signaling)
        hosts = _host_addresses(stun[0], self.options.include_loopback)
        self.agent.add_base("main", "host", (hosts[0] if hosts else "0.0.0.0", port),
                            local_preference("0.0.0.0", 0), pair=self.options.direct)
        work = []  # every probe at once, never one after another
        if self.options.direct:
            for ip in hosts:
                self.agent.advertise(self.agent.candidate("host", (ip, port), "main"))
            stun6 = _stun_server(self.signaling, ipv6=True)
            for name in self._ipv6_hosts():
                if stun6 is not None:
                    work.append(Deferred.fromCoroutine(self._reflexive6(name, stun6)))
            reflexive = Deferred.fromCoroutine(self._reflexive(main, stun))
            work.append(reflexive)
            if self.options.upnp or (self.options.upnp is None and not ipaddress.ip_address(stun[0]).is_loopback):
                work.append(Deferred.fromCoroutine(self._upnp_if_needed(port, reflexive, peer_hint)))
        else:
            self.reflexive_done = True
        tcp = None
        if "tcp" in self.options.direct_transports and self.nat64 is not None:
            self._attempt("tcp-srflx", self.reactor.seconds(), "skipped",
                          "IPv6-only host: no TCP punching through NAT64")
            self.tcp_done = True
        elif "tcp" in self.options.direct_transports:
            self.tcp_candidates = [{"type": "host", "ip": ip, "port": self._hold_tcp_port(), "protocol": "tcp"}
                                   for ip in hosts]
            tcp = Deferred.fromCoroutine(self._tcp(hosts))
            work.append(tcp)
        else:
            self.tcp_done = True
        if self.options.relay_transports:
            work.append(Deferred.fromCoroutine(self._relay()))
        self.agent.local_complete = False
        for d in work:
            d.addBoth(self._probe_ended)
        self.gathered = DeferredList(work, consumeErrors=True).addCallback(self._gathering_over)
        if not trickle:
            for result in await self.gathered:
                if not result[0]:
                    result[1].raiseException()
        else:
            self.gathered.addCallback(_log_failures)
            if tcp is not None:
                # The TCP mapping (one round trip to the node, over the way signaling already gets
                # through) goes in the first frame: both sides then punch from the node's shared
                # instant, not each when it learned the other's.
                await _copy(tcp)
        return self.local_wire_candidates()

    def local_wire_candidates(self) -> list[dict]:
        """What to signal: best first (the peer ranks our candidates by their place in the list,
        ice.Candidate.from_wire), TCP last, at most 32; never peer-reflexive ones (RFC 8445 §5.1.1)."""
        udp = [c.to_wire() for c in sorted(self.agent.local_candidates, key=lambda c: -c.priority)
               if c.kind != "prflx"]
        return (udp[:32 - len(self.tcp_candidates)] + self.tcp_candidates)[:32]

    def _ipv6_hosts(self) -> list[str]:
        """RFC 8445 §5.1.1.1: a base and host candidate per global IPv6 address (its own socket),
        ranked above the IPv4 ones (RFC 8421 §4); the bases' names."""
        names = []
        for index, ip in enumerate(ipv6_host_addresses(self.options.ipv6_temporary)[:MAX_IPV6_HOSTS]):
            name = f"host6-{index}"
            try:
                sock = self._open(name, interface=ip)
            except CannotListenError as e:  # gone since it was listed
                log.debug("no socket on {ip}: {error}", ip=ip, error=e)
                continue
            address = (ip, sock.transport.getHost().port)
            self.agent.add_base(name, "host", address, local_preference(ip, index))
            self.agent.advertise(self.agent.candidate("host", address, name))
            names.append(name)
        return names

    async def _reflexive6(self, name: str, stun: Address) -> None:
        """The IPv6 server-reflexive candidate of one IPv6 base (RFC 8445 §5.1.1.2), from the node's IPv6
        address: it differs from the host address behind NPTv6 (RFC 6296) or a NAT66."""
        started = self.reactor.seconds()
        sock = self.sockets[name][0]
        try:
            response, _ = await sock.request(Message(Method.BINDING, Class.REQUEST), stun)
        except TransactionTimeout:
            self._attempt("srflx6", started, "failed", f"no answer from {stun[0]}")
            return
        mapped = response.address(Attr.XOR_MAPPED_ADDRESS)
        if mapped is None or self.closed:
            return
        if mapped != self.agent.bases[name].address:
            self.agent.advertise(self.agent.candidate("srflx", mapped, name))
        self._attempt("srflx6", started, "succeeded", address_text(mapped))

    def _probe_ended(self, result):
        self._more_candidates()
        return result

    def _gathering_over(self, results: list) -> list:
        self.agent.local_complete = True
        if self.on_gathered is not None and not self.closed:
            self.on_gathered(self)  # presence with the NAT hint goes out before end-of-candidates
        self._more_candidates()
        return results

    def _hold_tcp_port(self) -> int:
        """A TCP port held for the punch (SO_REUSEPORT)."""
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reuse_port(placeholder)
        placeholder.bind(("0.0.0.0", 0))
        self._tcp_placeholder, self.tcp_port = placeholder, placeholder.getsockname()[1]
        return self.tcp_port

    async def _tcp(self, hosts: list[str]) -> None:
        """The held TCP port's mapped candidate, learned from the node."""
        started = self.reactor.seconds()
        try:
            self.tcp_mapped = await tcp_mapped_address(self.reactor, self.tcp_port, tuple(self.signaling.server),
                                                       tls=self.options.tls, timeout_seconds=RELAY_TIMEOUT_SECONDS)
        except Exception as e:  # no TCP to the node from here: host candidates only
            self._attempt("tcp-srflx", started, "failed", str(e))
            return
        finally:
            self.tcp_done = True
        if self.tcp_mapped != (hosts[0] if hosts else None, self.tcp_port):
            self.tcp_candidates.insert(0, {"type": "srflx", "ip": self.tcp_mapped[0], "port": self.tcp_mapped[1],
                                           "protocol": "tcp"})

    async def _reflexive(self, main: _Socket, stun: Address) -> None:
        try:
            await self._learn_reflexive(main, stun)
        finally:
            self.reflexive_done = True

    async def _learn_reflexive(self, main: _Socket, stun: Address) -> None:
        started = self.reactor.seconds()
        if self.udp_silent:
            self._attempt("srflx", started, "skipped", "STUN over UDP went unanswered a moment ago")
            return
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
        if toward_other is not None and toward_other != mapped and not self.closed:
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

    async def _upnp_if_needed(self, port: int, reflexive: Deferred, peer_hint: Deferred | None) -> None:
        """UPnP unless no UDP gets out (STUN went unanswered) or both NATs map endpoint-independently
        (RFC 4787 §4.1: hole punching reaches each side's server-reflexive address): then a mapping
        adds nothing, while looking for a gateway that is not there costs up to UPNP_SECONDS."""
        started = self.reactor.seconds()
        theirs = NatHint(None)
        try:
            await reflexive
            if peer_hint is not None:
                theirs = await peer_hint
        except Exception:  # reflexive failed (reported there) or no hint: look for a gateway
            pass
        if self.srflx is None:
            self._attempt("upnp", started, "skipped", "no STUN answer over UDP: no UDP gets out")
            return
        if self.hint.easy and theirs.easy:
            self._attempt("upnp", started, "skipped", "both NATs map endpoint-independently")
            return
        await self._upnp(port)

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
        if self.closed:  # the session ended meanwhile: nothing would remove the mapping
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
        """A TURN allocation on the node: the client's spare one if it has one ready (``spare_relay``),
        else one raced over every transport (``relay_race``)."""
        result = await self.spare.take() if self.spare is not None else None
        if result is None:
            turn = await self.signaling.turn_credentials()
            if not turn or self.closed:
                return
            result = await race(self.reactor, self.signaling, turn, self.options.relay_transports,
                                self.options.tls, self.options.tls_verify, self.nat64, self._attempt)
        if result is None:
            return
        client, transport, relayed = result
        if self.closed or self.settled:  # the session ended, or went direct, before the relay came
            client.close()
            return
        self.turn, self.turn_transport = client, transport
        client.on_data = lambda peer, data: self.packet("relay", tuple(peer), data)
        preference = {"udp": 3, "tcp": 2, "tls": 1}[transport]
        self.agent.add_base("relay", "relay", relayed, preference)
        for other in client.relayed_addresses[1:2]:  # a dual allocation's IPv6 address (RFC 8656 §7.1)
            self.agent.add_base_address("relay", other, preference + (8 if ":" in other[0] else 0))
        for address in client.relayed_addresses or [relayed]:
            self.agent.advertise(self.agent.candidate("relay", address, "relay"))
        # A peer on the same relay sends from that relay's address: permit it now, before its candidate
        # comes, so the first check between the two relayed addresses is not dropped (RFC 8656 §9).
        self._permitted.add(relayed[0])
        client.create_permission([(relayed[0], 0)]).addErrback(lambda _: None)
        self._permit()

    def _close_socket(self, name: str) -> None:
        entry = self.sockets.pop(name, None)
        if entry is not None:
            entry[1].stopListening()


class _Nat64Port:
    """A UDP port on an IPv6-only host as the layers above see it: IPv4 destinations are written
    under the NAT64 prefix (RFC 6052 §2.2); everything else is the port's."""

    def __init__(self, port, nat64: Nat64) -> None:
        self._port, self._nat64 = port, nat64

    def write(self, data: bytes, addr) -> None:
        self._port.write(data, self._nat64.to_ipv6(addr))

    def __getattr__(self, name: str):
        return getattr(self._port, name)


def _copy(d: Deferred) -> Deferred:
    """A Deferred firing (with None) when ``d`` has, leaving ``d``'s result to its own callbacks."""
    copy: Deferred = Deferred()
    d.addBoth(lambda result: (copy.callback(None), result)[1])
    return copy


def _log_failures(results: list) -> list:
    for ok, failure in results:
        if not ok:
            log.failure("a gathering probe failed", failure)
    return results


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


def _stun_server(signaling, ipv6: bool = False) -> Address | None:
    """The node's STUN UDP address: from its TURN URLs, else its signaling address. With ``ipv6``
    its IPv6 one, from the URLs or the welcome's ``node_ips`` (None when it has none)."""
    host, port = signaling.server
    for url in (signaling.welcome.get("turn") or {}).get("urls") or signaling.welcome.get("relays") or []:
        scheme, target, transport = parse_turn_url(url)
        if scheme == "turn" and transport == "udp" and (":" in target[0]) == ipv6:
            return target
    if not ipv6:
        return host, port
    return next(((ip, port) for ip in signaling.welcome.get("node_ips") or [] if isinstance(ip, str) and ":" in ip),
                None)
