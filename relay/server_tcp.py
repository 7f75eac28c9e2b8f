"""Connect and ConnectionBind: the TURN server's handlers for TCP peers (RFC 6062).

RFC 6062 §5.2 (Connect: a TCP connection from the relayed address to a
peer, answered when it is up or has failed) and §5.4 (ConnectionBind: a new
client connection becomes the data leg of a peer connection, which another
worker may hold). The TCP allocation itself is made by
``relay.server_allocate.allocate_tcp`` (§5.1); the sockets are
``relay.tcp_relay``'s. Functions over the ``TurnServer`` core
(``relay.server``).
"""

from twisted.logger import Logger

from rendezvous.stun import Attr, Error
from rendezvous.stun.addresses import address_text
from rendezvous.stun.attributes import decode_uint32, encode_uint32
from rendezvous.stun.replies import success_response

from .server_auth import Auth

log = Logger()


def connect(server, msg, five_tuple, send, auth: Auth, now) -> bytes | None:
    """Connect (RFC 6062 §5.2): open a TCP connection to the peer; answer when it is up."""
    allocation = server._owned(msg, five_tuple, auth)
    if isinstance(allocation, bytes):
        return allocation
    if not allocation.tcp:
        return server._error(msg, Error.BAD_REQUEST, "Connect needs a TCP allocation", auth)
    peers = msg.addresses(Attr.XOR_PEER_ADDRESS)
    if len(peers) != 1:
        return server._error(msg, Error.BAD_REQUEST, "one XOR-PEER-ADDRESS required", auth)
    peer = peers[0]
    reaches = server._reach(allocation, peers, endpoint=True)
    endpoint = next(iter(allocation.relays.values()))
    if any(c.peer == peer for c in endpoint.connections.values()):
        return server._error(msg, Error.CONNECTION_ALREADY_EXISTS, auth=auth)
    server._permit(allocation, peer, reaches[0], now, endpoint=True)

    def connected(connection_id: int) -> None:
        response = success_response(msg)
        response.add(Attr.CONNECTION_ID, encode_uint32(connection_id))
        send(server._sign(response, auth))

    def failed(reason) -> None:
        send(server._error(msg, Error.CONNECTION_TIMEOUT_OR_FAILURE, auth=auth))

    server.tcp.connect(endpoint, peer).addCallbacks(connected, failed)
    return None


def connection_bind(server, msg, five_tuple, leg, auth: Auth, now) -> bytes:
    """ConnectionBind (RFC 6062 §5.4): make this new connection the data leg of a peer connection."""
    if five_tuple in server.allocations or leg is None or server.tcp is None:
        return server._error(msg, Error.BAD_REQUEST, "ConnectionBind needs a fresh TCP connection", auth)
    value = msg.get(Attr.CONNECTION_ID)
    if value is None:
        return server._error(msg, Error.BAD_REQUEST, "CONNECTION-ID missing", auth)
    connection_id = decode_uint32(value)
    owner = server.tcp.owner_elsewhere(connection_id)
    if owner is not None:
        # Another worker holds the peer connection: it answers instead.
        if server.tcp.pass_connection(owner, leg, msg.raw):
            return None
        return server._error(msg, Error.BAD_REQUEST, "Unknown CONNECTION-ID", auth)
    connection = server.tcp.take(connection_id)
    allocation = connection.endpoint.allocation if connection else None
    if allocation is None:
        return server._error(msg, Error.BAD_REQUEST, "Unknown CONNECTION-ID", auth)
    if allocation.username != auth.username:
        return server._error(msg, Error.WRONG_CREDENTIALS, auth=auth)
    response = server._sign(success_response(msg), auth)
    allocation_id, _ = server.records.get(allocation.five_tuple, ("?", now))
    log.info("connection {connection} to {peer} of allocation {allocation} bound from {client}",
             connection=connection.connection_id, peer=address_text(connection.peer),
             allocation=allocation_id, client=address_text(five_tuple[1]))
    leg.splice(connection, response)
    return None
