"""A TURN client on Twisted: one allocation on one TURN server.

RFC 8656 (TURN): §7 creating an allocation (Allocate), §8 refreshing it
(Refresh, LIFETIME 0 deletes it), §9-§10 permissions (CreatePermission),
§11 Send and Data indications, §12 channels (ChannelBind, §12.4 ChannelData,
§12.5 its padding over TCP and TLS). RFC 8489 (STUN): §9.2 long-term
credentials (§9.2.2 the MD5 key, §9.2.3 first and subsequent requests,
§9.2.5 401 Unauthenticated and 438 Stale Nonce), §6.2.1 retransmission over
UDP and §6.2.2 a single send over TCP and TLS. RFC 7443 (ALPN "stun.turn").

The wire work is ``rendezvous.stun`` (sans-IO); this module owns sockets,
timers and the request/response bookkeeping. The data path is kept lean:
ChannelData and Send indications are written from cached, pre-encoded headers
and received Data indications and ChannelData are parsed without building
``Message`` objects, because a relay load test or a media flow sends tens of
thousands of them a second.

Front door::

    client = await connect(reactor, ("203.0.113.7", 3478), "udp",
                           username="alice", password="secret")
    relayed = await client.allocate()
    await client.create_permission([peer])
    await client.channel_bind(0x4000, peer)
    client.on_data = lambda peer, data: ...
    client.send_channel_data(0x4000, b"hello")
    await client.close()
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from rendezvous.stun import Attr, Class, CodecError, Message, Method, PasswordAlgorithm
from rendezvous.stun.addresses import Address, decode_xor_address, encode_xor_address
from rendezvous.stun.attributes import (
    decode_error_code,
    decode_password_algorithms,
    decode_text,
    decode_uint32,
    encode_password_algorithm,
    encode_requested_transport,
    encode_uint16,
    encode_uint32,
)
from rendezvous.stun.constants import MAGIC_COOKIE, MAGIC_COOKIE_BYTES, Error
from rendezvous.stun.framing import StreamFramer
from rendezvous.stun.integrity import long_term_key
from rendezvous.stun.message import message_type
from rendezvous.stun.transaction import RC, RM, RTO_SECONDS, ClientTransaction

from .datagrams import read_loop

log = Logger()  # twisted.logger: .warn, not .warning (hence the G010 noqa marks)

MINUTE = 60
DEFAULT_LIFETIME_SECONDS = 10 * MINUTE  # RFC 8656 §7: the default allocation lifetime
PERMISSION_LIFETIME_SECONDS = 5 * MINUTE  # RFC 8656 §9
CHANNEL_LIFETIME_SECONDS = 10 * MINUTE  # RFC 8656 §12
PERMISSION_REFRESH_SECONDS = 4 * MINUTE  # refresh one minute before expiry
CHANNEL_REFRESH_SECONDS = 9 * MINUTE
ALLOCATION_REFRESH_MARGIN_SECONDS = MINUTE
HOUSEKEEPING_INTERVAL_SECONDS = 15
CLOSE_TIMEOUT_SECONDS = 3.0
MAX_CHALLENGES = 3  # 401/438 rounds per request before giving up

# Channel numbers a client picks, RFC 8656 §12 (RFC 5766 allowed up to 0x7FFF;
# the codec's framing accepts those, but a client sticks to the current range).
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
UDP_PROTOCOL_NUMBER = 17  # REQUESTED-TRANSPORT value, RFC 8656 §18.7
TRANSPORTS = ("udp", "tcp", "tls")
ALPN_STUN_TURN = b"stun.turn"  # RFC 7443 §5

# "obMatJos2": the STUN Security Features nonce cookie, RFC 8489 §9.2 / §18.1.
NONCE_COOKIE = "obMatJos2"

OnData = Callable[[Address, bytes], Any]

_SEND_INDICATION = message_type(Method.SEND, Class.INDICATION)
_DATA_INDICATION = message_type(Method.DATA, Class.INDICATION)
_INDICATION_HEADER = struct.Struct("!HHI4sQ")  # type, length, cookie, 96-bit transaction id
_CHANNEL_HEADER = struct.Struct("!HH")
_TLV = struct.Struct("!HH")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4
_HEADER_CACHE_LIMIT = 256


class TurnError(Exception):
    """The server answered a request with an error response (RFC 8489 §14.8).

    ``code`` is the ERROR-CODE number (``rendezvous.stun.Error`` names them),
    ``reason`` its text and ``method`` the request's method.
    """

    def __init__(self, code: int, reason: str, method: int) -> None:
        try:
            name = Method(method).name
        except ValueError:
            name = f"{method:#x}"
        super().__init__(f"{name} failed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.method = method


class TransactionTimeout(Exception):
    """No (valid) response within the RFC 8489 §6.2.1 / §6.2.2 schedule."""


class ConnectionClosed(Exception):
    """The client was closed, or its TCP/TLS connection lost, before a response."""


class RealmMismatch(Exception):
    """The server's REALM differs from the one the caller said to expect."""


