"""NAT-PMP (RFC 6886) and PCP (RFC 6887) gateways on Twisted UDP.

The gateway is the default route's next hop (``/proc/net/route``); requests
go to its UDP port 5351 from a socket of our own. A request is sent again
after 250 ms, then 500 ms, doubling (RFC 6886 §3.1), until
``timeout_seconds`` has passed (and at most 9 sends); silence is NoGateway.
PCP would start at 3 s (RFC 6887 §8.1.1); on a LAN, waiting that long before
trying again buys nothing, so both use the NAT-PMP schedule.

``NatPmpGateway`` and ``PcpGateway`` offer the calls of ``igd.Gateway`` that
the mapping service uses (``external_address``, ``add_mapping``,
``delete_mapping``, ``close``), so ``LeaseKeeper`` renews their leases the
same way, at half-life. Neither protocol can list mappings.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from . import natpmp, pcp
from .errors import MappingRefused, NoGateway, UpnpError
from .igd import DEFAULT_DESCRIPTION, DEFAULT_TIMEOUT_SECONDS, PortMapping, check_port, normal_protocol

log = Logger()

ROUTES = "/proc/net/route"
FIRST_WAIT_SECONDS = 0.25
MAX_SENDS = 9
RTF_GATEWAY = 0x2
# PCP has no "what is my address" request: a short mapping of our own socket tells it.
ADDRESS_PROBE_LIFETIME_SECONDS = 60


class SpeaksNatPmp(NoGateway):
    """The gateway answered a PCP request in NAT-PMP: try NAT-PMP instead."""


# -- sans-IO helpers ---------------------------------------------------------


def default_gateway(routes: str) -> str | None:
    """The IPv4 next hop of the default route in /proc/net/route text, or None."""
    for line in routes.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            destination, gateway, flags = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
        except ValueError:
            continue
        if destination == 0 and flags & RTF_GATEWAY and gateway:
            return socket.inet_ntoa(struct.pack("<I", gateway))
    return None


def send_times(timeout_seconds: float) -> list[float]:
    """When to send (seconds after the first send): 0, 0.25, 0.75, 1.75, ...
    before timeout_seconds, at most MAX_SENDS."""
    times, at, wait = [], 0.0, FIRST_WAIT_SECONDS
    while at < timeout_seconds and len(times) < MAX_SENDS:
        times.append(at)
        at, wait = at + wait, wait * 2
    return times


def read_default_gateway(path: str = ROUTES) -> str:
    """The default gateway's address; NoGateway when there is no default route."""
    try:
        with open(path) as f:
            found = default_gateway(f.read())
    except OSError as e:
        raise NoGateway(f"cannot read the routing table ({e})") from None
    if found is None:
        raise NoGateway("no default route, so no gateway to ask")
    return found


# -- the UDP exchange --------------------------------------------------------


class _Exchange(DatagramProtocol):
    """One UDP socket toward gateway:5351; each request retransmits until a
    datagram it accepts arrives or its time is up."""

    def __init__(self, reactor, gateway: tuple[str, int], timeout_seconds: float) -> None:
        self.reactor = reactor
        self.gateway = gateway
        self.timeout_seconds = timeout_seconds
        self._pending: list[tuple[Callable[[bytes], object], Deferred]] = []
        self.port = reactor.listenUDP(0, self)
        self.local_address = _local_address(gateway[0])

    def ask(self, request: bytes, accept: Callable[[bytes], object]) -> Deferred:
        """Fires with accept(datagram) for the first datagram where it is not None;
        fails with NoGateway when none comes in time, or with what accept raised."""
        calls = []

        def cancel(_):
            for call in calls:
                if call.active():
                    call.cancel()

        done = Deferred(cancel)
        entry = (accept, done)
        self._pending.append(entry)
        for at in send_times(self.timeout_seconds):
            calls.append(self.reactor.callLater(at, self._send, request))

        def give_up():
            if entry in self._pending:
                self._pending.remove(entry)
                done.errback(NoGateway(f"no answer from {self.gateway[0]}:{self.gateway[1]} "
                                       f"within {self.timeout_seconds:g} s"))

        calls.append(self.reactor.callLater(self.timeout_seconds, give_up))
        done.addBoth(lambda result: (cancel(None), result)[1])
        return done

    def _send(self, request: bytes) -> None:
        try:
            self.transport.write(request, self.gateway)
        except OSError as e:  # no route, unreachable: the timeout reports it
            log.debug("sending to {gateway} failed: {error}", gateway=self.gateway, error=e)

    def datagramReceived(self, data: bytes, addr) -> None:
        if addr[0] != self.gateway[0]:
            return
        for entry in list(self._pending):
            accept, done = entry
            try:
                result = accept(data)
            except Exception as e:  # the accept function's verdict on a bad answer
                self._pending.remove(entry)
                done.errback(e)
                return
            if result is not None:
                self._pending.remove(entry)
                done.callback(result)
                return

    def close(self) -> None:
        pending, self._pending = self._pending, []
        for _, done in pending:
            done.cancel()
        self.port.stopListening()


