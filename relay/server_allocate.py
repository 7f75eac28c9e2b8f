"""Allocate and Refresh: the TURN server's handlers that make, keep and delete allocations.

RFC 8656 §7.2 (Allocate, its numbered steps quoted below), §8 (Refresh;
LIFETIME 0 deletes) and RFC 6062 §5.1 (Allocate with REQUESTED-TRANSPORT
TCP, over a TCP or TLS connection). RFC 8489 §10: a draining server answers
300 Try Alternate. Relayed transport addresses come from the core's
injected ``ports``; an Allocate whose RESERVATION-TOKEN another worker holds
is answered later, when that worker hands the socket over. Functions over
the ``TurnServer`` core (``relay.server``); handlers take
``(server, msg, five_tuple, send, auth, now)``.
"""

import os
import random

from twisted.internet.defer import Deferred

from rendezvous.stun import Attr, Error, Message
from rendezvous.stun.attributes import (
    decode_address_family,
    decode_even_port,
    decode_requested_transport,
    decode_reservation_token,
    decode_uint32,
    encode_address_error_code,
    encode_uint32,
)
from rendezvous.stun.constants import AddressFamily
from rendezvous.stun.replies import error_response, success_response

from .allocation import Allocation, TokenBucket, family_of
from .server_auth import Auth
from .server_permissions import Refused

UDP = 17
TCP = 6
# Allocation ids (an operator's handle on one, relay.admin): 48 bits from a PRNG seeded once, not a
# getrandom call per allocation; they need to be unique, not secret (the admin API takes a token).
_ids = random.Random(os.urandom(32))


class NoRelayPort(Exception):
    """No relayed transport address could be bound (answered with 508)."""


def draining(server, msg, auth: Auth) -> bytes:
    """300 Try Alternate with ALTERNATE-SERVER (RFC 8489 §10), or 508 without one."""
    if server.alternate is None:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Draining", auth)
    response = error_response(msg, Error.TRY_ALTERNATE)
    response.add_address(Attr.ALTERNATE_SERVER, server.alternate)
    return server._sign(response, auth)