# -- credentials (sans-IO) -------------------------------------------------------------


class LongTermCredentials:
    """The client side of RFC 8489 §9.2 long-term credentials.

    Knows what to add to a request and what to learn from a 401 or 438. The
    first request goes out without credentials (§9.2.3.1); the 401 supplies
    REALM and NONCE, after which every request carries USERNAME, REALM, NONCE
    and MESSAGE-INTEGRITY keyed with MD5(username ":" realm ":" password)
    (§9.2.2, §9.2.3.2). A 438 supplies a fresh NONCE (§9.2.5). When the
    nonce starts with the security-features cookie and the server offers
    PASSWORD-ALGORITHMS, the offer is echoed and MD5 chosen (SHA-256 when MD5
    is not offered), as §9.2.4 asks.
    """

    def __init__(self, username: str, password: str, realm: str | None = None) -> None:
        self.username = username
        self.password = password
        self.expected_realm = realm
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        self._algorithm_attrs: list[tuple[int, bytes]] = []

    @property
    def ready(self) -> bool:
        """True once a 401 has told us the realm and nonce."""
        return self.key is not None and self.nonce is not None

    def sign(self, message: Message) -> bytes:
        """Encode ``message`` with credentials and MESSAGE-INTEGRITY (§9.2.3.2)."""
        assert self.key is not None and self.nonce is not None and self.realm is not None
        message.add(Attr.USERNAME, self.username.encode("utf-8"))
        message.add(Attr.REALM, self.realm.encode("utf-8"))
        message.add(Attr.NONCE, self.nonce)
        for attr_type, value in self._algorithm_attrs:
            message.add(attr_type, value)
        return message.encode(integrity_key=self.key)

    def challenge(self, response: Message, code: int, signed: bool) -> bool:
        """Learn from a 401 or 438 response; True when retrying can succeed.

        §9.2.5: a 401 to a request that carried no credentials, or a 438,
        is answered by retrying with the (new) realm and nonce; a 401 to a
        request that already carried them means the credentials are wrong.
        Raises RealmMismatch when the caller pinned a different realm.
        """
        nonce = response.get(Attr.NONCE)
        realm_value = response.get(Attr.REALM)
        if nonce is None or (realm_value is None and self.realm is None):
            return False
        if code == Error.UNAUTHENTICATED and signed and nonce == self.nonce:
            return False
        if code not in (Error.UNAUTHENTICATED, Error.STALE_NONCE):
            return False
        if realm_value is not None:
            realm = decode_text(realm_value)
            if self.expected_realm is not None and realm != self.expected_realm:
                raise RealmMismatch(
                    f"server realm {realm!r} differs from the expected {self.expected_realm!r}"
                )
            if realm != self.realm:
                self.realm = realm
                self.key = None
        self.nonce = nonce
        algorithm = PasswordAlgorithm.MD5
        self._algorithm_attrs = []
        offered = response.get(Attr.PASSWORD_ALGORITHMS)
        if offered is not None and nonce.startswith(NONCE_COOKIE.encode()):
            choices = [a for a, _ in decode_password_algorithms(offered)]
            if PasswordAlgorithm.MD5 not in choices and PasswordAlgorithm.SHA256 in choices:
                algorithm = PasswordAlgorithm.SHA256
            self._algorithm_attrs = [
                (Attr.PASSWORD_ALGORITHMS, offered),
                (Attr.PASSWORD_ALGORITHM, encode_password_algorithm(algorithm)),
            ]
        assert self.realm is not None
        self.key = long_term_key(self.username, self.realm, self.password, algorithm)
        return True


# -- the client ------------------------------------------------------------------------


class _Pending:
    __slots__ = ("done", "key", "timer", "transaction")

    def __init__(self, transaction: ClientTransaction, done: Deferred, timer: Any, key: bytes | None):
        self.transaction = transaction
        self.done = done
        self.timer = timer
        self.key = key


