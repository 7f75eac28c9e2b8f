"""Long-term credential checks of TURN requests (RFC 8489 §9.2.4).

Every request must carry USERNAME (or USERHASH), REALM, NONCE and a
MESSAGE-INTEGRITY (or -SHA256) made with a key the credential store knows
for the realm; ``authenticate`` returns an ``Auth`` or the error response.
Nonces are stateless (``relay.nonces``): an expired one gets 438 Stale
Nonce with a fresh one. 401 answers are rate limited per source, so a
spoofed flood costs neither memory nor much bandwidth. PASSWORD-ALGORITHMS
is offered and checked against downgrades (§9.2.4, §9.2.5). Functions over
the ``TurnServer`` core (``relay.server``).
"""

import functools
import struct
from dataclasses import dataclass

from rendezvous.stun import Attr, Class, CodecError, Error, Message, PasswordAlgorithm
from rendezvous.stun.attributes import (
    decode_password_algorithm,
    decode_password_algorithms,
    decode_text,
    encode_error_code,
    encode_password_algorithms,
    USERNAME_MAX_BYTES,
)
from rendezvous.stun.constants import MAGIC_COOKIE_BYTES, REASONS
from rendezvous.stun.message import message_type

from .credentials import Keys

PASSWORD_ALGORITHMS = [(PasswordAlgorithm.MD5, b""), (PasswordAlgorithm.SHA256, b"")]
_TLV = struct.Struct("!HH")


def attribute(attr_type: int, value: bytes) -> bytes:
    """One attribute as Message.encode writes it: type, length, value, zero padding (RFC 8489 §14)."""
    return _TLV.pack(attr_type, len(value)) + value + b"\0" * (-len(value) & 3)


_PASSWORD_ALGORITHMS = attribute(Attr.PASSWORD_ALGORITHMS, encode_password_algorithms(PASSWORD_ALGORITHMS))


@functools.lru_cache(maxsize=8)
def _challenge_start(code: int, realm: str) -> bytes:
    """ERROR-CODE and REALM of a challenge, encoded once per code and realm."""
    return attribute(Attr.ERROR_CODE, encode_error_code(code, REASONS.get(code, ""))) + attribute(
        Attr.REALM, realm.encode("utf-8"))


@dataclass(slots=True)
class Auth:
    """Who a request authenticated as, and how to sign the response (the request's algorithm and MAC).

    named holds the USERNAME, REALM and NONCE values as they arrived when the
    request used USERNAME, the MD5 key and MESSAGE-INTEGRITY (the common
    form relay.server_fast takes), else None; nonce and realm are their text.
    """

    username: str
    keys: Keys
    algorithm: int
    sha256_mac: bool
    named: tuple[bytes, bytes, bytes] | None = None
    nonce: str = ""
    realm: str = ""

    def sign(self, response: Message) -> bytes:
        key = self.keys.for_algorithm(self.algorithm)
        if self.sha256_mac:
            return response.encode(integrity_sha256_key=key)
        return response.encode(integrity_key=key)


def challenge(server, msg: Message, code: int, client_ip: str, now: float) -> bytes:
    """A 401 or 438: ERROR-CODE, REALM, a fresh NONCE and PASSWORD-ALGORITHMS, and nothing more.

    §9.2.4 asks for REALM and NONCE; PASSWORD-ALGORITHMS goes with the
    nonce's security feature bit (§9.2.5). SOFTWARE is left out (it is a MAY,
    and the answer goes to a source nothing has verified yet), so for the
    smallest Allocate (28 bytes: the header and REQUESTED-TRANSPORT) a 401
    is 100 bytes with the default realm, under 4 times the request.
    """
    cookie_and_id = msg.transaction_id if msg.classic else MAGIC_COOKIE_BYTES + msg.transaction_id
    return challenge_to(server, message_type(msg.method, Class.ERROR), cookie_and_id, code, client_ip, now)


