"""The node passes each side's certificate fingerprint to the other with the ICE credentials, checked."""

from rendezvous.peer.identity import Identity
from tests.unit.test_signaling import buddies, clock, logged_in, node  # noqa: F401 (fixtures)

ALICE, BOB = Identity.generate("alice").fingerprint, Identity.generate("bob").fingerprint


def test_each_punch_carries_the_peers_fingerprint(node):  # noqa: F811
    """connect's fingerprint reaches the buddy in connect-request and punch; the answer's reaches the caller."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    alice.do("connect", to="bob", candidates=[], ufrag="aaaa", pwd="p" * 22, fingerprint=ALICE)
    request = [m for m in bob.out if m["op"] == "connect-request"][0]
    assert request["fingerprint"] == ALICE
    bob.do("connect-answer", token=request["token"], candidates=[], ufrag="bbbb", pwd="q" * 22, fingerprint=BOB)
    assert [m for m in alice.out if m["op"] == "punch"][0]["fingerprint"] == BOB
    assert [m for m in bob.out if m["op"] == "punch"][0]["fingerprint"] == ALICE


def test_a_malformed_fingerprint_is_a_bad_request(node):  # noqa: F811
    """Anything but "sha-256" and 32 upper-case hex bytes joined by colons is refused, not passed on."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    for bad in (ALICE.lower(), ALICE[:-3], "sha-1 " + ALICE[8:], ALICE + "\n", 42):
        assert alice.do("connect", to="bob", candidates=[], fingerprint=bad)["code"] == "bad-request", bad
    assert not [m for m in bob.out if m["op"] == "connect-request"]