class TurnClient:
    """One TURN allocation on one server, over one UDP socket or TCP/TLS connection.

    Make one with :func:`connect`. Known data are attributes:

    - ``server``: the server's (host, port); ``transport``: "udp", "tcp" or "tls"
    - ``relayed_address`` / ``mapped_address``: from the Allocate response
      (XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS), None before
    - ``lifetime_seconds``: the lifetime the server last granted
    - ``realm``: the realm learned from the server's 401
    - ``on_data``: called as ``on_data(peer, data)`` for every Data indication
      and ChannelData message (RFC 8656 §11.4, §12.6); set it any time
    - ``dropped``: count of malformed or unexpected packets dropped
    - ``write_paused``: True while a TCP/TLS connection's send buffer is
      full (Twisted paused this client as its producer). Data sent then is
      still queued in memory; a bulk sender should wait until it is False.

    Work is a method returning a Deferred. ``send_indication`` and
    ``send_channel_data`` return nothing: indications and ChannelData have
    no response (RFC 8656 §11, §12.4), so there is nothing to wait for.

    While an allocation exists the client refreshes it, its permissions and
    its channel bindings before they expire (RFC 8656 §8, §9, §12), unless
    made with ``keep_alive=False``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        server: Address,
        transport: str,
        username: str,
        password: str,
        realm: str | None = None,
        *,
        software: str | None = None,
        rto_seconds: float = RTO_SECONDS,
        rc: int = RC,
        rm: int = RM,
        keep_alive: bool = True,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.clock = clock
        self.server = server
        self.transport = transport
        self.reliable = transport != "udp"
        self.credentials = LongTermCredentials(username, password, realm)
        self.software = software
        self.keep_alive = keep_alive
        self.on_data: OnData | None = None
        self.relayed_address: Address | None = None
        self.mapped_address: Address | None = None
        self.lifetime_seconds: int | None = None
        self.dropped = 0
        self.write_paused = False
        self._timing = {"rto_seconds": rto_seconds, "rc": rc, "rm": rm}
        self._pending: dict[bytes, _Pending] = {}
        self._write: Callable[[bytes], Any] = _not_connected
        self._disconnect: Callable[[], Any] | None = None
        self._closed = False  # close() called, or the connection is gone
        self._gone = False  # the socket or connection is gone
        self._closed_waiters: list[Deferred] = []
        # Data path state.
        self._channel_peers: dict[int, Address] = {}
        self._peer_channels: dict[Address, int] = {}
        self._channel_heads: dict[tuple[int, int], bytes] = {}
        self._peer_tlvs: dict[Address, bytes] = {}
        self._tid_prefix = os.urandom(4)
        self._indications = int.from_bytes(os.urandom(8), "big")
        # Keep-alive bookkeeping: when each item was last (re)installed.
        self._requested_lifetime = DEFAULT_LIFETIME_SECONDS
        self._allocation_expires = 0.0
        self._permissions: dict[str, float] = {}
        self._channels_bound: dict[int, float] = {}
        self._housekeeping: LoopingCall | None = None

    def __repr__(self) -> str:
        return f"<TurnClient {self.transport} {self.server[0]}:{self.server[1]} relayed={self.relayed_address}>"

    @property
    def realm(self) -> str | None:
        return self.credentials.realm

    @property
    def channels(self) -> dict[int, Address]:
        """Bound channels: channel number -> peer (a copy)."""
        return dict(self._channel_peers)

    # -- requests: RFC 8656 §7, §8, §10, §12 ------------------------------------------

    def allocate(self, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS) -> Deferred:
        """Allocate a UDP relayed transport address (RFC 8656 §7.1, §7.3).

        Fires with the relayed (host, port); also sets ``relayed_address``,
        ``mapped_address`` and ``lifetime_seconds``. Fails with TurnError
        (e.g. 437 Allocation Mismatch, 441 Wrong Credentials, 486 Quota),
        RealmMismatch, TransactionTimeout or ConnectionClosed.
        """
        return Deferred.fromCoroutine(self._allocate(lifetime_seconds))

    async def _allocate(self, lifetime_seconds: int) -> Address:
        def build(message: Message) -> None:
            message.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(UDP_PROTOCOL_NUMBER))
            message.add(Attr.LIFETIME, encode_uint32(lifetime_seconds))

        response = await self._request(Method.ALLOCATE, build)
        relayed = response.address(Attr.XOR_RELAYED_ADDRESS)
        if relayed is None:
            raise TurnError(Error.BAD_REQUEST, "success without XOR-RELAYED-ADDRESS", Method.ALLOCATE)
        self.relayed_address = relayed
        self.mapped_address = response.address(Attr.XOR_MAPPED_ADDRESS)
        self._requested_lifetime = lifetime_seconds
        self._granted(response, lifetime_seconds)
        self._start_housekeeping()
        log.debug("allocated {relayed} on {server}", relayed=relayed, server=self.server)
        return relayed

    def refresh(self, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS) -> Deferred:
        """Refresh the allocation (RFC 8656 §8.1); 0 deletes it.

        Fires with the lifetime the server granted (0 after a delete). Fails
        with TurnError (437 when there is no allocation) or the errors of
        ``allocate``.
        """
        return Deferred.fromCoroutine(self._refresh(lifetime_seconds))

    async def _refresh(self, lifetime_seconds: int) -> int:
        def build(message: Message) -> None:
            message.add(Attr.LIFETIME, encode_uint32(lifetime_seconds))

        response = await self._request(Method.REFRESH, build)
        granted = self._granted(response, lifetime_seconds)
        if lifetime_seconds == 0:
            self._forget_allocation()
        else:
            self._requested_lifetime = lifetime_seconds
        return granted

    def create_permission(self, peers: Iterable[Address]) -> Deferred:
        """Install or refresh permissions for the peers' IP addresses (RFC 8656 §10.1).

        One request carries one XOR-PEER-ADDRESS per peer; the server ignores
        the ports (§9). Fires with None. Fails with TurnError (403 Forbidden
        when the server's policy refuses a peer) or the errors of ``allocate``.
        """
        return Deferred.fromCoroutine(self._create_permission(list(peers)))

    async def _create_permission(self, peers: list[Address]) -> None:
        if not peers:
            raise ValueError("create_permission needs at least one peer")

        def build(message: Message) -> None:
            for peer in peers:
                message.add_address(Attr.XOR_PEER_ADDRESS, peer)

        await self._request(Method.CREATE_PERMISSION, build)
        now = self.clock.seconds()
        for host, _ in peers:
            self._permissions[host] = now

    def channel_bind(self, channel: int, peer: Address) -> Deferred:
        """Bind a channel number (0x4000-0x4FFF) to a peer (RFC 8656 §12.1).

        The binding also installs a permission for the peer's IP (§12.2).
        Binding the same pair again refreshes it. Fires with None. Fails with
        ValueError for a number out of range, TurnError (400 when the channel
        or peer is already bound otherwise) or the errors of ``allocate``.
        """
        if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise ValueError(f"channel {channel:#06x} is outside {CHANNEL_MIN:#06x}-{CHANNEL_MAX:#06x}")
        return Deferred.fromCoroutine(self._channel_bind(channel, tuple(peer)))

    async def _channel_bind(self, channel: int, peer: Address) -> None:
        def build(message: Message) -> None:
            message.add(Attr.CHANNEL_NUMBER, encode_uint16(channel))
            message.add_address(Attr.XOR_PEER_ADDRESS, peer)

        await self._request(Method.CHANNEL_BIND, build)
        now = self.clock.seconds()
        previous = self._channel_peers.get(channel)
        if previous is not None and previous != peer:
            self._peer_channels.pop(previous, None)
        self._channel_peers[channel] = peer
        self._peer_channels[peer] = channel
        self._channels_bound[channel] = now
        self._permissions[peer[0]] = now

    def close(self, deallocate: bool = True, timeout_seconds: float = CLOSE_TIMEOUT_SECONDS) -> Deferred:
        """Delete the allocation (Refresh with LIFETIME 0, RFC 8656 §8) and close.

        The delete is best effort, bounded by ``timeout_seconds``. Fires with
        None once the socket or connection is closed (a TCP/TLS connection
        the server has not closed within CLOSE_TIMEOUT_SECONDS is aborted);
        never fails.
        """
        return Deferred.fromCoroutine(self._close(deallocate, timeout_seconds))

    async def _close(self, deallocate: bool, timeout_seconds: float) -> None:
        self._stop_housekeeping()
        if deallocate and self.relayed_address is not None and not self._closed:
            attempt = self.refresh(0)
            attempt.addTimeout(timeout_seconds, self.clock)
            try:
                await attempt
            except Exception as e:  # noqa: BLE001 (best effort: the allocation expires anyway)
                log.debug("delete of {relayed} failed: {error}", relayed=self.relayed_address, error=e)
        self._forget_allocation()
        if not self._closed:
            waiter = self.when_closed()
            self._closed = True
            if self._disconnect is not None:
                self._disconnect()
            self._fail_pending(ConnectionClosed("client closed"))
            await waiter

    def when_closed(self) -> Deferred:
        """A Deferred that fires with None when the socket or connection is gone."""
        if self._gone:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    # -- data path: RFC 8656 §11 and §12.4-§12.6 ---------------------------------------

    def send(self, peer: Address, data: bytes) -> None:
        """Send to a peer by the cheapest way available: its channel if bound, else a Send indication."""
        channel = self._peer_channels.get(peer)
        if channel is None:
            self.send_indication(peer, data)
        else:
            self.send_channel_data(channel, data)

    def send_channel_data(self, channel: int, data: bytes) -> None:
        """Send application data on a bound channel as ChannelData (RFC 8656 §12.5).

        Over TCP and TLS the frame is padded to 4 bytes (§12.5). Raises
        KeyError for a channel this client has not bound; over UDP, OSError
        (BlockingIOError) when the socket's send buffer is full.
        """
        head = self._channel_heads.get((channel, len(data)))
        if head is None:
            head = self._channel_head(channel, len(data))
        if self.reliable:
            self._write(head + data + _PADDING[len(data) & 3])
        else:
            self._write(head + data)

    def send_indication(self, peer: Address, data: bytes) -> None:
        """Send application data to a peer in a Send indication (RFC 8656 §11.1).

        The server drops it unless a permission for the peer's IP exists.
        The transaction id is a random per-client prefix and a counter, so
        no randomness is drawn per packet. Over UDP, raises OSError
        (BlockingIOError) when the socket's send buffer is full.
        """
        self._indications = (self._indications + 1) & 0xFFFFFFFFFFFFFFFF
        tlv = self._peer_tlvs.get(peer)
        if tlv is None:
            tlv = self._peer_tlv(peer)
        size = len(data)
        pad = _PADDING[size & 3]
        header = _INDICATION_HEADER.pack(
            _SEND_INDICATION, len(tlv) + 4 + size + len(pad), MAGIC_COOKIE, self._tid_prefix, self._indications
        )
        self._write(header + tlv + _TLV.pack(Attr.DATA, size) + data + pad)

    def _channel_head(self, channel: int, size: int) -> bytes:
        if channel not in self._channel_peers:
            raise KeyError(f"channel {channel:#06x} is not bound")
        if len(self._channel_heads) >= _HEADER_CACHE_LIMIT:
            self._channel_heads.clear()
        head = self._channel_heads[(channel, size)] = _CHANNEL_HEADER.pack(channel, size)
        return head

    def _peer_tlv(self, peer: Address) -> bytes:
        if ipaddress.ip_address(peer[0]).version == 4:
            # An IPv4 XOR-PEER-ADDRESS is XOR-ed with the cookie only (RFC 8489 §14.2): cacheable.
            value = encode_xor_address(peer, b"\0" * 12)
            tlv = _TLV.pack(Attr.XOR_PEER_ADDRESS, len(value)) + value
            if len(self._peer_tlvs) >= _HEADER_CACHE_LIMIT:
                self._peer_tlvs.clear()
            self._peer_tlvs[peer] = tlv
            return tlv
        tid = self._tid_prefix + self._indications.to_bytes(8, "big")
        value = encode_xor_address(peer, tid)
        return _TLV.pack(Attr.XOR_PEER_ADDRESS, len(value)) + value

    def _packet(self, packet: bytes) -> None:
        """One datagram or stream frame from the server: data, or a response."""
        if not packet:
            self.dropped += 1
            return
        first = packet[0]
        if 0x40 <= first <= 0x4F:  # ChannelData, RFC 8656 §12.6 / RFC 7983
            if len(packet) < 4:
                self.dropped += 1
                return
            peer = self._channel_peers.get((first << 8) | packet[1])
            end = 4 + ((packet[2] << 8) | packet[3])
            if peer is None or end > len(packet):
                self.dropped += 1
                return
            on_data = self.on_data
            if on_data is not None:
                on_data(peer, packet[4:end])
            return
        if first & 0xC0:
            self.dropped += 1
            return
        if first == 0 and len(packet) >= 20 and packet[1] == _DATA_INDICATION:
            self._data_indication(packet)
            return
        try:
            message = Message.decode(packet)
        except CodecError as e:
            self.dropped += 1
            log.debug("dropped a malformed message from {server}: {error}", server=self.server, error=e)
            return
        if message.cls in (Class.SUCCESS, Class.ERROR):
            self._response(message)
        else:
            self.dropped += 1

    def _data_indication(self, packet: bytes) -> None:
        """A Data indication: XOR-PEER-ADDRESS and DATA (RFC 8656 §11.4), parsed in place."""
        length = (packet[2] << 8) | packet[3]
        end = 20 + length
        if end != len(packet) or packet[4:8] != MAGIC_COOKIE_BYTES:
            self.dropped += 1
            return
        offset = 20
        peer_value = data = None
        while offset + 4 <= end:
            attr_type, size = _TLV.unpack_from(packet, offset)
            value_end = offset + 4 + size
            if value_end > end:
                break
            if attr_type == Attr.XOR_PEER_ADDRESS and peer_value is None:
                peer_value = packet[offset + 4 : value_end]
            elif attr_type == Attr.DATA and data is None:
                data = packet[offset + 4 : value_end]
            offset = value_end + (-size & 3)
        if peer_value is None or data is None:
            self.dropped += 1
            return
        try:
            peer = decode_xor_address(peer_value, packet[8:20])
        except CodecError:
            self.dropped += 1
            return
        on_data = self.on_data
        if on_data is not None:
            on_data(peer, data)

    # -- transactions: RFC 8489 §6.2, §9.2 -------------------------------------------

    async def _request(self, method: int, build: Callable[[Message], None]) -> Message:
        """Send a request, answering 401/438 challenges; the success response.

        Each attempt is a new transaction (RFC 8489 §9.2.5: the retry is a
        new request). Fails with TurnError for any other error response.
        """
        for _ in range(MAX_CHALLENGES + 1):
            message = Message(method, Class.REQUEST)
            build(message)
            if self.software:
                message.add(Attr.SOFTWARE, self.software.encode("utf-8"))
            signed = self.credentials.ready
            key = self.credentials.key if signed else None
            data = self.credentials.sign(message) if signed else message.encode()
            response = await self._transact(data, key)
            if response.cls is Class.SUCCESS:
                return response
            code, reason = _error(response)
            if code in (Error.UNAUTHENTICATED, Error.STALE_NONCE) and self.credentials.challenge(
                response, code, signed
            ):
                continue
            raise TurnError(code, reason, method)
        raise TurnError(code, reason, method)

    def _transact(self, data: bytes, key: bytes | None) -> Deferred:
        """One transaction: fires with the first valid response to ``data``."""
        if self._closed:
            raise ConnectionClosed("client is closed")
        now = self.clock.seconds()
        transaction = ClientTransaction(data, now, reliable=self.reliable, **self._timing)
        tid = transaction.transaction_id
        done: Deferred = Deferred(lambda _: self._forget(tid))
        timer = self.clock.callLater(transaction.deadline - now, self._expire, tid)
        self._pending[tid] = _Pending(transaction, done, timer, key)
        self._write(data)
        return done

    def _response(self, response: Message) -> None:
        pending = self._pending.get(response.transaction_id)
        if pending is None:
            return  # a late answer to a retransmission, or not ours
        # RFC 8489 §9.2.5: an unverifiable response is discarded as if never
        # received. Error responses without MESSAGE-INTEGRITY are accepted: a
        # server cannot sign a 401/438, and accepting another error only ends
        # a request early.
        must_verify = response.cls is Class.SUCCESS or Attr.MESSAGE_INTEGRITY in response or (
            Attr.MESSAGE_INTEGRITY_SHA256 in response
        )
        if pending.key is not None and must_verify and not response.check_integrity(pending.key):
            self.dropped += 1
            log.warn("dropped a response from {server} that fails MESSAGE-INTEGRITY", server=self.server)  # noqa: G010
            return
        if not pending.transaction.receive(response):
            return
        del self._pending[response.transaction_id]
        pending.timer.cancel()
        pending.done.callback(response)

    def _expire(self, tid: bytes) -> None:
        pending = self._pending.get(tid)
        if pending is None:
            return
        transaction = pending.transaction
        again = transaction.expire(self.clock.seconds())
        if transaction.deadline is None:
            del self._pending[tid]
            pending.done.errback(
                TransactionTimeout(f"no response from {self.server[0]}:{self.server[1]} ({self.transport})")
            )
            return
        if again is not None and not self._gone:
            self._write(again)
        pending.timer = self.clock.callLater(transaction.deadline - self.clock.seconds(), self._expire, tid)

    def _forget(self, tid: bytes) -> None:
        pending = self._pending.pop(tid, None)
        if pending is not None and pending.timer.active():
            pending.timer.cancel()

    def _fail_pending(self, reason: Exception) -> None:
        while self._pending:
            _, pending = self._pending.popitem()
            if pending.timer.active():
                pending.timer.cancel()
            pending.done.errback(reason)

    def _granted(self, response: Message, asked: int) -> int:
        value = response.get(Attr.LIFETIME)
        try:
            granted = decode_uint32(value) if value is not None else asked
        except CodecError:
            granted = asked
        self.lifetime_seconds = granted
        self._allocation_expires = self.clock.seconds() + granted
        return granted

    # -- keep-alive: RFC 8656 §8, §9, §12 ---------------------------------------------

    def _start_housekeeping(self) -> None:
        if not self.keep_alive or self._housekeeping is not None:
            return
        self._housekeeping = LoopingCall(self._keep_alive)
        self._housekeeping.clock = self.clock
        self._housekeeping.start(HOUSEKEEPING_INTERVAL_SECONDS, now=False).addErrback(
            lambda f: log.failure("TURN keep-alive stopped", f)
        )

    def _stop_housekeeping(self) -> None:
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        self._housekeeping = None

    def _keep_alive(self) -> None:
        """Refresh what is about to expire; failures are logged, not raised."""
        if self.relayed_address is None or self._closed:
            return
        now = self.clock.seconds()
        margin = min(ALLOCATION_REFRESH_MARGIN_SECONDS, (self.lifetime_seconds or 0) / 2)
        if now >= self._allocation_expires - margin - HOUSEKEEPING_INTERVAL_SECONDS:
            self.refresh(self._requested_lifetime).addErrback(self._keep_alive_failed, "refresh")
        for channel, bound in list(self._channels_bound.items()):
            if now - bound >= CHANNEL_REFRESH_SECONDS:
                peer = self._channel_peers[channel]
                self.channel_bind(channel, peer).addErrback(self._keep_alive_failed, "channel bind")
        due = [(host, 0) for host, at in self._permissions.items() if now - at >= PERMISSION_REFRESH_SECONDS]
        if due:
            self.create_permission(due).addErrback(self._keep_alive_failed, "permission refresh")

    def _keep_alive_failed(self, failure: Any, what: str) -> None:
        if failure.check(ConnectionClosed):
            return
        log.warn("TURN {what} on {server} failed: {error}", what=what, server=self.server,  # noqa: G010
                 error=failure.getErrorMessage())

    def _forget_allocation(self) -> None:
        self._stop_housekeeping()
        self.relayed_address = None
        self._permissions.clear()
        self._channels_bound.clear()

    # -- transport adapters call these ----------------------------------------------

    def _attach(self, write: Callable[[bytes], Any], disconnect: Callable[[], Any]) -> None:
        self._write = write
        self._disconnect = disconnect

    def _connection_lost(self, reason: Exception | None = None) -> None:
        self._closed = True
        self._gone = True
        self._write = _not_connected
        self._disconnect = None
        self._stop_housekeeping()
        self._fail_pending(ConnectionClosed(str(reason) if reason else "connection closed"))
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _not_connected(data: bytes) -> None:
    raise ConnectionClosed("the client is not connected")


def _error(response: Message) -> tuple[int, str]:
    value = response.get(Attr.ERROR_CODE)
    if value is None:
        return Error.BAD_REQUEST, "error response without ERROR-CODE"
    try:
        code, reason = decode_error_code(value)
        return code, reason.strip(" \0")
    except CodecError:
        return Error.BAD_REQUEST, "malformed ERROR-CODE"


class _DatagramAdapter(DatagramProtocol):
    """Moves datagrams between a UDP socket and a TurnClient; only the server's are read."""

    noisy = False

    def __init__(self, client: TurnClient) -> None:
        self.client = client
        self.server = client.server

    def startProtocol(self) -> None:
        # The socket is deliberately not connect()ed: an ICMP error on a
        # connected socket makes the epoll reactor close the port. Writes go
        # straight to sendto, skipping the per-datagram address checks of
        # Twisted's Port.write; a full socket buffer raises BlockingIOError.
        sendto = self.transport.getHandle().sendto
        server = self.server

        def write(data: bytes) -> None:
            sendto(data, server)

        self.client._attach(write, self.transport.stopListening)
        read_loop(self.transport, self.datagramReceived)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if addr == self.server:
            self.client._packet(data)
        else:
            self.client.dropped += 1

    def stopProtocol(self) -> None:
        self.client._connection_lost()


@implementer(IHandshakeListener, IPushProducer)
class _StreamAdapter(Protocol):
    """Moves frames between a TCP/TLS connection and a TurnClient (RFC 8489 §6.2.2).

    It registers itself as the connection's producer, so the client's
    ``write_paused`` follows the transport's send buffer.
    """

    def __init__(self, client: TurnClient, tls: bool = False) -> None:
        self.client = client
        self.framer = StreamFramer()
        self.handshake: Deferred | None = Deferred() if tls else None
        self._abort = None

    def handshakeCompleted(self) -> None:
        if self.handshake is not None and not self.handshake.called:
            self.handshake.callback(None)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.client._attach(self.transport.write, self.disconnect)

    def disconnect(self) -> None:
        """Close the connection, aborting it when the server has not closed it within CLOSE_TIMEOUT_SECONDS.

        The producer goes first: over TLS, loseConnection waits for a
        registered producer to be unregistered before it sends close_notify.
        """
        if self._abort is not None or self.transport is None:
            return
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abort = self.client.clock.callLater(CLOSE_TIMEOUT_SECONDS, self.transport.abortConnection)

    def pauseProducing(self) -> None:
        self.client.write_paused = True

    def resumeProducing(self) -> None:
        self.client.write_paused = False

    def stopProducing(self) -> None:
        self.client.write_paused = True

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except CodecError as e:
            log.warn("closing the stream to {server}: {error}", server=self.client.server, error=e)  # noqa: G010
            self.client.dropped += 1
            self.disconnect()
            return
        packet = self.client._packet
        for frame in frames:
            packet(frame)

    def connectionLost(self, reason: Any = None) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self.handshake is not None and not self.handshake.called:
            self.handshake.errback(reason)
        self.client._connection_lost(reason.value if reason is not None else None)


# -- front door -------------------------------------------------------------------------


def tls_options(
    hostname: str,
    verify: bool = True,
    ca_file: str | None = None,
) -> Any:
    """Client TLS options offering ALPN "stun.turn" (RFC 7443).

    With ``verify`` (the default) the server certificate must chain to the
    platform's trust store, or to ``ca_file`` (PEM) when given, and match
    ``hostname`` (a DNS name or an IP address). ``verify=False`` accepts any
    certificate: for self-signed development servers only.
    """
    if not verify:
        return ssl.CertificateOptions(verify=False, acceptableProtocols=[ALPN_STUN_TURN])
    trust_root = None
    if ca_file is not None:
        with open(ca_file, "rb") as f:
            trust_root = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, acceptableProtocols=[ALPN_STUN_TURN])


