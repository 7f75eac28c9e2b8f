"""Allocation state and the relay data path (RFC 8656 §2.2, §9, §11, §12).

An ``Allocation`` belongs to one client five-tuple and owns one relayed
transport address per address family. It holds permissions (peer IP ->
expiry, RFC 8656 §9) and channel bindings (RFC 8656 §12). Expiry is swept
once a second by ``TurnServer.expire``; the data path then only asks whether
a key is present, which keeps per-packet work to a few dict lookups.

Towards a host of the relay's own (``relay.peer_policy.Reach``) a permission
is kept apart, in ``own_hosts``: data from it is let in, but data to it goes
only to transport addresses decided one by one, on the first Send to each
(``decide``, refusing the relay's own endpoints and relayed ports no live
allocation holds), and then kept as keys of ``permissions`` (or of
``refused``, until the next sweep). No
Message objects are built on the data path: ChannelData and Data
indications are packed by hand, and Send indications parsed by hand
(``parse_send_indication``). ``bench/relay_datapath.py`` times it.
"""

import functools
import os
import random
import struct
from typing import Callable, Protocol

from rendezvous.stun import CodecError, integrity
from rendezvous.stun.addresses import Address, decode_xor_address, encode_xor_address
from rendezvous.stun.constants import MAGIC_COOKIE, MAGIC_COOKIE_BYTES, Attr

from .peer_policy import Reach

PERMISSION_LIFETIME_SECONDS = 300
CHANNEL_LIFETIME_SECONDS = 600
# RFC 8656 §12: after a channel binding expires, neither its number nor its
# peer may be bound to anything else for 5 minutes.
CHANNEL_COOLDOWN_SECONDS = 300
# Transport addresses at hosts of the relay's own remembered per allocation, allowed and refused each.
ENDPOINT_CACHE = 1024

_CHANNEL_HEADER = struct.Struct("!HH")
_DATA_INDICATION_TYPE = b"\x00\x17"
_SEND_INDICATION_TYPE = 0x0016
_STUN_HEADER = struct.Struct("!HHI12s")
_TLV = struct.Struct("!HH")
_MAC_TYPES = (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256)
# Transaction ids of Data indications: nothing answers or matches them (RFC
# 8656 §11.4), so a seeded PRNG serves, without a getrandom call per packet.
_indication_ids = random.Random(os.urandom(32))


class RelayEndpoint(Protocol):
    """A relayed transport address: a bound UDP socket towards peers."""

    address: Address

    def write(self, data: bytes, peer: Address) -> None: ...

    def close(self) -> None: ...


def family_of(host: str) -> int:
    """4 or 6."""
    return 6 if ":" in host else 4


@functools.lru_cache(maxsize=4096)
def _ipv4_peer_attribute(peer: Address) -> bytes:
    """XOR-PEER-ADDRESS for an IPv4 peer: it XORs with the magic cookie only, so it is cached."""
    value = encode_xor_address(peer, b"\0" * 12)
    return _TLV.pack(Attr.XOR_PEER_ADDRESS, len(value)) + value


def data_indication(peer: Address, data: bytes) -> bytes:
    """A Data indication carrying data from peer (RFC 8656 §11.4)."""
    tid = _indication_ids.randbytes(12)
    if ":" in peer[0]:
        peer_value = encode_xor_address(peer, tid)
        peer_attribute = _TLV.pack(Attr.XOR_PEER_ADDRESS, len(peer_value)) + peer_value
    else:
        peer_attribute = _ipv4_peer_attribute(peer)
    n = len(data)
    padding = -n % 4
    return b"".join(
        (
            _DATA_INDICATION_TYPE,
            (len(peer_attribute) + 4 + n + padding).to_bytes(2, "big"),
            MAGIC_COOKIE_BYTES,
            tid,
            peer_attribute,
            _TLV.pack(Attr.DATA, n),
            data,
            b"\0" * padding,
        )
    )


