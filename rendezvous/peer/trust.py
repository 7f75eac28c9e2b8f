"""Who a session may be with: this user's identity, the peers' pinned fingerprints, and the handshake.

``connect()`` and ``listen()`` send the identity's fingerprint with their
candidates; the node passes the peer's back in ``punch``. Before the QUIC
handshake the presented fingerprint must match the peer's pin (if it has
one); after the peer proved it in the handshake, a first fingerprint is
pinned. Files live in the state directory: ``USER.identity.pem`` and
``USER.pins.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rendezvous.peer.connection import ConnectError, Connection
from rendezvous.peer.identity import Identity
from rendezvous.peer.pins import FingerprintChanged, PinStore
from rendezvous.peer.session import Session
from rendezvous.wire.fingerprints import FINGERPRINT

HANDSHAKE_SECONDS = 10.0


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/txrendezvous``, else ``~/.local/state/txrendezvous``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "txrendezvous"


@dataclass
class Trust:
    """A user's identity and pins, and whether a peer's changed fingerprint is accepted."""

    user: str
    identity: Identity
    pins: PinStore
    allow_new_fingerprint: bool = False

    @classmethod
    def load(cls, state_dir: Path, user: str, allow_new_fingerprint: bool = False) -> Trust:
        """The identity in ``state_dir`` (made on first use) and the pins beside it."""
        state_dir = Path(state_dir)
        identity = Identity.load_or_create(state_dir / f"{user}.identity.pem", user)
        return cls(user, identity, PinStore(state_dir / f"{user}.pins.json"), allow_new_fingerprint)

    def check(self, peer: str, presented, attempts: list = ()) -> None:
        """Raise ConnectError (no or a malformed fingerprint) or FingerprintChanged (not the pinned one):
        done as soon as the node passes the peer's fingerprint on, before any packet goes to the peer."""
        if not isinstance(presented, str) or not FINGERPRINT.fullmatch(presented):
            raise ConnectError(f"{peer} sent no certificate fingerprint (an older client? "
                               f"plaintext=True talks to it unencrypted)", list(attempts))
        self.pins.check(peer, presented, self.allow_new_fingerprint)

    async def secure(self, reactor, connection: Connection, punch: dict, is_client: bool) -> Session:
        """The session over ``connection`` once the peer proved the fingerprint in ``punch``.

        Closes the connection and fails with ConnectError (no or a malformed
        fingerprint), FingerprintChanged (not the pinned one) or SessionError
        (the handshake failed or took over HANDSHAKE_SECONDS)."""
        presented = punch.get("fingerprint")
        try:
            self.check(connection.peer, presented, connection.attempts)
        except (ConnectError, FingerprintChanged):
            connection.close()
            raise
        session = Session(reactor, connection, self.identity, presented, is_client, self.user)
        try:
            await session.handshake().addTimeout(HANDSHAKE_SECONDS, reactor)
            self.pins.pin(connection.peer, presented, self.allow_new_fingerprint)
        except BaseException:
            session.close()
            raise
        return session
