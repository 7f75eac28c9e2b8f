"""The client side of long-term credentials, and the errors a TURN request fails with.

RFC 8489 (STUN): §9.2 long-term credentials (§9.2.2 the key, §9.2.3 first
and subsequent requests, §9.2.4 password algorithms, §9.2.5 401
Unauthenticated and 438 Stale Nonce), §14.8 ERROR-CODE. Sans-IO: no
sockets, no timers. ``relay.client`` re-exports the errors.
"""

from rendezvous.stun import Attr, Message, Method, PasswordAlgorithm
from rendezvous.stun.attributes import decode_password_algorithms, decode_text, encode_password_algorithm
from rendezvous.stun.constants import Error
from rendezvous.stun.integrity import long_term_key

# "obMatJos2": the STUN Security Features nonce cookie, RFC 8489 §9.2 / §18.1.
NONCE_COOKIE = "obMatJos2"


class TurnError(Exception):
    """The server answered a request with an error response (RFC 8489 §14.8).

    ``code`` is the ERROR-CODE number (``rendezvous.stun.Error`` names them),
    ``reason`` its text and ``method`` the request's method.
    """

    def __init__(self, code: int, reason: str, method: int) -> None:
        try:
            name = Method(method).name
        except ValueError:
            name = f"{method:#x}"
        super().__init__(f"{name} failed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.method = method


class ConnectionClosed(Exception):
    """The client was closed, or its TCP/TLS connection lost, before a response."""


class RealmMismatch(Exception):
    """The server's REALM differs from the one the caller said to expect."""


class LongTermCredentials:
    """The client side of RFC 8489 §9.2 long-term credentials.

    Knows what to add to a request and what to learn from a 401 or 438. The
    first request goes out without credentials (§9.2.3.1); the 401 supplies
    REALM and NONCE, after which every request carries USERNAME, REALM, NONCE
    and MESSAGE-INTEGRITY keyed with MD5(username ":" realm ":" password)
    (§9.2.2, §9.2.3.2). A 438 supplies a fresh NONCE (§9.2.5). When the
    nonce starts with the security-features cookie and the server offers
    PASSWORD-ALGORITHMS, the offer is echoed and MD5 chosen (SHA-256 when MD5
    is not offered), as §9.2.4 asks.
    """

    def __init__(self, username: str, password: str, realm: str | None = None) -> None:
        self.username = username
        self.password = password
        self.expected_realm = realm
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        self._algorithm_attrs: list[tuple[int, bytes]] = []

    @property
    def ready(self) -> bool:
        """True once a 401 has told us the realm and nonce."""
        return self.key is not None and self.nonce is not None

    def sign(self, message: Message) -> bytes:
        """Encode ``message`` with credentials and MESSAGE-INTEGRITY (§9.2.3.2)."""
        assert self.key is not None and self.nonce is not None and self.realm is not None
        message.add(Attr.USERNAME, self.username.encode("utf-8"))
        message.add(Attr.REALM, self.realm.encode("utf-8"))
        message.add(Attr.NONCE, self.nonce)
        for attr_type, value in self._algorithm_attrs:
            message.add(attr_type, value)
        return message.encode(integrity_key=self.key)

    def challenge(self, response: Message, code: int, signed: bool) -> bool:
        """Learn from a 401 or 438 response; True when retrying can succeed.

        §9.2.5: a 401 to a request that carried no credentials, or a 438,
        is answered by retrying with the (new) realm and nonce; a 401 to a
        request that already carried them means the credentials are wrong.
        Raises RealmMismatch when the caller pinned a different realm.
        """
        nonce = response.get(Attr.NONCE)
        realm_value = response.get(Attr.REALM)
        if nonce is None or (realm_value is None and self.realm is None):
            return False
        if code == Error.UNAUTHENTICATED and signed and nonce == self.nonce:
            return False
        if code not in (Error.UNAUTHENTICATED, Error.STALE_NONCE):
            return False
        if realm_value is not None:
            realm = decode_text(realm_value)
            if self.expected_realm is not None and realm != self.expected_realm:
                raise RealmMismatch(
                    f"server realm {realm!r} differs from the expected {self.expected_realm!r}"
                )
            if realm != self.realm:
                self.realm = realm
                self.key = None
        self.nonce = nonce
        algorithm = PasswordAlgorithm.MD5
        self._algorithm_attrs = []
        offered = response.get(Attr.PASSWORD_ALGORITHMS)
        if offered is not None and nonce.startswith(NONCE_COOKIE.encode()):
            choices = [a for a, _ in decode_password_algorithms(offered)]
            if PasswordAlgorithm.MD5 not in choices and PasswordAlgorithm.SHA256 in choices:
                algorithm = PasswordAlgorithm.SHA256
            self._algorithm_attrs = [
                (Attr.PASSWORD_ALGORITHMS, offered),
                (Attr.PASSWORD_ALGORITHM, encode_password_algorithm(algorithm)),
            ]
        assert self.realm is not None
        self.key = long_term_key(self.username, self.realm, self.password, algorithm)
        return True