def allocate(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """Allocate (RFC 8656 §7.2): a relayed transport address per family asked for; None: answered later."""
    policy = server.policy
    if five_tuple in server.pending:
        # Its reserved relay socket is on its way from another worker:
        # the answer goes out when it arrives; a retransmission waits.
        return None
    existing = server.allocations.get(five_tuple)
    if server.draining and existing is None:
        return draining(server, msg, auth)
    # 2. An existing allocation on this five-tuple: a retransmission
    #    gets the cached success response, anything else 437.
    if existing is not None:
        if existing.transaction_id == msg.transaction_id and existing.response:
            return existing.response
        return server._error(msg, Error.ALLOCATION_MISMATCH, auth=auth)
    # 3. REQUESTED-TRANSPORT must be present and UDP.
    transport = msg.get(Attr.REQUESTED_TRANSPORT)
    if transport is None:
        return server._error(msg, Error.BAD_REQUEST, "REQUESTED-TRANSPORT missing", auth)
    protocol = decode_requested_transport(transport)
    # LIFETIME (step 10) is read before anything is opened or counted: a malformed one gets 400 and holds nothing.
    requested_lifetime(msg)
    if protocol == TCP and server.tcp is not None and five_tuple[0] != "udp":
        return allocate_tcp(server, msg, five_tuple, send, auth, now)
    if protocol != UDP:
        return server._error(msg, Error.UNSUPPORTED_TRANSPORT_PROTOCOL, auth=auth)
    # 4. DONT-FRAGMENT is honoured by the relay sockets (IP_PMTUDISC_DO).
    dont_fragment = Attr.DONT_FRAGMENT in msg
    # 5. RESERVATION-TOKEN goes with neither EVEN-PORT nor a family attribute.
    token = msg.get(Attr.RESERVATION_TOKEN)
    even = msg.get(Attr.EVEN_PORT)
    requested = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
    additional = msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
    if additional is None:
        additional = msg.get(Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY)  # coturn's clients
    if token is not None and (even is not None or requested is not None or additional is not None):
        return server._error(msg, Error.BAD_REQUEST, "RESERVATION-TOKEN with EVEN-PORT or a family", auth)
    # 6. Not both families attributes.
    if requested is not None and additional is not None:
        return server._error(msg, Error.BAD_REQUEST, "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY", auth)
    # 7. The family asked for (IPv4 without REQUESTED-ADDRESS-FAMILY) must be served here: 440.
    family = 6 if requested is not None and decode_address_family(requested) == AddressFamily.IPV6 else 4
    if family not in policy.families:
        return server._error(msg, Error.ADDRESS_FAMILY_NOT_SUPPORTED, auth=auth)
    if token is not None:
        return allocate_reserved(server, msg, five_tuple, send, auth, now, decode_reservation_token(token))
    # 8. EVEN-PORT with the R bit (a reserved pair) and a dual allocation do not go together.
    reserve_next = decode_even_port(even) if even is not None else False
    if reserve_next and additional is not None:
        return server._error(msg, Error.BAD_REQUEST, "EVEN-PORT R with ADDITIONAL-ADDRESS-FAMILY", auth)
    # 9. ADDITIONAL-ADDRESS-FAMILY asks for an IPv6 address beside the IPv4 one (never IPv4: 400).
    extras = []
    if additional is not None:
        if decode_address_family(additional) != AddressFamily.IPV6:
            return server._error(msg, Error.BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6", auth)
        extras = [6]
    # 10. Quotas: the allocation is counted now, and uncounted if it is not made.
    #     A port reserved for later (EVEN-PORT R) counts as one more until it is
    #     taken or expires.
    refused = quota(server, msg, auth, 2 if reserve_next else 1)
    if refused:
        return refused
    # The relayed transport addresses. The first family must be had (508);
    # of a dual allocation's second, a failure is told in ADDRESS-ERROR-CODE
    # (440 for a family not served here, 508 for no port).
    try:
        relay, reservation = open_relay(server, auth, family, even is not None, reserve_next, dont_fragment)
    except Refused as e:
        return server._error(msg, e.code, e.reason, auth)
    relays, failed = {family: relay}, {}
    for extra in extras:
        if extra not in policy.families:
            failed[extra] = Error.ADDRESS_FAMILY_NOT_SUPPORTED
            continue
        try:
            relays[extra], _ = server.ports.open(extra, even=even is not None, dont_fragment=dont_fragment)
        except NoRelayPort:
            failed[extra] = Error.INSUFFICIENT_CAPACITY
    return allocated(server, msg, five_tuple, send, auth, now, relays, failed, reservation)


def allocate_reserved(server, msg, five_tuple, send, auth: Auth, now, token: bytes) -> bytes | None:
    """Allocate the port a RESERVATION-TOKEN holds (RFC 8656 §7.2 steps 5 and 9); None: answered later.

    Taking the port ends its reservation (and the count it held), so the
    quota (step 8) is checked once the socket is here.
    """
    relay = server.ports.take_reserved(token)
    if isinstance(relay, Deferred):
        server.pending[five_tuple] = msg.transaction_id
        relay.addCallback(reserved_arrived, server, msg, five_tuple, send, auth)
        return None
    if relay is None:
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "Unknown RESERVATION-TOKEN", auth)
    refused = quota(server, msg, auth)
    if refused:
        relay.close()
        return refused
    family = family_of(relay.address[0])
    return allocated(server, msg, five_tuple, send, auth, now, {family: relay}, {}, None)


def reserved_arrived(relay, server, msg, five_tuple, send, auth: Auth) -> None:
    """Finish an Allocate whose RESERVATION-TOKEN another worker held (relay None: it had none)."""
    connected = server.pending.pop(five_tuple, None) is not None  # not, if the client left meanwhile
    refused = None
    if relay is None:
        refused = server._error(msg, Error.INSUFFICIENT_CAPACITY, "Unknown RESERVATION-TOKEN", auth)
    elif server.draining:
        refused = draining(server, msg, auth)
    elif connected:
        refused = quota(server, msg, auth)
    if refused is not None or not connected:
        if relay is not None:
            relay.close()
        if connected:
            send(refused)
        return
    family = family_of(relay.address[0])
    send(allocated(server, msg, five_tuple, send, auth, server.clock.seconds(), {family: relay}, {}, None))


_FAMILY_ERRORS = {Error.ADDRESS_FAMILY_NOT_SUPPORTED: "Address Family not Supported",
                  Error.INSUFFICIENT_CAPACITY: "Insufficient Capacity"}


def allocated(server, msg, five_tuple, send, auth: Auth, now, relays: dict, failed: dict,
              reservation: bytes | None) -> bytes:
    """Install the allocation over relays and sign the success response (RFC 8656 §7.2): an
    XOR-RELAYED-ADDRESS per relay, an ADDRESS-ERROR-CODE per family of failed (family -> error)."""
    allocation, lifetime = install(server, msg.transaction_id, requested_lifetime(msg), five_tuple, send, auth, now,
                                   relays)
    response = success_response(msg)
    for relay in relays.values():
        response.add_address(Attr.XOR_RELAYED_ADDRESS, relay.address)
    draft = Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY in msg and Attr.ADDITIONAL_ADDRESS_FAMILY not in msg
    for family, error in failed.items():
        response.add(
            Attr.DRAFT_ADDRESS_ERROR_CODE if draft else Attr.ADDRESS_ERROR_CODE,
            encode_address_error_code(AddressFamily.IPV6 if family == 6 else AddressFamily.IPV4, error,
                                      _FAMILY_ERRORS[error]),
        )
    response.add(Attr.LIFETIME, encode_uint32(lifetime))
    if reservation is not None:
        response.add(Attr.RESERVATION_TOKEN, reservation)
    response.add_address(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
    allocation.response = server._sign(response, auth)
    return allocation.response


def quota(server, msg: Message, auth: Auth, count: int = 1) -> bytes | None:
    """Count the allocation (and a reservation), or 486 past the per-user quota, 508 past the total
    (RFC 8656 §7.2 step 8)."""
    try:
        claim(server, auth, count)
    except Refused as e:
        return server._error(msg, e.code, e.reason, auth)
    return None


def claim(server, auth: Auth, count: int = 1) -> None:
    """Count the allocation (and a reservation), or raise Refused: 486 past the per-user quota, 508 past
    the total (RFC 8656 §7.2 step 8)."""
    refused = server.counts.claim(auth.username, server.policy.user_quota, server.policy.total_quota, count)
    if refused == Error.ALLOCATION_QUOTA_REACHED:
        raise Refused(Error.ALLOCATION_QUOTA_REACHED)
    if refused is not None:
        raise Refused(Error.INSUFFICIENT_CAPACITY, "Server at capacity")


def open_relay(server, auth: Auth, family: int, even: bool = False, reserve_next: bool = False,
               dont_fragment: bool = False) -> tuple:
    """The relayed transport address of a counted allocation and its reservation token (or None); or
    raise Refused (508) with the count released."""
    try:
        return server.ports.open(family, even=even, reserve_next=reserve_next, dont_fragment=dont_fragment,
                                 release=lambda: server.counts.release(auth.username))
    except NoRelayPort:
        server.counts.release(auth.username, 2 if reserve_next else 1)
        raise Refused(Error.INSUFFICIENT_CAPACITY, "No relay port available") from None


def install(server, transaction_id: bytes, requested: int | None, five_tuple, send, auth: Auth, now, relays,
            tcp: bool = False) -> tuple[Allocation, int]:
    """Create and register an allocation over relays, for the lifetime requested (None: the default);
    returns it and its lifetime."""
    lifetime = granted_lifetime(server, requested, auth, now)
    bucket = TokenBucket(server.policy.max_bps, server.clock) if server.policy.max_bps else None
    allocation = Allocation(
        five_tuple, transaction_id, auth.username, auth, relays, now + lifetime, send, bucket,
    )
    allocation.tcp = tcp
    allocation.decide = server._endpoint_reach
    for relay in relays.values():
        relay.allocation = allocation
    server.allocations[five_tuple] = allocation
    server._hold_relayed(allocation, True)
    server.counters["allocations"] += 1
    allocation_id = f"{server.id_prefix}-{_ids.getrandbits(48):012x}"
    server.records[five_tuple] = (allocation_id, now)
    server.by_id[allocation_id] = five_tuple
    server.allocation_log.made(allocation_id, allocation, lifetime)
    return allocation, lifetime


def allocate_tcp(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """Allocate with REQUESTED-TRANSPORT TCP over a TCP/TLS control connection (RFC 6062 §5.1)."""
    for attr_type in (Attr.DONT_FRAGMENT, Attr.RESERVATION_TOKEN, Attr.EVEN_PORT, Attr.ADDITIONAL_ADDRESS_FAMILY,
                      Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY):
        if attr_type in msg:
            return server._error(msg, Error.BAD_REQUEST, f"{Attr(attr_type).name} with a TCP allocation", auth)
    requested = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
    family = 6 if requested is not None and decode_address_family(requested) == AddressFamily.IPV6 else 4
    if family not in server.policy.families:
        return server._error(msg, Error.ADDRESS_FAMILY_NOT_SUPPORTED, auth=auth)
    refused = quota(server, msg, auth)
    if refused:
        return refused
    try:
        endpoint = server.tcp.open(family)
    except OSError:
        server.counts.release(auth.username)
        return server._error(msg, Error.INSUFFICIENT_CAPACITY, "No relay port available", auth)
    allocation, lifetime = install(server, msg.transaction_id, requested_lifetime(msg), five_tuple, send, auth, now,
                                   {family: endpoint}, tcp=True)
    response = success_response(msg)
    response.add_address(Attr.XOR_RELAYED_ADDRESS, endpoint.address)
    response.add(Attr.LIFETIME, encode_uint32(lifetime))
    response.add_address(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
    allocation.response = server._sign(response, auth)
    return allocation.response


def requested_lifetime(msg: Message) -> int | None:
    """The LIFETIME the request asks for, or None (CodecError when it is not 4 bytes)."""
    value = msg.get(Attr.LIFETIME)
    return None if value is None else decode_uint32(value)


def granted_lifetime(server, requested: int | None, auth: Auth, now: float) -> int:
    """RFC 8656 §7.2 step 10 / §8: requested, clamped to [default, max]."""
    policy = server.policy
    lifetime = policy.default_lifetime_seconds
    if requested is not None:
        lifetime = max(policy.default_lifetime_seconds, min(requested, policy.max_lifetime_seconds))
    if policy.expire_with_credential and auth.keys.expires_at is not None:
        lifetime = min(lifetime, max(0, int(auth.keys.expires_at - now)))
    return lifetime


def refresh(server, msg, five_tuple, send, auth: Auth, now) -> bytes:
    """Refresh (RFC 8656 §8.2): a new lifetime, or LIFETIME 0 deletes the allocation."""
    allocation = server._owned(msg, five_tuple, auth)
    if isinstance(allocation, bytes):
        return allocation
    requested_family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
    if requested_family is not None:
        family = 6 if decode_address_family(requested_family) == AddressFamily.IPV6 else 4
        if family not in allocation.relays:
            return server._error(msg, Error.PEER_ADDRESS_FAMILY_MISMATCH, auth=auth)
    response = success_response(msg)
    response.add(Attr.LIFETIME, encode_uint32(refreshed(server, allocation, requested_lifetime(msg), auth, now)))
    return server._sign(response, auth)


def refreshed(server, allocation: Allocation, requested: int | None, auth: Auth, now: float) -> int:
    """Give allocation the lifetime granted for requested (RFC 8656 §8.2), or delete it for 0; that lifetime."""
    if requested == 0:
        server._delete(allocation, "refreshed to 0")
        return 0
    lifetime = granted_lifetime(server, requested, auth, now)
    allocation.expires_at = now + lifetime
    return lifetime