@functools.lru_cache(maxsize=4096)
def _ipv4_peer(value: bytes) -> Address:
    """An IPv4 XOR-PEER-ADDRESS value decoded; it does not depend on the transaction id."""
    return decode_xor_address(value, b"")


def parse_send_indication(data: bytes) -> tuple[Address, bytes] | None:
    """The peer and payload of a Send indication (RFC 8656 §11.2), or None when it is malformed.

    The attributes are walked in C (``relay._indications``) where it is
    built, else by ``walk_send_indication``; both follow the same rules.
    """
    walked = _walk(data)
    if walked is None:
        return None
    peer_value, payload, tid = walked
    try:
        peer = _ipv4_peer(peer_value) if len(peer_value) == 8 else decode_xor_address(peer_value, tid)
    except CodecError:
        return None
    return peer, payload


def walk_send_indication(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The raw XOR-PEER-ADDRESS value, the DATA and the transaction id of a Send indication, or None.

    None for anything malformed: a bad header, an attribute overrunning the
    message, an attribute after FINGERPRINT, a FINGERPRINT that does not
    match, no XOR-PEER-ADDRESS or no DATA. As in ``Message.decode``, the
    first of a repeated attribute counts and attributes after
    MESSAGE-INTEGRITY are ignored.
    """
    size = len(data)
    if size < 20:
        return None
    msg_type, length, cookie, tid = _STUN_HEADER.unpack_from(data)
    if msg_type != _SEND_INDICATION_TYPE or length + 20 != size or length & 3 or cookie != MAGIC_COOKIE:
        return None
    peer_value = payload = None
    offset = 20
    ignoring = False
    while offset < size:
        if size - offset < 4:
            return None
        attr_type, attr_length = _TLV.unpack_from(data, offset)
        start = offset + 4
        end = start + attr_length
        if end > size:
            return None
        if attr_type == Attr.FINGERPRINT:
            if end + (-attr_length % 4) != size or attr_length != 4:
                return None
            if integrity.fingerprint(data, offset) != int.from_bytes(data[start:end], "big"):
                return None
        elif attr_type in _MAC_TYPES:
            ignoring = True
        elif ignoring:
            pass
        elif attr_type == Attr.XOR_PEER_ADDRESS:
            if peer_value is None:
                peer_value = data[start:end]
        elif attr_type == Attr.DATA:
            if payload is None:
                payload = data[start:end]
        offset = end + (-attr_length % 4)
    if peer_value is None or payload is None:
        return None
    return peer_value, payload, tid


try:
    from ._indications import parse_send as _walk
except ImportError:  # not built (setup.py)
    _walk = walk_send_indication


class Allocation:
    """One client's allocation: relayed addresses, permissions, channels."""

    __slots__ = (
        "five_tuple", "transaction_id", "response", "username", "auth",
        "relays", "expires_at", "permissions", "channels",
        "channel_expiry", "peer_channels", "cooldown", "send", "stream",
        "packets_in", "bytes_in", "packets_out", "bytes_out", "bucket", "tcp", "closed", "routes",
        "own_hosts", "relayed_peers", "refused", "decide",
    )

    def __init__(
        self,
        five_tuple: tuple,
        transaction_id: bytes,
        username: str,
        auth,
        relays: dict[int, RelayEndpoint],
        expires_at: float,
        send: Callable[[bytes], None],
        bucket: "TokenBucket | None" = None,
    ) -> None:
        self.five_tuple = five_tuple
        self.transaction_id = transaction_id
        self.response: bytes | None = None
        self.username = username
        # The relay.server_auth.Auth of the last request authenticated on it (relay.server_fast).
        self.auth = auth
        self.relays = relays
        self.expires_at = expires_at
        # Peer IP, or a transport address decided at a host of the relay's own -> expiry.
        self.permissions: dict[str | Address, float] = {}
        # Hosts of the relay's own with a permission -> expiry.
        self.own_hosts: dict[str, float] = {}
        # Relayed addresses of this relay in permissions: dropped by the sweep when their allocation ends.
        self.relayed_peers: set[Address] = set()
        # Transport addresses at hosts of the relay's own found closed to Sends, until the next sweep.
        self.refused: set[Address] = set()
        # (peer, tcp) -> Reach of one transport address (TurnServer._endpoint_reach).
        self.decide: Callable[[Address, bool], Reach] = lambda peer, tcp: Reach.DENIED
        # number -> (peer, the relay endpoint's write, the peer's key in permissions)
        self.channels: dict[int, tuple[Address, Callable[[bytes, Address], None], str | Address]] = {}
        self.channel_expiry: dict[int, float] = {}
        self.peer_channels: dict[Address, int] = {}
        self.cooldown: dict[object, float] = {}
        self.send = send
        self.stream = five_tuple[0] != "udp"
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.bucket = bucket
        self.tcp = False  # an RFC 6062 TCP allocation
        self.closed = False
        # (table, key) entries that point at this allocation; close() removes them.
        self.routes: list[tuple[dict, object]] = []

    # -- state ------------------------------------------------------------

    def permit(self, host: str, now: float) -> None:
        """Install or refresh a permission for host (RFC 8656 §9)."""
        self.permissions[host] = now + PERMISSION_LIFETIME_SECONDS

    def permit_own(self, host: str, now: float, port: int | None = None) -> Address | None:
        """Install or refresh a permission for a host of the relay's own, with port also for that
        transport address (decided already); the transport address."""
        expires = self.own_hosts[host] = now + PERMISSION_LIFETIME_SECONDS
        if port is None:
            return None
        self.permissions[(host, port)] = expires
        return host, port

    def permitted_hosts(self) -> int:
        """How many peer IPs hold a permission (RFC 8656 §9)."""
        return len(self.own_hosts) + sum(1 for key in self.permissions if isinstance(key, str))

    def admits(self, host: str) -> bool:
        """Whether data from host may reach the client."""
        return host in self.permissions or host in self.own_hosts

    def revoke(self, key: Address) -> None:
        """Drop the permission of one transport address (a relayed address whose allocation ended)."""
        self.permissions.pop(key, None)
        self.relayed_peers.discard(key)

    def bind_channel(self, number: int, peer: Address, now: float, endpoint: bool = False) -> str | None:
        """Bind or refresh a channel (RFC 8656 §12.1); an error reason, or None.

        With endpoint the permission it installs covers peer's transport address only.
        """
        bound = self.channels.get(number)
        if bound is not None and bound[0] != peer:
            return "channel already bound to another peer"
        other = self.peer_channels.get(peer)
        if other is not None and other != number:
            return "peer already bound to another channel"
        for key in (number, peer):
            if bound is None and self.cooldown.get(key, 0) > now:
                return "channel or peer was bound within the last 5 minutes"
        if endpoint:
            key = self.permit_own(peer[0], now, peer[1])
        else:
            key = peer[0]
            self.permit(key, now)
        self.channels[number] = (peer, self.relays[family_of(peer[0])].write, key)
        self.peer_channels[peer] = number
        self.channel_expiry[number] = now + CHANNEL_LIFETIME_SECONDS
        return None

    def expire(self, now: float) -> None:
        """Drop expired permissions and channels."""
        for key in [k for k, t in self.permissions.items() if t <= now]:
            del self.permissions[key]
            self.relayed_peers.discard(key)
        for host in [h for h, t in self.own_hosts.items() if t <= now]:
            del self.own_hosts[host]
        self.refused.clear()
        for number in [n for n, t in self.channel_expiry.items() if t <= now]:
            peer, _, _ = self.channels.pop(number)
            del self.channel_expiry[number]
            del self.peer_channels[peer]
            self.cooldown[number] = self.cooldown[peer] = now + CHANNEL_COOLDOWN_SECONDS
        for key in [k for k, t in self.cooldown.items() if t <= now]:
            del self.cooldown[key]

    def route(self, table: dict, key) -> None:
        """Let table[key] find this allocation on the data path until it closes."""
        table[key] = self
        self.routes.append((table, key))

    def close(self) -> None:
        self.closed = True
        for table, key in self.routes:
            if table.get(key) is self:
                del table[key]
        self.routes = []
        for relay in self.relays.values():
            relay.close()
        self.relays = {}
        self.channels.clear()
        self.peer_channels.clear()
        self.permissions.clear()
        self.own_hosts.clear()
        self.relayed_peers.clear()
        self.refused.clear()

    # -- data path --------------------------------------------------------

    def channel_to_peer(self, frame: bytes) -> None:
        """Relay a client's ChannelData frame to its peer (RFC 8656 §12.6)."""
        if len(frame) < 4:
            return
        number, length = _CHANNEL_HEADER.unpack_from(frame)
        bound = self.channels.get(number)
        if bound is None or length > len(frame) - 4:
            return
        peer, write, key = bound
        if key not in self.permissions:
            return
        if self.bucket is not None and not self.bucket.take(length):
            return
        self.packets_out += 1
        self.bytes_out += length
        write(frame[4 : 4 + length], peer)

    def send_indication(self, data: bytes) -> None:
        """Relay the payload of an encoded Send indication (RFC 8656 §11.2); drop it if malformed."""
        parsed = parse_send_indication(data)
        if parsed is not None:
            self.send_to_peer(*parsed)

    def send_to_peer(self, peer: Address, data: bytes) -> None:
        """Relay the payload of a Send indication (RFC 8656 §11.3)."""
        relay = self.relays.get(family_of(peer[0]))
        if relay is None or (peer[0] not in self.permissions and peer not in self.permissions
                             and not self._decide_endpoint(peer)):
            return
        if self.bucket is not None and not self.bucket.take(len(data)):
            return
        self.packets_out += 1
        self.bytes_out += len(data)
        relay.write(data, peer)

    def _decide_endpoint(self, peer: Address) -> bool:
        """Whether a Send may go to peer at a host of the relay's own with a permission: decided once
        (until the sweep), remembered in permissions or refused; the cache is bounded."""
        expires = self.own_hosts.get(peer[0])
        if expires is None or peer in self.refused:
            return False
        reach = self.decide(peer, self.tcp)
        if reach is Reach.DENIED:
            if len(self.refused) < ENDPOINT_CACHE:
                self.refused.add(peer)
            return False
        if len(self.permissions) < ENDPOINT_CACHE:
            self.permissions[peer] = expires
            if reach is Reach.RELAYED:
                self.relayed_peers.add(peer)
        return True

    def from_peer(self, data: bytes, peer: Address) -> None:
        """Relay a datagram from a peer to the client (RFC 8656 §11.4, §12.6)."""
        if peer[0] not in self.permissions and peer[0] not in self.own_hosts:
            return
        n = len(data)
        if self.bucket is not None and not self.bucket.take(n):
            return
        self.packets_in += 1
        self.bytes_in += n
        number = self.peer_channels.get(peer)
        if number is None:
            self.send(data_indication(peer, data))
        elif self.stream and n & 3:
            self.send(_CHANNEL_HEADER.pack(number, n) + data + b"\0" * (4 - (n & 3)))
        else:
            self.send(_CHANNEL_HEADER.pack(number, n) + data)


class TokenBucket:
    """A bytes-per-second limit with one second of burst."""

    __slots__ = ("rate", "tokens", "stamp", "clock")

    def __init__(self, bytes_per_second: float, clock) -> None:
        self.rate = bytes_per_second
        self.tokens = bytes_per_second
        self.clock = clock
        self.stamp = clock.seconds()

    def take(self, n: int) -> bool:
        now = self.clock.seconds()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True