def connect(
    reactor: Any,
    server: Address,
    transport: str = "udp",
    *,
    username: str,
    password: str,
    realm: str | None = None,
    tls_verify: bool = True,
    tls_ca_file: str | None = None,
    tls_hostname: str | None = None,
    endpoint: Any = None,
    bind_ip: str | None = None,
    connect_timeout_seconds: float = 10.0,
    socket_buffer_bytes: int | None = None,
    **options: Any,
) -> Deferred:
    """Open a socket or connection to a TURN server; fires with a TurnClient.

    ``server`` is (host, port); a host name is resolved first. ``transport``
    is "udp", "tcp" or "tls" (TURN over TLS, RFC 8656 §3.1). For UDP a local
    socket is bound (to ``bind_ip``, default all addresses of the server's
    family, port 0) and connected to the server, so only its datagrams are
    read. For TCP and TLS an ``endpoint`` may be passed instead of letting
    this build one; TLS verification is described in :func:`tls_options`.
    ``socket_buffer_bytes`` sets SO_RCVBUF and SO_SNDBUF of the UDP socket
    (the kernel caps it at net.core.rmem_max / wmem_max), for high rates.
    ``realm``, when given, pins the realm: a different one in the server's
    401 fails the first request with RealmMismatch. Other keyword
    ``options`` go to :class:`TurnClient` (software, rto_seconds, rc, rm,
    keep_alive).

    Fails with DNSLookupError, ConnectError (refused, timed out) or an
    SSL error for a TLS handshake that fails verification.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    return Deferred.fromCoroutine(
        _connect(reactor, tuple(server), transport, username, password, realm, tls_verify, tls_ca_file,
                 tls_hostname, endpoint, bind_ip, connect_timeout_seconds, socket_buffer_bytes, options)
    )


async def _connect(reactor, server, transport, username, password, realm, tls_verify, tls_ca_file,
                   tls_hostname, endpoint, bind_ip, connect_timeout_seconds, socket_buffer_bytes,
                   options) -> TurnClient:
    host, port = server
    if transport == "udp":
        ip = str(ipaddress.ip_address(host if _is_ip(host) else await reactor.resolve(host)))
        client = TurnClient(reactor, (ip, port), transport, username, password, realm, **options)
        adapter = _DatagramAdapter(client)
        if bind_ip is None:
            bind_ip = "::" if ipaddress.ip_address(ip).version == 6 else "0.0.0.0"
        port = reactor.listenUDP(0, adapter, interface=bind_ip, maxPacketSize=65536)
        if socket_buffer_bytes:
            set_socket_buffers(port.getHandle(), socket_buffer_bytes)
        return client
    client = TurnClient(reactor, (host, port), transport, username, password, realm, **options)
    if endpoint is None:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout_seconds,
                                    bindAddress=(bind_ip, 0) if bind_ip else None)
        if transport == "tls":
            endpoint = wrapClientTLS(tls_options(tls_hostname or host, tls_verify, tls_ca_file), endpoint)
    adapter = _StreamAdapter(client, tls=transport == "tls")
    await connectProtocol(endpoint, adapter)
    if transport == "tls":
        # Wait for the handshake so a certificate that fails verification
        # fails connect() rather than the first request.
        await adapter.handshake
    return client


def set_socket_buffers(sock: socket.socket, size_bytes: int) -> None:
    """Ask for SO_RCVBUF and SO_SNDBUF of size_bytes; the kernel may grant less."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size_bytes)
        except OSError as e:
            log.debug("could not set socket buffer: {error}", error=e)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
