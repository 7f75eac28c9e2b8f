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
from rendezvous.stun.addresses import Address
from rendezvous.stun.attributes import decode_uint16
from rendezvous.stun.framing import CHANNEL_MAX, CHANNEL_MIN
from rendezvous.stun.replies import success_response

from .allocation import Allocation
from .peer_policy import Reach
from .server_auth import Auth


class Refused(Exception):
    """A request the tables refuse: its error code and reason (None: the code's own phrase)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def create_permission(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """CreatePermission (RFC 8656 §10.2): install or refresh a permission per XOR-PEER-ADDRESS."""
    allocation = server._owned(msg, five_tuple, auth)
    if isinstance(allocation, bytes):
        return allocation
    peers = msg.addresses(Attr.XOR_PEER_ADDRESS)
    if not peers:
        return server._error(msg, Error.BAD_REQUEST, "XOR-PEER-ADDRESS missing", auth)
    permit_peers(server, allocation, peers, now)
    return server._sign(success_response(msg), auth)


def permit_peers(server, allocation: Allocation, peers: list[Address], now: float) -> None:
    """Install or refresh a permission per peer (RFC 8656 §10.2 steps after the request's own checks),
    or raise Refused (403, 443, 508) with nothing installed."""
    reaches = server._reach(allocation, peers)
    held = allocation.permissions.keys() | allocation.own_hosts.keys()
    new = {host for host, _ in peers} - held
    if len(allocation.permissions) + len(allocation.own_hosts) + len(new) > server.policy.max_permissions:
        raise Refused(Error.INSUFFICIENT_CAPACITY, "Too many permissions")
    for peer, reach in zip(peers, reaches):
        server._permit(allocation, peer, reach, now)


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
    bind(server, allocation, decode_uint16(number_value), peers[0], now)
    return server._sign(success_response(msg), auth)


def bind(server, allocation: Allocation, number: int, peer: Address, now: float) -> None:
    """Bind or refresh channel number to peer (RFC 8656 §12.2 steps after the request's own checks),
    or raise Refused (400, 403, 443, 508) with nothing bound."""
    if not CHANNEL_MIN <= number <= CHANNEL_MAX:
        raise Refused(Error.BAD_REQUEST, "channel number out of range")
    reach = server._reach(allocation, [peer], endpoint=True)[0]
    if number not in allocation.channels and len(allocation.channels) >= server.policy.max_channels:
        raise Refused(Error.INSUFFICIENT_CAPACITY, "Too many channels")
    key = peer[0] if reach is Reach.HOST else peer
    if key not in allocation.permissions and len(allocation.permissions) >= server.policy.max_permissions:
        raise Refused(Error.INSUFFICIENT_CAPACITY, "Too many permissions")
    reason = allocation.bind_channel(number, peer, now, endpoint=reach is not Reach.HOST)
    if reason:
        raise Refused(Error.BAD_REQUEST, reason)
    if reach is Reach.RELAYED:
        allocation.relayed_peers.add(peer)
