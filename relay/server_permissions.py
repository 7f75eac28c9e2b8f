"""CreatePermission and ChannelBind: the TURN server's handlers for what an allocation may reach.

RFC 8656 §10.2 (CreatePermission: a permission for the IP of each
XOR-PEER-ADDRESS, §9) and §12.2 (ChannelBind: a channel number for one peer,
which also installs its permission), both bounded by the policy's
per-allocation quotas (508 past them). Peers are checked against the peer policy (403) and
the allocation's address families (443). Functions over the ``TurnServer``
core (``relay.server``).
"""

from rendezvous.stun import Attr, Error
from rendezvous.stun.attributes import decode_uint16
from rendezvous.stun.framing import CHANNEL_MAX, CHANNEL_MIN
from rendezvous.stun.replies import success_response

from .server_auth import Auth


def create_permission(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """CreatePermission (RFC 8656 §10.2): install or refresh a permission per XOR-PEER-ADDRESS."""
    allocation = server._owned(msg, five_tuple, auth)
    if isinstance(allocation, bytes):
        return allocation
    peers = msg.addresses(Attr.XOR_PEER_ADDRESS)
    if not peers:
        return server._error(msg, Error.BAD_REQUEST, "XOR-PEER-ADDRESS missing", auth)
    refused = server._check_peers(msg, allocation, peers, auth)
    if refused:
        return refused
    new = {host for host, _ in peers if host not in allocation.permissions}
    if len(allocation.permissions) + len(new) > server.policy.max_permissions:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many permissions", auth)
    for host, _ in peers:
        allocation.permit(host, now)
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
    refused = server._check_peers(msg, allocation, peers, auth)
    if refused:
        return refused
    if number not in allocation.channels and len(allocation.channels) >= server.policy.max_channels:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many channels", auth)
    if peers[0][0] not in allocation.permissions and len(allocation.permissions) >= server.policy.max_permissions:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Too many permissions", auth)
    reason = allocation.bind_channel(number, peers[0], now)
    if reason:
        return server._error(msg, Error.BAD_REQUEST, reason, auth)
    return server._sign(success_response(msg), auth)
