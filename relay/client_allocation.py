"""What a TurnClient's allocation requests send and record, and the keep-alive that repeats them.

RFC 8656: §7.1 and §7.3 Allocate, §8 Refresh (LIFETIME 0 deletes the
allocation), §10.1 CreatePermission (permissions last 5 minutes, §9), §12.1
ChannelBind (bindings last 10 minutes, §12). Each request records when it
installed what; the housekeeping loop refreshes each item before it
expires. These are functions over the client's bookkeeping; the public
methods (``TurnClient.allocate`` ...) are in ``relay.client``.
"""

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rendezvous.stun import Attr, CodecError, Message, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.attributes import (decode_uint32, encode_address_family, encode_requested_transport,
                                       encode_uint16, encode_uint32)
from rendezvous.stun.constants import AddressFamily, Error

from .client_auth import ConnectionClosed, TurnError
from .client_transactions import request

log = Logger()  # twisted.logger: .warn, not .warning (hence the G010 noqa marks)

MINUTE = 60
PERMISSION_LIFETIME_SECONDS = 5 * MINUTE  # RFC 8656 §9
CHANNEL_LIFETIME_SECONDS = 10 * MINUTE  # RFC 8656 §12
PERMISSION_REFRESH_SECONDS = PERMISSION_LIFETIME_SECONDS - MINUTE  # refresh one minute before expiry
CHANNEL_REFRESH_SECONDS = CHANNEL_LIFETIME_SECONDS - MINUTE
ALLOCATION_REFRESH_MARGIN_SECONDS = MINUTE
HOUSEKEEPING_INTERVAL_SECONDS = 15
UDP_PROTOCOL_NUMBER = 17  # REQUESTED-TRANSPORT value, RFC 8656 §18.7


async def allocate(client, lifetime_seconds: int, family: AddressFamily | None = None,
                   additional_family: AddressFamily | None = None) -> Address:
    """Allocate (RFC 8656 §7.1): REQUESTED-TRANSPORT UDP, REQUESTED- or ADDITIONAL-ADDRESS-FAMILY
    when given; record the relayed (one per family, §7.3) and mapped addresses."""

    def build(message: Message) -> None:
        message.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(UDP_PROTOCOL_NUMBER))
        message.add(Attr.LIFETIME, encode_uint32(lifetime_seconds))
        if family is not None:
            message.add(Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(family))
        if additional_family is not None:
            message.add(Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(additional_family))

    response = await request(client, Method.ALLOCATE, build)
    relayed = response.address(Attr.XOR_RELAYED_ADDRESS)
    if relayed is None:
        raise TurnError(Error.BAD_REQUEST, "success without XOR-RELAYED-ADDRESS", Method.ALLOCATE)
    client.relayed_address = relayed
    client.relayed_addresses = response.addresses(Attr.XOR_RELAYED_ADDRESS)
    client.mapped_address = response.address(Attr.XOR_MAPPED_ADDRESS)
    client._requested_lifetime = lifetime_seconds
    record_lifetime(client, response, lifetime_seconds)
    start_housekeeping(client)
    log.debug("allocated {relayed} on {server}", relayed=relayed, server=client.server)
    return relayed


async def refresh(client, lifetime_seconds: int) -> int:
    """Refresh (RFC 8656 §8.1); LIFETIME 0 deletes the allocation, and the client forgets it."""

    def build(message: Message) -> None:
        message.add(Attr.LIFETIME, encode_uint32(lifetime_seconds))

    response = await request(client, Method.REFRESH, build)
    granted = record_lifetime(client, response, lifetime_seconds)
    if lifetime_seconds == 0:
        forget_allocation(client)
    else:
        client._requested_lifetime = lifetime_seconds
    return granted


async def create_permission(client, peers: list[Address]) -> None:
    """CreatePermission (RFC 8656 §10.1): one XOR-PEER-ADDRESS per peer; record when each IP was permitted."""
    if not peers:
        raise ValueError("create_permission needs at least one peer")

    def build(message: Message) -> None:
        for peer in peers:
            message.add_address(Attr.XOR_PEER_ADDRESS, peer)

    await request(client, Method.CREATE_PERMISSION, build)
    now = client.clock.seconds()
    for host, _ in peers:
        client._permissions[host] = now


async def channel_bind(client, channel: int, peer: Address) -> None:
    """ChannelBind (RFC 8656 §12.1); record the binding both ways and the permission it installs (§12.2)."""

    def build(message: Message) -> None:
        message.add(Attr.CHANNEL_NUMBER, encode_uint16(channel))
        message.add_address(Attr.XOR_PEER_ADDRESS, peer)

    await request(client, Method.CHANNEL_BIND, build)
    now = client.clock.seconds()
    previous = client._channel_peers.get(channel)
    if previous is not None and previous != peer:
        client._peer_channels.pop(previous, None)
    client._channel_peers[channel] = peer
    client._peer_channels[peer] = channel
    client._channels_bound[channel] = now
    client._permissions[peer[0]] = now


def record_lifetime(client, response: Message, asked: int) -> int:
    """The LIFETIME an Allocate or Refresh success granted (``asked`` when absent), recorded on the client."""
    value = response.get(Attr.LIFETIME)
    try:
        granted = decode_uint32(value) if value is not None else asked
    except CodecError:
        granted = asked
    client.lifetime_seconds = granted
    client._allocation_expires = client.clock.seconds() + granted
    return granted


def start_housekeeping(client) -> None:
    """Start refreshing the allocation, permissions and channels, unless made with ``keep_alive=False``."""
    if not client.keep_alive or client._housekeeping is not None:
        return
    client._housekeeping = LoopingCall(keep_alive, client)
    client._housekeeping.clock = client.clock
    client._housekeeping.start(HOUSEKEEPING_INTERVAL_SECONDS, now=False).addErrback(
        lambda f: log.failure("TURN keep-alive stopped", f)
    )


def stop_housekeeping(client) -> None:
    if client._housekeeping is not None and client._housekeeping.running:
        client._housekeeping.stop()
    client._housekeeping = None


def keep_alive(client) -> None:
    """Refresh what is about to expire; failures are logged, not raised."""
    if client.relayed_address is None or client._closed:
        return
    now = client.clock.seconds()
    margin = min(ALLOCATION_REFRESH_MARGIN_SECONDS, (client.lifetime_seconds or 0) / 2)
    if now >= client._allocation_expires - margin - HOUSEKEEPING_INTERVAL_SECONDS:
        client.refresh(client._requested_lifetime).addErrback(keep_alive_failed, client, "refresh")
    for channel, bound in list(client._channels_bound.items()):
        if now - bound >= CHANNEL_REFRESH_SECONDS:
            peer = client._channel_peers[channel]
            client.channel_bind(channel, peer).addErrback(keep_alive_failed, client, "channel bind")
    due = [(host, 0) for host, at in client._permissions.items() if now - at >= PERMISSION_REFRESH_SECONDS]
    if due:
        client.create_permission(due).addErrback(keep_alive_failed, client, "permission refresh")


def keep_alive_failed(failure: Any, client, what: str) -> None:
    """Log a failed refresh; a closed client's failures are expected and not logged."""
    if failure.check(ConnectionClosed):
        return
    log.warn("TURN {what} on {server} failed: {error}", what=what, server=client.server,  # noqa: G010
             error=failure.getErrorMessage())


def forget_allocation(client) -> None:
    """The allocation is gone (deleted, or the client closed): stop refreshing it."""
    stop_housekeeping(client)
    client.relayed_address = None
    client.relayed_addresses = []
    client._permissions.clear()
    client._channels_bound.clear()
