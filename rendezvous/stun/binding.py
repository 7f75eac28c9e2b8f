"""The STUN Binding server core, sans-IO.

RFC 8489 §6.3 (receiving a request) and §7.3 (Binding); RFC 5780 §6.1 (NAT
behaviour discovery: CHANGE-REQUEST, RESPONSE-ORIGIN, OTHER-ADDRESS,
RESPONSE-PORT, PADDING); RFC 3489 §8.2 (classic clients: MAPPED-ADDRESS,
SOURCE-ADDRESS, CHANGED-ADDRESS).

The server owns up to four UDP endpoints per address group (``Addresses``),
the primary and alternate IP crossed with the primary and alternate port; a
dual-stack server has a group per listening IP (one IPv4, one IPv6 at the
least), and a reply never leaves its group, so an IPv4 client gets IPv4
addresses back and an IPv6 client IPv6 ones. ``handle_datagram`` takes the
bytes, who sent them and which local endpoint got them, and returns a
``Reply`` naming the bytes, the local endpoint to send from and the
destination; or None when nothing is to be sent.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .addresses import Address
from .attributes import decode_change_request, decode_uint16
from .constants import Attr, Class, Error, Method
from .errors import CodecError
from .message import Message
from .replies import error_response, success_response, unknown_required

# Comprehension-required attributes a Binding request may carry that this
# server understands (integrity of ICE checks is the agent's business).
_UNDERSTOOD = frozenset(
    {
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.MESSAGE_INTEGRITY_SHA256,
        Attr.USERHASH,
        Attr.REALM,
        Attr.NONCE,
        Attr.PRIORITY,
        Attr.USE_CANDIDATE,
        Attr.PADDING,
        Attr.RESPONSE_PORT,
    }
)
_UNDERSTOOD_WITH_ALTERNATE = _UNDERSTOOD | {Attr.CHANGE_REQUEST}


@dataclass(frozen=True)
class Reply:
    """Bytes to send, from which local endpoint, to which address."""

    data: bytes
    source: Address
    destination: Address


@dataclass(frozen=True)
class Addresses:
    """The server's addresses, as bound and as advertised to clients.

    ``ip`` may be a wildcard ("0.0.0.0" or "::") only without an alternate.
    The advertised addresses stand in for the bound ones in RESPONSE-ORIGIN,
    OTHER-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS, for a host behind a
    1:1 NAT.
    """

    ip: str
    port: int
    alt_ip: str | None = None
    alt_port: int | None = None
    advertise_ip: str | None = None
    advertise_alt_ip: str | None = None

    @property
    def has_alternate(self) -> bool:
        return self.alt_ip is not None

    def endpoints(self) -> list[Address]:
        """Every local UDP endpoint: one, or four with an alternate."""
        if not self.has_alternate:
            return [(self.ip, self.port)]
        return [
            (ip, port) for ip in (self.ip, self.alt_ip) for port in (self.port, self.alt_port)
        ]

    def changed(self, local: Address, change_ip: bool, change_port: bool) -> Address:
        """The local endpoint that differs from local as the flags ask."""
        ip, port = local
        if change_ip:
            ip = self.alt_ip if ip == self.ip else self.ip
        if change_port:
            port = self.alt_port if port == self.port else self.port
        return ip, port

    def advertised(self, local: Address) -> Address | None:
        """What clients are told a local endpoint is; None if unknown (wildcard)."""
        ip, port = local
        if ip == self.ip and self.advertise_ip:
            return self.advertise_ip, port
        if ip == self.alt_ip and self.advertise_alt_ip:
            return self.advertise_alt_ip, port
        if ip in ("0.0.0.0", "::", ""):
            return None
        return ip, port


class BindingServer:
    """Answers Binding requests for one or more address groups; counts what it sees in ``counters``."""

    def __init__(self, addresses: Addresses | Sequence[Addresses], software: str | None = None) -> None:
        self.groups = (addresses,) if isinstance(addresses, Addresses) else tuple(addresses)
        self.software = software.encode("utf-8") if software else None
        self.counters: Counter[str] = Counter()
        self._by_ip = {ip: group for group in reversed(self.groups) for ip in (group.ip, group.alt_ip) if ip}

    def group(self, local: Address) -> Addresses:
        """The address group a local endpoint belongs to."""
        return self._by_ip.get(local[0], self.groups[0])

    def handle_datagram(self, data: bytes, source: Address, local: Address) -> Reply | None:
        """Answer one UDP datagram; None when it must be dropped or not answered."""
        request = self.decode(data)
        if request is None:
            return None
        return self.answer(request, source, local, datagram=True)

    def handle_stream_message(self, data: bytes, source: Address, local: Address) -> bytes | None:
        """Answer one framed message from a TCP/TLS connection on the same connection."""
        request = self.decode(data)
        if request is None:
            return None
        reply = self.answer(request, source, local, datagram=False)
        return reply.data if reply else None

    def plain_answer_tail(self, local: Address) -> bytes:
        """What follows XOR-MAPPED-ADDRESS and MAPPED-ADDRESS in the answer to a plain request on local.

        A plain request is one whose attributes leave the answer alone (no
        CHANGE-REQUEST, RESPONSE-PORT or PADDING; not classic), so the rest
        of its answer (RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE, encoded)
        is the same for every source: a fast path (relay/_binding.c) writes
        the two addresses and appends these bytes.
        """
        probe = Message(Method.BINDING, Class.REQUEST, bytes(12))
        source = ("0.0.0.0", 0)
        encoded = self._success(probe, self.group(local), source, local, local).encode()
        return encoded[20 + 2 * 12:]

    def count_fast_answers(self, count: int) -> None:
        """Count requests a fast path answered as answer() counts its own."""
        self.counters["requests"] += count
        self.counters["answered"] += count

    def decode(self, data: bytes) -> Message | None:
        """Decode a message, or count and drop it (RFC 8489 §6.3)."""
        try:
            msg = Message.decode(data)
        except CodecError:
            self.counters["malformed"] += 1
            return None
        if msg.check_fingerprint() is False:
            self.counters["malformed"] += 1
            return None
        return msg

    def answer(self, request: Message, source: Address, local: Address, datagram: bool) -> Reply | None:
        """Apply RFC 8489 §6.3.1 and RFC 5780 §6.1 to a decoded message."""
        if request.cls != Class.REQUEST:
            # Indications (keepalives) and stray responses get no answer.
            self.counters["ignored"] += 1
            return None
        self.counters["requests"] += 1
        if request.method != Method.BINDING:
            return self._error(request, source, local, Error.BAD_REQUEST, "Unsupported method")
        addresses = self.group(local)
        unknown = unknown_required(request, _UNDERSTOOD_WITH_ALTERNATE if addresses.has_alternate else _UNDERSTOOD)
        if unknown:
            return self._error(request, source, local, Error.UNKNOWN_ATTRIBUTE, unknown=unknown)
        try:
            change_ip, change_port = (
                decode_change_request(request.get(Attr.CHANGE_REQUEST))
                if Attr.CHANGE_REQUEST in request
                else (False, False)
            )
            response_port = (
                decode_uint16(request.get(Attr.RESPONSE_PORT))
                if Attr.RESPONSE_PORT in request
                else None
            )
        except CodecError as e:
            return self._error(request, source, local, Error.BAD_REQUEST, str(e))
        padding = request.get(Attr.PADDING)
        if response_port is not None and padding is not None:
            # RFC 5780 §6.1: both together would let a client aim padded
            # responses at a third port.
            return self._error(
                request, source, local, Error.BAD_REQUEST, "PADDING with RESPONSE-PORT"
            )
        if response_port == 0:
            return self._error(request, source, local, Error.BAD_REQUEST, "RESPONSE-PORT is 0")
        if not datagram and (change_ip or change_port or response_port is not None):
            return self._error(
                request, source, local, Error.BAD_REQUEST, "CHANGE-REQUEST and RESPONSE-PORT need UDP"
            )
        send_from = addresses.changed(local, change_ip, change_port)
        destination = (source[0], response_port) if response_port else source
        response = self._success(request, addresses, source, local, send_from)
        if padding is not None and datagram:
            response.add(Attr.PADDING, bytes(len(padding)))
        self.counters["answered"] += 1
        return Reply(self._encode(request, response), send_from, destination)

    def _success(self, request: Message, addresses: Addresses, source: Address, local: Address,
                 send_from: Address) -> Message:
        response = success_response(request)
        origin = addresses.advertised(send_from)
        other = (
            addresses.advertised(addresses.changed(local, True, True))
            if addresses.has_alternate
            else None
        )
        if request.classic:
            # RFC 3489 §11.2: no XOR-MAPPED-ADDRESS, which classic clients
            # would not know; CHANGED-ADDRESS is the alternate IP and port.
            response.add_address(Attr.MAPPED_ADDRESS, source)
            if origin:
                response.add_address(Attr.SOURCE_ADDRESS, origin)
            if other:
                response.add_address(Attr.CHANGED_ADDRESS, other)
        else:
            # RFC 5780 §6.1: both, so a client can spot an ALG rewriting one.
            response.add_address(Attr.XOR_MAPPED_ADDRESS, source)
            response.add_address(Attr.MAPPED_ADDRESS, source)
            if origin:
                response.add_address(Attr.RESPONSE_ORIGIN, origin)
            if other:
                response.add_address(Attr.OTHER_ADDRESS, other)
        if self.software and not request.classic:
            # RFC 3489 has no SOFTWARE, and its clients walk attributes
            # assuming whole 32-bit words, which an odd length breaks.
            response.add(Attr.SOFTWARE, self.software)
        return response

    def _error(
        self,
        request: Message,
        source: Address,
        local: Address,
        code: int,
        reason: str | None = None,
        unknown: list[int] | None = None,
    ) -> Reply:
        self.counters["errors"] += 1
        response = error_response(request, code, reason, unknown)
        return Reply(self._encode(request, response), local, source)

    @staticmethod
    def _encode(request: Message, response: Message) -> bytes:
        # RFC 8489 §7.3.1 / RFC 8445 §7.3: a FINGERPRINT in the request
        # asks for one in the response.
        return response.encode(fingerprint=Attr.FINGERPRINT in request)
