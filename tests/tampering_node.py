"""A super node that swaps the certificate fingerprints it passes on: the attack pinning must stop.

Run as ``python -m tests.tampering_node FINGERPRINT TWISTD-ARGS...``: the real
``twistd rendezvous``, with the connect coordination patched so that each
side's ``punch`` names FINGERPRINT (the attacker's) instead of the peer's.
"""

import sys

from twisted.scripts.twistd import run

from rendezvous.node import signaling


def tamper(fingerprint: str) -> None:
    complete = signaling.SignalingNode._complete_connect

    def swapped(self, answer: dict) -> None:
        entry = self.pending.get(answer.get("token"))
        if entry is not None:
            entry["credentials"] = dict(entry["credentials"], fingerprint=fingerprint)
        answer = dict(answer, credentials=dict(answer.get("credentials") or {}, fingerprint=fingerprint))
        complete(self, answer)

    signaling.SignalingNode._complete_connect = swapped


if __name__ == "__main__":
    tamper(sys.argv[1])
    sys.argv = ["twistd", *sys.argv[2:]]
    run()
