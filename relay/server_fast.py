"""A live allocation's Refresh, CreatePermission and ChannelBind, and the opening 401, answered without a Message.

A client signs each request of its allocation with the USERNAME, REALM and
NONCE of the last (RFC 8489 §9.2.4), and most of its requests after Allocate
are Refresh (RFC 8656 §8), CreatePermission (§10) and ChannelBind (§12).
``Allocation.auth`` remembers the last request the Python path
(``relay.server``) authenticated on the allocation; ``answer`` hands a
datagram from the same five-tuple to the C extension ``relay._requests``
(relay/_requests.c), which takes only the common form (those methods,
naming those same values, IPv4 peers, the MD5 key, MESSAGE-INTEGRITY and an
optional FINGERPRINT), walks it and checks its MESSAGE-INTEGRITY and
FINGERPRINT. Every decision stays in Python, as the Python path makes it:
the nonce is asked of ``relay.nonces`` and the keys of the credential
sources (``relay.server_auth``), and the tables change through the
handlers' own functions (``refreshed``, ``permit_peers``, ``bind``). The
response is signed in C, byte for byte as ``Message.encode`` writes it.
From a five-tuple without an allocation, the Allocate a client opens with
(no MESSAGE-INTEGRITY, ``_requests.unsigned_allocate``) gets its 401 (RFC
8489 §9.2.4) after the source's rate limit, as ``relay.server_auth``
answers it. ``answer`` returns None for anything else, and where the
extension is not built: the Python path then answers.
"""

import functools

from rendezvous.stun import Attr, Error
from rendezvous.stun.attributes import encode_error_code, encode_uint32
from rendezvous.stun.constants import REASONS

from .server_allocate import refreshed
from .server_auth import attribute, challenge_to, counted_unauthorized
from .server_permissions import Refused, bind, permit_peers

try:
    from . import _requests
except ImportError:  # not built (setup.py builds it on Linux)
    _requests = None

_ALLOCATE_ERROR = 0x0113  # the type of an Allocate error response
_REFRESH = 0x0004
_CREATE_PERMISSION = 0x0008


@functools.lru_cache(maxsize=4)
def _software(value: bytes | None) -> bytes:
    """The SOFTWARE attribute the core adds to what it signs (TurnServer._sign), encoded once."""
    return attribute(Attr.SOFTWARE, value) if value else b""


def answer(server, data: bytes, five_tuple: tuple) -> bytes | None:
    """The response to a request of five_tuple's allocation, or to the unsigned Allocate a client opens
    with (b"": none, past the 401 rate limit); None: the Python path decides."""
    if _requests is None:
        return None
    allocation = server.allocations.get(five_tuple)
    if allocation is None:
        return _challenged(server, data, five_tuple[1][0]) if _requests.unsigned_allocate(data) else None
    if allocation.tcp:
        return None
    auth = allocation.auth
    if auth.named is None:
        return None
    key = auth.keys.md5
    checked = _requests.check(data, *auth.named, key)
    if checked is None:
        return None
    now = server.clock.seconds()
    if (auth.realm != server.policy.realm or server.nonces.check(auth.nonce, five_tuple[1][0], now) != "valid"
            or auth.keys not in server.credentials.candidates(auth.username, auth.realm, now)):
        return None
    server.counters["requests"] += 1
    method, number, peers = checked
    software = _software(server.software)
    try:
        if method == _REFRESH:
            lifetime = refreshed(server, allocation, number, auth, now)
            return _requests.sign(data, False, attribute(Attr.LIFETIME, encode_uint32(lifetime)) + software, key)
        if method == _CREATE_PERMISSION:
            permit_peers(server, allocation, peers, now)
        else:
            bind(server, allocation, number, peers[0], now)
    except Refused as e:
        server.counters[f"error_{e.code}"] += 1
        error = encode_error_code(e.code, e.reason or REASONS.get(e.code, ""))
        return _requests.sign(data, True, attribute(Attr.ERROR_CODE, error) + software, key)
    return _requests.sign(data, False, software, key)


def _challenged(server, data: bytes, client_ip: str) -> bytes:
    """The 401 to an unsigned Allocate (RFC 8489 §9.2.4), as relay.server_auth.unauthorized answers it."""
    server.counters["requests"] += 1
    now = server.clock.seconds()
    if not counted_unauthorized(server, client_ip, now):
        return b""
    return challenge_to(server, _ALLOCATE_ERROR, data[4:20], Error.UNAUTHENTICATED, client_ip, now)
