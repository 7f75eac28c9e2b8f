"""A live allocation's common requests, and the Allocate that makes it with its 401, answered without a Message.

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
(no MESSAGE-INTEGRITY, ``_requests.allocate`` says True) gets its 401 (RFC
8489 §9.2.4) after the source's rate limit, as ``relay.server_auth``
answers it; the Allocate that answers the 401 (RFC 8656 §7.2), in its
common form (REQUESTED-TRANSPORT UDP, LIFETIME and DONT-FRAGMENT at most,
USERNAME, REALM, NONCE, MESSAGE-INTEGRITY with the MD5 key, an optional
FINGERPRINT), is walked and checked in C, authenticated against the same
nonces and credential sources, counted, given its relay socket and
installed by ``relay.server_allocate``'s functions, and its success
response written in C (``_requests.sign_allocated``). ``answer`` returns
None for anything else, and where the extension is not built: the Python
path then answers. The UDP listener asks it from inside the C read batch
(``ServerDatagramProtocol.answer``, relay/_mmsg.c), which sends the
response itself: a request answered here costs no read pass.
"""

import functools

from rendezvous.stun import Attr, CodecError, Error, PasswordAlgorithm
from rendezvous.stun.attributes import USERNAME_MAX_BYTES, decode_text, encode_error_code, encode_uint32
from rendezvous.stun.constants import REASONS

from .server_allocate import claim, install, open_relay, refreshed
from .server_auth import Auth, attribute, challenge_to, counted_unauthorized
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


def answer(server, data: bytes, five_tuple: tuple, sender) -> bytes | None:
    """The response to a request of five_tuple's allocation, or to an Allocate from a five-tuple without
    one (b"": none, past the 401 rate limit); None: the Python path decides. sender(client) is the
    callable a new allocation sends to its client with."""
    if _requests is None:
        return None
    allocation = server.allocations.get(five_tuple)
    if allocation is None:
        opening = _requests.allocate(data)
        if opening is None:
            return None
        if opening is True:
            return _challenged(server, data, five_tuple[1][0])
        return _allocate(server, data, five_tuple, sender, *opening)
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
    if (auth.realm != server.policy.realm or not server.nonces.valid(auth.nonce, five_tuple[1][0], now)
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
        return _refused(server, data, e, key)
    return _requests.sign(data, False, software, key)


def _allocate(server, data: bytes, five_tuple: tuple, sender, username_value: bytes, realm_value: bytes,
              nonce_value: bytes, requested: int | None, dont_fragment: bool, mac_offset: int) -> bytes | None:
    """The response to a signed Allocate of the common form (RFC 8656 §7.2) from five_tuple, which holds no
    allocation, authenticated as relay.server_auth.authenticate does (RFC 8489 §9.2.4); None: the Python
    path decides (a draining server, a reserved socket on its way, a stale nonce, a refusal)."""
    policy = server.policy
    if server.draining or five_tuple in server.pending or 4 not in policy.families:
        return None
    client = five_tuple[1]
    now = server.clock.seconds()
    try:
        username = decode_text(username_value, USERNAME_MAX_BYTES)
        realm = decode_text(realm_value)
        nonce = decode_text(nonce_value)
    except CodecError:
        return None
    if realm != policy.realm or not server.nonces.valid(nonce, client[0], now):
        return None
    for keys in server.credentials.candidates(username, realm, now):
        if _requests.verify(data, mac_offset, keys.md5):
            break
    else:
        return None
    server.counters["requests"] += 1
    auth = Auth(username, keys, PasswordAlgorithm.MD5, False, (username_value, realm_value, nonce_value), nonce,
                policy.realm)  # the policy's own string, as authenticate keeps it, not a copy per allocation
    try:
        claim(server, auth)
        relay, _ = open_relay(server, auth, 4, dont_fragment=dont_fragment)
    except Refused as e:
        return _refused(server, data, e, keys.md5)
    allocation, lifetime = install(server, data[8:20], requested, five_tuple, sender(client), auth, now, {4: relay})
    allocation.response = _requests.sign_allocated(data, relay.address, lifetime, client,
                                                   _software(server.software), keys.md5)
    return allocation.response


def _refused(server, data: bytes, refusal: Refused, key: bytes) -> bytes:
    """The error response for refusal, counted and signed as TurnServer._error signs it."""
    server.counters[f"error_{refusal.code}"] += 1
    error = encode_error_code(refusal.code, refusal.reason or REASONS.get(refusal.code, ""))
    return _requests.sign(data, True, attribute(Attr.ERROR_CODE, error) + _software(server.software), key)


def _challenged(server, data: bytes, client_ip: str) -> bytes:
    """The 401 to an unsigned Allocate (RFC 8489 §9.2.4), as relay.server_auth.unauthorized answers it."""
    server.counters["requests"] += 1
    now = server.clock.seconds()
    if not counted_unauthorized(server, client_ip, now):
        return b""
    return challenge_to(server, _ALLOCATE_ERROR, data[4:20], Error.UNAUTHENTICATED, client_ip, now)
