"""CreatePermission and ChannelBind: the TURN server's handlers for what an allocation may reach.

RFC 8656 §10.2 (CreatePermission: a permission for the IP of each
XOR-PEER-ADDRESS, §9) and §12.2 (ChannelBind: a channel number for one peer,
which also installs its permission), both bounded by the policy's
per-allocation quotas (508 past them). Peers are checked against the peer policy (403) and
the allocation's address families (443); a channel to a host of the relay's own is refused
unless its transport address is open (``relay.peer_policy.Reach``), while a permission
there leaves each transport address to be decided on its first Send (``relay.allocation``). Functions over the ``TurnServer``
core (``relay.server``).
"""

from rendezvous.stun import Attr, Error
from rendezvous.stun.attributes import decode_uint16
from rendezvous.stun.framing import CHANNEL_MAX, CHANNEL_MIN
from rendezvous.stun.replies import success_response

from .peer_policy import Reach
from .server_auth import Auth


def create_permission(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """CreatePermission (RFC 8656 §10.2): install or refresh a permission per XOR-PEER-ADDRESS."""
    allocation = server._owned(msg, five_tuple, auth)
    if isinstance(allocation, bytes):
        return allocation
    peers = msg.addresses(Attr.XOR_PEER_ADDRESS)
    if not peers:
        return server._error(msg, Error.BAD_REQUEST, "XOR-PEER-ADDRESS missing", auth)
    reaches = server._reach(msg, allocation, peers, auth)
    if isinstance(reaches, bytes):
        return reaches
    held = allocation.permissions.keys() | allocation.own_hosts.keys()
    new = {host for host, _ in peers} - held
    if len(allocation.permissions) + len(allocation.own_hosts) + len(new) > server.policy.max_permissions:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many permissions", auth)
    for peer, reach in zip(peers, reaches):
        server._permit(allocation, peer, reach, now)
    return server._sign(success_response(msg), auth)


def channel_bind(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """ChannelBind (RFC 8656 §12.2): bind or refresh a channel number to one peer."""
    allocation = server._owned(msg, five_tuple, auth)
    if isinstance(allocation, bytes):
        return allocation
    if allocation.tcp:
        return server._error(msg, Error.BAD_REQUEST, "no channels on a TCP allocation", auth)
    number_value, peers = msg.get(Attr.CHANNEL_NUMBER), msg.addresses(Attr.XOR_PEER_ADDRESS)
    if number_value is None or len(peers) != 1:
        return server._error(msg, Error.BAD_REQUEST, "CHANNEL-NUMBER and one XOR-PEER-ADDRESS required", auth)
    number = decode_uint16(number_value)
    if not CHANNEL_MIN <= number <= CHANNEL_MAX:
        return server._error(msg, Error.BAD_REQUEST, "channel number out of range", auth)
    reaches = server._reach(msg, allocation, peers, auth, endpoint=True)
    if isinstance(reaches, bytes):
        return reaches
    peer, reach = peers[0], reaches[0]
    if number not in allocation.channels and len(allocation.channels) >= server.policy.max_channels:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many channels", auth)
    key = peer[0] if reach is Reach.HOST else peer
    if key not in allocation.permissions and len(allocation.permissions) >= server.policy.max_permissions:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many permissions", auth)
    reason = allocation.bind_channel(number, peer, now, endpoint=reach is not Reach.HOST)
    if reason:
        return server._error(msg, Error.BAD_REQUEST, reason, auth)
    if reach is Reach.RELAYED:
        allocation.relayed_peers.add(peer)
    return server._sign(success_response(msg), auth)