def _local_address(gateway_ip: str) -> str:
    """Our address toward the gateway (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((gateway_ip, natpmp.PORT))
        return s.getsockname()[0]


def _lease(lease_seconds: int) -> int:
    """Neither protocol has permanent mappings: 0 asks for the RFC 6886 recommendation."""
    if lease_seconds < 0:
        raise ValueError("lease_seconds must be >= 0")
    return int(lease_seconds) or natpmp.RECOMMENDED_LIFETIME_SECONDS


# -- NAT-PMP -----------------------------------------------------------------


class NatPmpGateway:
    """A gateway speaking NAT-PMP. ``control_url`` names it, ``lan_address`` is ours."""

    def __init__(self, reactor, gateway_ip: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._exchange = _Exchange(reactor, (gateway_ip, natpmp.PORT), timeout_seconds)
        self.control_url = f"natpmp://{gateway_ip}:{natpmp.PORT}"
        self.lan_address = self._exchange.local_address
        self._internal_of: dict[tuple[str, int], int] = {}

    def _ask(self, request: bytes, opcode: int, action: str, internal_port: int | None = None) -> Deferred:
        def accept(data: bytes):
            try:
                response = natpmp.decode_response(data)
            except natpmp.NatPmpCodecError:
                return None
            if response.opcode != opcode:
                return None
            if response.result != natpmp.Result.SUCCESS:
                raise MappingRefused(response.result, natpmp.result_text(response.result), action, "NAT-PMP")
            if internal_port is not None and response.internal_port != internal_port:
                return None
            return response

        return self._exchange.ask(request, accept)

    def external_address(self) -> Deferred:
        """Fires with the external IPv4 address (RFC 6886 §3.2)."""
        return self._ask(natpmp.external_address_request(), natpmp.Opcode.EXTERNAL_ADDRESS,
                         "external address").addCallback(lambda r: r.external_address)

    def add_mapping(self, external_port: int, protocol: str = "UDP", internal_port: int | None = None, *,
                    internal_host: str | None = None, description: str = DEFAULT_DESCRIPTION,
                    lease_seconds: int = 3600) -> Deferred:
        """Map (§3.3) suggesting external_port; fires with the PortMapping the gateway
        granted (its external port and lifetime may differ from those asked for)."""
        protocol = normal_protocol(protocol)
        internal_port = check_port(internal_port if internal_port is not None else external_port, "internal_port")
        check_port(external_port, "external_port")
        if internal_host not in (None, self.lan_address):
            raise ValueError("NAT-PMP maps ports of this host only")
        request = natpmp.map_request(protocol, internal_port, external_port, _lease(lease_seconds))

        def made(response: natpmp.Response) -> PortMapping:
            self._internal_of[(protocol, response.external_port)] = internal_port
            return PortMapping(response.external_port, protocol, self.lan_address, internal_port, description,
                               response.lifetime_seconds)

        return self._ask(request, natpmp.MAP_OPCODES[protocol], "map", internal_port).addCallback(made)

    def delete_mapping(self, external_port: int, protocol: str = "UDP") -> Deferred:
        """Destroy our mapping (§3.4). The request names the internal port: the one
        mapped to external_port by this object, else external_port itself."""
        protocol = normal_protocol(protocol)
        internal_port = self._internal_of.pop((protocol, check_port(external_port, "external_port")), external_port)
        request = natpmp.map_request(protocol, internal_port, 0, 0)
        return self._ask(request, natpmp.MAP_OPCODES[protocol], "unmap", internal_port).addCallback(lambda _: None)

    def list_mappings(self) -> Deferred:
        raise UpnpError("NAT-PMP cannot list mappings")

    def close(self) -> None:
        self._exchange.close()


# -- PCP ---------------------------------------------------------------------


class PcpGateway:
    """A gateway speaking PCP. Each mapping has its nonce (§11.1), kept here to
    renew and delete it; ``nonce_of`` exposes them (a later process needs the
    nonce to delete a mapping)."""

    def __init__(self, reactor, gateway_ip: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._exchange = _Exchange(reactor, (gateway_ip, pcp.PORT), timeout_seconds)
        self.control_url = f"pcp://{gateway_ip}:{pcp.PORT}"
        self.lan_address = self._exchange.local_address
        self.nonce_of: dict[tuple[str, int], tuple[bytes, int]] = {}  # (protocol, external) -> (nonce, internal)
        self._last_external: str | None = None

    def _ask(self, request: bytes, opcode: int, action: str, nonce: bytes | None = None) -> Deferred:
        def accept(data: bytes):
            try:
                response = pcp.decode_response(data)
            except pcp.NotPcp:
                raise SpeaksNatPmp("the gateway speaks NAT-PMP, not PCP") from None
            except pcp.PcpCodecError:
                return None
            if response.opcode != opcode or (nonce is not None and response.nonce not in (None, nonce)):
                return None
            if response.result != pcp.Result.SUCCESS:
                raise MappingRefused(response.result, pcp.result_text(response.result), action, "PCP")
            return response

        return self._exchange.ask(request, accept)

    def announce(self) -> Deferred:
        """ANNOUNCE (§14.1): fires with the server's epoch when it speaks PCP."""
        return self._ask(pcp.announce_request(self.lan_address), pcp.Opcode.ANNOUNCE, "announce"
                         ).addCallback(lambda r: r.epoch_seconds)

    async def _external_address(self) -> str:
        port = self._exchange.port.getHost().port
        mapping = await self.add_mapping(port, "UDP", lease_seconds=ADDRESS_PROBE_LIFETIME_SECONDS)
        await self.delete_mapping(mapping.external_port, "UDP")
        return self._last_external

    def external_address(self) -> Deferred:
        """Fires with the external address, read from a short MAP of our own
        socket's port that is deleted at once (PCP has no address request)."""
        return Deferred.fromCoroutine(self._external_address())

    def add_mapping(self, external_port: int, protocol: str = "UDP", internal_port: int | None = None, *,
                    internal_host: str | None = None, description: str = DEFAULT_DESCRIPTION,
                    lease_seconds: int = 3600) -> Deferred:
        """MAP (§11) suggesting external_port; renewing a mapping of ours reuses its
        nonce. Fires with the PortMapping granted."""
        protocol = normal_protocol(protocol)
        internal_port = check_port(internal_port if internal_port is not None else external_port, "internal_port")
        check_port(external_port, "external_port")
        if internal_host not in (None, self.lan_address):
            raise ValueError("PCP maps ports of this host only (no THIRD_PARTY option)")
        nonce, _ = self.nonce_of.get((protocol, external_port), (os.urandom(pcp.NONCE_BYTES), internal_port))
        request = pcp.map_request(self.lan_address, nonce, protocol, internal_port, external_port,
                                  _lease(lease_seconds))

        def made(response: pcp.Response) -> PortMapping:
            self._last_external = response.external_address
            self.nonce_of[(protocol, response.external_port)] = (nonce, internal_port)
            return PortMapping(response.external_port, protocol, self.lan_address, internal_port, description,
                               response.lifetime_seconds)

        return self._ask(request, pcp.Opcode.MAP, "map", nonce).addCallback(made)

    def delete_mapping(self, external_port: int, protocol: str = "UDP", nonce: bytes | None = None,
                       internal_port: int | None = None) -> Deferred:
        """Delete a mapping (MAP with lifetime 0, §15) made by this object, or by
        another with the nonce and internal port given."""
        protocol = normal_protocol(protocol)
        key = (protocol, check_port(external_port, "external_port"))
        if nonce is None:
            if key not in self.nonce_of:
                raise UpnpError(f"no PCP mapping of {protocol} {external_port} made here (its nonce is needed)")
            nonce, internal_port = self.nonce_of[key]
        request = pcp.map_request(self.lan_address, nonce, protocol, internal_port or external_port, 0, 0)

        def deleted(_):
            self.nonce_of.pop(key, None)

        return self._ask(request, pcp.Opcode.MAP, "unmap", nonce).addCallback(deleted)

    def list_mappings(self) -> Deferred:
        raise UpnpError("PCP cannot list mappings")

    def close(self) -> None:
        self._exchange.close()


