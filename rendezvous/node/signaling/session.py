"""What every part of the signaling core shares: the session, the config, errors, the directory.

``Session`` is one client connection as the core sees it; ``LocalDirectory``
is the presence directory of a node alone (docs/PROTOCOL.md, "Signaling v1").
"""

import secrets
from collections import deque
from dataclasses import dataclass, field


class SignalingError(Exception):
    """A request refused with an error frame: code and reason.

    ``abuse`` marks a breach of the protocol (a malformed request, an op
    before login), which counts towards closing the connection; other
    refusals are ordinary answers. A bad-request is always abuse.
    """

    def __init__(self, code: str, reason: str, abuse: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.abuse = abuse or code == "bad-request"


@dataclass
class Session:
    """One client connection, as the core sees it."""

    send: object
    close: object
    address: tuple
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    user: str | None = None
    state: str = "offline"
    nat_type: str | None = None
    rtt: float | None = None
    rtt_at: float | None = None  # when rtt was measured
    errors: float = 0.0  # bad requests, decaying (SignalingNode._count_error)
    errors_at: float | None = None
    ping_sent_at: float | None = None
    ping_token: str | None = None
    started_at: float | None = None  # when it logged in
    resume_token: str | None = None  # of its welcome
    gone: bool = False  # its connection closed
    backlog: deque | None = None  # frames that came while a request waited for the account store
    buddies: frozenset = frozenset()  # accepted buddies last read, for when the store cannot answer


@dataclass
class SignalingConfig:
    realm: str = "txrendezvous"
    node_name: str = "local"
    open_registration: bool = False
    latest_client_version: str | None = None
    host_cache: list = field(default_factory=list)
    relays: list = field(default_factory=list)
    turn_secret: str | None = None
    address: tuple = ("", 0)  # this node's public (host, port), left out of its own host cache
    public_ips: tuple = ()  # every public address of this node, address[0] first (IPv4 and IPv6)
    turn_credential_seconds: int = 3600
    results_url: str | None = None  # where clients may POST field-test submissions (rendezvous.node.results)


class LocalDirectory:
    """Presence and routing of one node alone (the embedded default).

    A shared directory (``rendezvous.node.redis_directory``) has the same three
    methods, answers ``locate`` from memory and calls back
    ``SignalingNode.handle_routed`` with envelopes other nodes route here.
    """

    def publish_presence(self, user: str, state: str, nat_type: str | None) -> None:
        pass

    def locate(self, user: str) -> dict | None:
        return None

    def route(self, node: str, envelope: dict) -> None:
        pass


MAX_FIELD_BYTES = 128  # a user name, token or other short string field
MAX_PASSWORD_BYTES = 1024


def text_field(message: dict, name: str, max_bytes: int = MAX_FIELD_BYTES) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > max_bytes:
        raise SignalingError("bad-request", f"{name} must be a non-empty string of at most {max_bytes} bytes")
    return value

