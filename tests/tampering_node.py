"""A super node that swaps the certificate fingerprints it passes on: the attack pinning must stop.

Run as ``python -m tests.tampering_node FINGERPRINT TWISTD-ARGS...``: the real
``twistd rendezvous``, with the connect coordination patched so that every
fingerprint it passes on (in ``connect-request`` and in each side's
``punch``) is FINGERPRINT, the attacker's, instead of the peer's.
"""

import sys

from twisted.scripts.twistd import run

from rendezvous.node.signaling import connects


def tamper(fingerprint: str) -> None:
    checked = connects._ice_credentials

    def swapped(message: dict) -> dict:
        credentials = checked(message)
        return dict(credentials, fingerprint=fingerprint) if "fingerprint" in credentials else credentials

    connects._ice_credentials = swapped


if __name__ == "__main__":
    tamper(sys.argv[1])
    sys.argv = ["twistd", *sys.argv[2:]]
    run()
