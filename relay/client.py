"""A TURN client on Twisted: one allocation on one TURN server.

RFC 8656 (TURN): §7 creating an allocation (Allocate), §8 refreshing it
(Refresh, LIFETIME 0 deletes it), §9-§10 permissions (CreatePermission),
§11 Send and Data indications, §12 channels (ChannelBind, §12.4 ChannelData,
§12.5 its padding over TCP and TLS). RFC 8489 (STUN): §9.2 long-term
credentials (§9.2.2 the MD5 key, §9.2.3 first and subsequent requests,
§9.2.5 401 Unauthenticated and 438 Stale Nonce), §6.2.1 retransmission over
UDP and §6.2.2 a single send over TCP and TLS. RFC 7443 (ALPN "stun.turn").

The wire work is ``rendezvous.stun`` (sans-IO). This module holds the
client and its data path; beside it, ``relay.client_transports`` holds
``connect`` (re-exported here: the front door), ``tls_options`` and the
socket adapters, ``relay.client_auth`` the credentials and errors,
``relay.client_transactions`` the request/response bookkeeping and
``relay.client_allocation`` what each request records and the keep-alive
that repeats them. The data path is kept lean: ChannelData and Send
indications are written from cached, pre-encoded headers and received Data
indications and ChannelData are parsed without building ``Message``
objects, because a relay load test or a media flow sends tens of thousands
of them a second.

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
import struct
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun.addresses import Address, decode_xor_address, encode_xor_address
from rendezvous.stun.constants import MAGIC_COOKIE, MAGIC_COOKIE_BYTES, AddressFamily
from rendezvous.stun.message import message_type
from rendezvous.stun.transaction import RC, RM, RTO_SECONDS, TransactionTimeout

from . import client_allocation
from .client_auth import ConnectionClosed, LongTermCredentials, RealmMismatch, TurnError
from .client_transactions import Pending, fail_pending, receive_response
from .client_transports import CLOSE_TIMEOUT_SECONDS, TRANSPORTS, connect, set_socket_buffers, tls_options

__all__ = ["ConnectionClosed", "RealmMismatch", "TransactionTimeout", "TurnClient", "TurnError", "connect",
           "set_socket_buffers", "tls_options"]

log = Logger()

MINUTE = 60
DEFAULT_LIFETIME_SECONDS = 10 * MINUTE  # RFC 8656 §7: the default allocation lifetime

# Channel numbers a client picks, RFC 8656 §12 (RFC 5766 allowed up to 0x7FFF;
# the codec's framing accepts those, but a client sticks to the current range).
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF

OnData = Callable[[Address, bytes], Any]

_SEND_INDICATION = message_type(Method.SEND, Class.INDICATION)
_DATA_INDICATION = message_type(Method.DATA, Class.INDICATION)
_INDICATION_HEADER = struct.Struct("!HHI4sQ")  # type, length, cookie, 96-bit transaction id
_CHANNEL_HEADER = struct.Struct("!HH")
_TLV = struct.Struct("!HH")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4
_HEADER_CACHE_LIMIT = 256


class TurnClient:
    """One TURN allocation on one server, over one UDP socket or TCP/TLS connection.

    Make one with :func:`connect`. Known data are attributes:

    - ``server``: the server's (host, port); ``transport``: "udp", "tcp" or "tls"
    - ``relayed_address`` / ``mapped_address``: from the Allocate response
      (XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS), None before;
      ``relayed_addresses``: every XOR-RELAYED-ADDRESS (two for a dual allocation)
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
        self.relayed_addresses: list[Address] = []
        self.mapped_address: Address | None = None
        self.lifetime_seconds: int | None = None
        self.dropped = 0
        self.write_paused = False
        self._timing = {"rto_seconds": rto_seconds, "rc": rc, "rm": rm}
        self._pending: dict[bytes, Pending] = {}  # requests in flight: relay.client_transactions
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
        # Keep-alive bookkeeping (relay.client_allocation): when each item was last (re)installed.
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
    def allocated(self) -> bool:
        """An allocation is live: made, neither deleted nor expired, its socket or connection open."""
        return (self.relayed_address is not None and not self._closed
                and self.clock.seconds() < self._allocation_expires)

    @property
    def channels(self) -> dict[int, Address]:
        """Bound channels: channel number -> peer (a copy)."""
        return dict(self._channel_peers)

    # -- requests: RFC 8656 §7, §8, §10, §12 ------------------------------------------

    def allocate(self, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS, *, family: AddressFamily | None = None,
                 additional_family: AddressFamily | None = None) -> Deferred:
        """Allocate a UDP relayed transport address (RFC 8656 §7.1, §7.3).

        ``family`` asks for that family (REQUESTED-ADDRESS-FAMILY; the server's
        default is IPv4), ``additional_family`` for an IPv6 address beside the
        IPv4 one (ADDITIONAL-ADDRESS-FAMILY: a dual allocation). Fires with
        the first relayed (host, port); also sets ``relayed_address``,
        ``relayed_addresses`` (one per family granted), ``mapped_address``
        and ``lifetime_seconds``. Fails with TurnError
        (e.g. 437 Allocation Mismatch, 441 Wrong Credentials, 486 Quota),
        RealmMismatch, TransactionTimeout or ConnectionClosed.
        """
        return Deferred.fromCoroutine(client_allocation.allocate(self, lifetime_seconds, family, additional_family))

    def refresh(self, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS) -> Deferred:
        """Refresh the allocation (RFC 8656 §8.1); 0 deletes it.

        Fires with the lifetime the server granted (0 after a delete). Fails
        with TurnError (437 when there is no allocation) or the errors of
        ``allocate``.
        """
        return Deferred.fromCoroutine(client_allocation.refresh(self, lifetime_seconds))

    def create_permission(self, peers: Iterable[Address]) -> Deferred:
        """Install or refresh permissions for the peers' IP addresses (RFC 8656 §10.1).

        One request carries one XOR-PEER-ADDRESS per peer; the server ignores
        the ports (§9). Fires with None. Fails with TurnError (403 Forbidden
        when the server's policy refuses a peer) or the errors of ``allocate``.
        """
        return Deferred.fromCoroutine(client_allocation.create_permission(self, list(peers)))

    def channel_bind(self, channel: int, peer: Address) -> Deferred:
        """Bind a channel number (0x4000-0x4FFF) to a peer (RFC 8656 §12.1).

        The binding also installs a permission for the peer's IP (§12.2).
        Binding the same pair again refreshes it. Fires with None. Fails with
        ValueError for a number out of range, TurnError (400 when the channel
        or peer is already bound otherwise) or the errors of ``allocate``.
        """
        if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise ValueError(f"channel {channel:#06x} is outside {CHANNEL_MIN:#06x}-{CHANNEL_MAX:#06x}")
        return Deferred.fromCoroutine(client_allocation.channel_bind(self, channel, tuple(peer)))

    def close(self, deallocate: bool = True, timeout_seconds: float = CLOSE_TIMEOUT_SECONDS) -> Deferred:
        """Delete the allocation (Refresh with LIFETIME 0, RFC 8656 §8) and close.

        The delete is best effort, bounded by ``timeout_seconds``. Fires with
        None once the socket or connection is closed (a TCP/TLS connection
        the server has not closed within CLOSE_TIMEOUT_SECONDS is aborted);
        never fails.
        """
        return Deferred.fromCoroutine(self._close(deallocate, timeout_seconds))

    async def _close(self, deallocate: bool, timeout_seconds: float) -> None:
        client_allocation.stop_housekeeping(self)
        if deallocate and self.relayed_address is not None and not self._closed:
            attempt = self.refresh(0)
            attempt.addTimeout(timeout_seconds, self.clock)
            try:
                await attempt
            except Exception as e:  # noqa: BLE001 (best effort: the allocation expires anyway)
                log.debug("delete of {relayed} failed: {error}", relayed=self.relayed_address, error=e)
        client_allocation.forget_allocation(self)
        if not self._closed:
            waiter = self.when_closed()
            self._closed = True
            if self._disconnect is not None:
                self._disconnect()
            fail_pending(self, ConnectionClosed("client closed"))
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
            receive_response(self, message)
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

    # -- transport adapters call these ----------------------------------------------

    def _attach(self, write: Callable[[bytes], Any], disconnect: Callable[[], Any]) -> None:
        self._write = write
        self._disconnect = disconnect

    def _connection_lost(self, reason: Exception | None = None) -> None:
        self._closed = True
        self._gone = True
        self._write = _not_connected
        self._disconnect = None
        client_allocation.stop_housekeeping(self)
        fail_pending(self, ConnectionClosed(str(reason) if reason else "connection closed"))
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _not_connected(data: bytes) -> None:
    raise ConnectionClosed("the client is not connected")
