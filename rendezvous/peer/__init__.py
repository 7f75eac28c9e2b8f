"""What applications embed: log in, reach a buddy by the best path, analyse the NAT (floor 3).

May import ``relay`` (the TURN client), ``upnp_helper``, ``rendezvous.wire``
and ``rendezvous.stun``; never ``rendezvous.node`` or ``rendezvous.cli``.

- ``client``: ``Client``, a long-lived login: connect, listen, buddies, presence.
- ``connector``: the one-shot ``connect()`` and ``listen()``, and the options both take.
- ``session``: ``Session``, QUIC (RFC 9000/9001/9221) over the path, peers checked by fingerprint.
- ``quic_streams``: a QUIC stream as a Twisted transport.
- ``trust``: the user's identity and pinned peers, and the handshake that proves them.
- ``identity``: a key pair and self-signed certificate in a key file, and its fingerprint (RFC 8122).
- ``pins``: peers' fingerprints pinned on first use.
- ``connection``: ``Connection`` (the datagram path under a session), ``Attempt``, ``ConnectError``.
- ``checks``: a session: ICE checks, the birthday spray and the choice of path.
- ``gathering``: a session's candidates: host, UPnP-mapped, server-reflexive, predicted, TCP, relayed.
- ``tcp_path``: a session's punched TCP path: the punch, the proofs on its stream, when to select it.
- ``ice``: ICE connectivity checks, sans-IO (RFC 8445).
- ``prediction``: port prediction, the birthday spray and the NAT hint, sans-IO.
- ``signaling_client``: ``SignalingClient``, the super node's signaling protocol.
- ``stun_client``: ``StunClientProtocol``, a STUN client over UDP (RFC 8489).
- ``nat_check``: the NAT analyzer (RFC 5780 and more).
- ``sip_probe``: a SIP INVITE that catches ALGs rewriting it.
- ``host_cache``: super nodes a client has heard of, kept in a file.
- ``tcp_binding``: TCP sockets sharing one local port, and a STUN Binding over TCP.
- ``tcp_punch``: TCP hole punching: simultaneous open, low-TTL SYN, accept on the same port.
"""

from relay.client import ConnectionClosed, TurnClient, TurnError
from relay.client import connect as turn_connect
from rendezvous.peer import nat_check
from rendezvous.peer.connection import Attempt, ConnectError, Connection
from rendezvous.peer.client import Client
from rendezvous.peer.connector import connect, listen
from rendezvous.peer.pins import FingerprintChanged
from rendezvous.peer.session import Session, SessionError
from rendezvous.peer.signaling_client import SignalingClient
from rendezvous.peer.stun_client import StunClientProtocol
from rendezvous.stun.transaction import TransactionTimeout

__all__ = [
    "Attempt",
    "Client",
    "ConnectError",
    "ConnectionClosed",
    "FingerprintChanged",
    "Connection",
    "Session",
    "SessionError",
    "SignalingClient",
    "StunClientProtocol",
    "TransactionTimeout",
    "TurnClient",
    "TurnError",
    "connect",
    "listen",
    "nat_check",
    "turn_connect",
]