# -- discovery ---------------------------------------------------------------


async def _discover_natpmp(reactor, timeout_seconds: float, gateway_ip: str | None) -> NatPmpGateway:
    gateway = NatPmpGateway(reactor, gateway_ip or read_default_gateway(), timeout_seconds)
    try:
        await gateway.external_address()
    except NoGateway as e:
        gateway.close()
        raise NoGateway(f"no NAT-PMP gateway: {e}") from None
    except BaseException:
        gateway.close()
        raise
    return gateway


async def _discover_pcp(reactor, timeout_seconds: float, gateway_ip: str | None) -> PcpGateway:
    gateway = PcpGateway(reactor, gateway_ip or read_default_gateway(), timeout_seconds)
    try:
        await gateway.announce()
    except NoGateway as e:
        gateway.close()
        raise type(e)(f"no PCP gateway: {e}") from None
    except BaseException:
        gateway.close()
        raise
    return gateway


def discover_natpmp(reactor, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                    gateway_ip: str | None = None) -> Deferred:
    """Fires with a NatPmpGateway once the default gateway (or gateway_ip) told its
    external address; fails with NoGateway or MappingRefused."""
    return Deferred.fromCoroutine(_discover_natpmp(reactor, timeout_seconds, gateway_ip))


def discover_pcp(reactor, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 gateway_ip: str | None = None) -> Deferred:
    """Fires with a PcpGateway once the gateway answered ANNOUNCE; fails with
    NoGateway (silence, or a NAT-PMP-only gateway) or MappingRefused."""
    return Deferred.fromCoroutine(_discover_pcp(reactor, timeout_seconds, gateway_ip))
