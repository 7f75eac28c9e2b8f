"""The probe sockets, and the state of one run of the check.

``ProbeSocket`` is a STUN client socket that also catches messages it did
not ask for: a hairpinned request (RFC 5780 §4.5) or a response aimed at it
with RESPONSE-PORT (RFC 5780 §4.6). ``binding_request`` builds the RFC 5780
§7 requests (CHANGE-REQUEST, RESPONSE-PORT). ``Checker`` holds one run's
settings, report and sockets, and the exchanges every test is made of; one
run measures one address family (IPv4 also through a NAT64 prefix, where
``reach`` turns the server's IPv4 addresses into the IPv6 ones we send to).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred

from rendezvous.peer.nat_check.report import NatReport
from rendezvous.peer.stun_client import StunClientProtocol, TransactionTimeout
from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun.addresses import Address, address_text
from rendezvous.stun.attributes import decode_error_code, encode_change_request, encode_uint16


class ServerError(Exception):
    """The server answered with an error response."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code


class ProbeSocket(StunClientProtocol):
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


def binding_request(change_ip: bool = False, change_port: bool = False, response_port: int | None = None) -> Message:
    """A Binding request, with CHANGE-REQUEST or RESPONSE-PORT when asked (RFC 5780 §7)."""
    request = Message(Method.BINDING, Class.REQUEST)
    if change_ip or change_port:
        request.add(Attr.CHANGE_REQUEST, encode_change_request(change_ip, change_port))
    if response_port is not None:
        request.add(Attr.RESPONSE_PORT, encode_uint16(response_port))
    return request


def is_alternate(other: Address | None, server: Address) -> bool:
    """Whether OTHER-ADDRESS names an RFC 5780 alternate: another IP and another port."""
    return other is not None and other[0] != server[0] and other[1] != server[1]


def mapped_address(response: Message) -> Address | None:
    """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from a server without it."""
    return response.address(Attr.XOR_MAPPED_ADDRESS) or response.address(Attr.MAPPED_ADDRESS)


def raise_for_error(response: Message) -> Message:
    """The response; ServerError when it is an error response."""
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


def show(address: Address | None) -> str | None:
    """The address as "host:port" ("[host]:port" for IPv6); None for None."""
    return None if address is None else address_text(address)


def family_of(ip: str) -> int:
    """socket.AF_INET6 for an IPv6 literal, else socket.AF_INET."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def local_ip_toward(server: Address) -> str:
    """The local address the kernel routes toward the server (no packet is sent);
    OSError when there is no route."""
    with socket.socket(family_of(server[0]), socket.SOCK_DGRAM) as s:
        s.connect(server[:2])
        return s.getsockname()[0]


class Checker:
    """One run of the check: its settings, its report, its sockets, and the
    exchanges the tests are made of."""

    def __init__(self, reactor, server: Address, lifetime_max_seconds: float, tcp: bool,
                 rto_seconds: float, allocation_samples: int, progress: Callable[[str], None] | None,
                 tcp_fallback_port: int | None = None, upnp_timeout_seconds: float | None = None,
                 echo_port: int | None = None, reach: Callable[[Address], Address] | None = None) -> None:
        self.reactor = reactor
        # Where to send to reach an address the server names (OTHER-ADDRESS, a mapped address).
        self.reach = reach or (lambda address: address)
        self.no_tcp_reason = "TCP not tested (--no-tcp)"
        self.no_alg_reason = "not asked for"
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
        self.report = NatReport(server=show(server), family="ipv6" if ":" in server[0] else "ipv4")

    # -- sockets ------------------------------------------------------------

    def open(self) -> ProbeSocket:
        probe = ProbeSocket(self.reactor, **self.timing)
        listening = self.reactor.listenUDP(0, probe, interface="::" if ":" in self.server[0] else "")
        probe.port = listening.getHost().port
        self.ports.append(listening)
        return probe

    async def close_all(self) -> None:
        ports, self.ports = self.ports, []
        for listening in ports:
            await defer.maybeDeferred(listening.stopListening)

    async def binding(self, probe: ProbeSocket, address: Address, **flags) -> tuple[Message, Address]:
        response, sender = await probe.request(binding_request(**flags), address)
        return raise_for_error(response), sender

    async def answered(self, probe: ProbeSocket, address: Address, expect_from: Address, **flags) -> bool | None:
        """Whether a (changed) response arrives; None if it came from the wrong place."""
        try:
            _, sender = await self.binding(probe, address, **flags)
        except TransactionTimeout:
            return False
        return True if tuple(sender) == tuple(expect_from) else None

    async def arrives(self, listener: ProbeSocket, sender: ProbeSocket, message: Message,
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