def challenge_to(server, response_type: int, cookie_and_id: bytes, code: int, client_ip: str, now: float) -> bytes:
    """challenge's bytes for a response of response_type and the request's cookie and transaction id,
    written as Message.encode writes them (the attributes but the nonce encoded once)."""
    body = b"".join((_challenge_start(code, server.policy.realm),
                     attribute(Attr.NONCE, server.nonces.issue(client_ip, now).encode("ascii")), _PASSWORD_ALGORITHMS))
    return _TLV.pack(response_type, len(body)) + cookie_and_id + body


def authenticate(server, msg: Message, five_tuple: tuple, now: float):
    """The request's ``Auth``, or the response that refuses it (None: a rate-limited 401 is not sent)."""
    client_ip = five_tuple[1][0]
    has_mac = Attr.MESSAGE_INTEGRITY in msg or Attr.MESSAGE_INTEGRITY_SHA256 in msg
    if not has_mac:
        return unauthorized(server, msg, client_ip, now)
    username_value, userhash, realm, nonce = (
        msg.get(Attr.USERNAME), msg.get(Attr.USERHASH), msg.get(Attr.REALM), msg.get(Attr.NONCE)
    )
    if (username_value is None and userhash is None) or realm is None or nonce is None:
        return server._error(msg, Error.BAD_REQUEST, "USERNAME, REALM and NONCE are required")
    try:
        nonce_text = decode_text(nonce)
        realm_text = decode_text(realm)
        username = (
            decode_text(username_value, USERNAME_MAX_BYTES)
            if username_value is not None
            else server.credentials.username_for_hash(userhash)
        )
        algorithm = password_algorithm(msg)
    except CodecError as e:
        return server._error(msg, Error.BAD_REQUEST, str(e))
    if server.nonces.check(nonce_text, client_ip, now) != "valid":
        server.counters["stale_nonce"] += 1
        return challenge(server, msg, Error.STALE_NONCE, client_ip, now)
    if algorithm is None:
        return server._error(msg, Error.BAD_REQUEST, "PASSWORD-ALGORITHM does not match")
    if username is None or realm_text != server.policy.realm:
        return unauthorized(server, msg, client_ip, now)
    for keys in server.credentials.candidates(username, realm_text, now):
        if msg.check_integrity(keys.for_algorithm(algorithm)):
            sha256_mac = Attr.MESSAGE_INTEGRITY_SHA256 in msg
            named = None
            if username_value is not None and algorithm == PasswordAlgorithm.MD5 and not sha256_mac:
                named = (username_value, realm, nonce)
            return Auth(username, keys, algorithm, sha256_mac, named, nonce_text, server.policy.realm)
    return unauthorized(server, msg, client_ip, now)


def password_algorithm(msg: Message) -> int | None:
    """The password algorithm the request uses (RFC 8489 §9.2.4 downgrade checks)."""
    offered, chosen = msg.get(Attr.PASSWORD_ALGORITHMS), msg.get(Attr.PASSWORD_ALGORITHM)
    if offered is None and chosen is None:
        return PasswordAlgorithm.MD5
    if offered is None or chosen is None:
        return None
    if decode_password_algorithms(offered) != PASSWORD_ALGORITHMS:
        return None
    algorithm, _ = decode_password_algorithm(chosen)
    return algorithm if (algorithm, b"") in PASSWORD_ALGORITHMS else None


def unauthorized(server, msg: Message, client_ip: str, now: float) -> bytes | None:
    """401 Unauthenticated, or None past the source's rate limit."""
    if not counted_unauthorized(server, client_ip, now):
        return None
    return challenge(server, msg, Error.UNAUTHENTICATED, client_ip, now)


def counted_unauthorized(server, client_ip: str, now: float) -> bool:
    """Whether a 401 may go to client_ip (its source's rate limit), counted either way."""
    if not server._limiter.allow(client_ip, now):
        server.counters["unauthorized_limited"] += 1
        return False
    server.counters["unauthorized"] += 1
    return True
