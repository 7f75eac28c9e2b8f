"""401 and 438 challenges: what they carry (RFC 8489 §9.2.4, §9.2.5), their nonces, and their size."""

import pytest
from twisted.internet.task import Clock

from relay.credentials import Credentials, StaticUsers
from relay.nonces import CHECKED, FEATURES, NONCE_COOKIE, Nonces
from relay.peer_policy import PeerPolicy
from relay.server import RelayPolicy, TurnServer
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import decode_error_code, encode_requested_transport

CLIENT = ("udp", ("203.0.113.10", 50000), ("198.18.0.1", 3478))


@pytest.fixture
def server():
    clock = Clock()
    clock.advance(1_000_000)
    return TurnServer(RelayPolicy(), Credentials([StaticUsers({"alice": "secret"}, "txrendezvous")]), PeerPolicy(),
                      None, clock, software=b"txrendezvous 0.1.0 (a long SOFTWARE attribute)")


def answer(server, request: bytes) -> bytes:
    return server.handle(Message.decode(request), CLIENT, lambda data: None)


def smallest_allocate() -> bytes:
    """The smallest valid Allocate: the header and REQUESTED-TRANSPORT (RFC 8656 §7.2 step 3), 28 bytes."""
    request = Message(Method.ALLOCATE, Class.REQUEST)
    request.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
    return request.encode()


def smallest_stale() -> bytes:
    """The smallest request that draws a 438: empty USERNAME, REALM and NONCE and a MESSAGE-INTEGRITY, 56 bytes."""
    request = Message(Method.REFRESH, Class.REQUEST)
    for attr_type in (Attr.USERNAME, Attr.REALM, Attr.NONCE):
        request.add(attr_type, b"")
    return request.encode(integrity_key=b"any key")


def test_a_401_is_at_most_four_times_the_smallest_allocate(server):
    """The 401 to a 28-byte Allocate is at most 112 bytes, even with a SOFTWARE configured."""
    request = smallest_allocate()
    response = answer(server, request)
    assert len(request) == 28 and decode_error_code(Message.decode(response).get(Attr.ERROR_CODE))[0] == 401
    assert len(response) <= 4 * len(request), len(response)


def test_a_438_is_at_most_four_times_the_smallest_request_drawing_it(server):
    """The 438 to the smallest request with a MESSAGE-INTEGRITY and a nonce not ours is at most 4 times it."""
    request = smallest_stale()
    response = answer(server, request)
    assert len(request) == 56 and decode_error_code(Message.decode(response).get(Attr.ERROR_CODE))[0] == 438
    assert len(response) <= 4 * len(request), len(response)


def test_a_challenge_carries_what_rfc_8489_asks_and_no_more(server):
    """ERROR-CODE, REALM, NONCE and PASSWORD-ALGORITHMS, in that order; no SOFTWARE, FINGERPRINT or integrity."""
    for request in (smallest_allocate(), smallest_stale()):
        response = Message.decode(answer(server, request))
        assert [a for a, _ in response.attributes] == [
            Attr.ERROR_CODE, Attr.REALM, Attr.NONCE, Attr.PASSWORD_ALGORITHMS]


def test_nonces_are_24_characters_bound_to_ip_and_time():
    """A nonce is the RFC 8489 cookie and feature bits plus 11 base64url characters; it is valid for its IP
    until its lifetime is over, then stale, and invalid for another IP or when altered."""
    nonces = Nonces(600, b"k" * 32)
    nonce = nonces.issue("192.0.2.1", 1_000_000.5)
    assert len(nonce) == 24 and nonce.startswith(NONCE_COOKIE + FEATURES)
    assert set(nonce[13:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert nonces.check(nonce, "192.0.2.1", 1_000_600) == "valid"
    assert nonces.check(nonce, "192.0.2.1", 1_000_601) == "stale"
    assert nonces.check(nonce, "192.0.2.2", 1_000_000) == "invalid"
    assert Nonces(600, b"j" * 32).check(nonce, "192.0.2.1", 1_000_000) == "invalid"
    changed = [nonce[:i] + ("B" if nonce[i] == "A" else "A") + nonce[i + 1:] for i in range(len(nonce))]
    for altered in changed + [nonce[:-1], nonce + "A", nonce[:-1] + "é", nonce[:-1] + "=", "x" * 24, ""]:
        assert nonces.check(altered, "192.0.2.1", 1_000_000) == "invalid", altered


def test_nonce_issue_times_wrap():
    """The 24-bit issue time wraps: a nonce issued just before the wrap is still valid just after it."""
    nonces = Nonces(600)
    issued_at = (1 << 24) * 3 - 10
    assert nonces.check(nonces.issue("192.0.2.1", issued_at), "192.0.2.1", issued_at + 20) == "valid"


def test_genuine_nonces_are_remembered_up_to_a_bound():
    """A nonce issued here or found genuine is checked again without a MAC, for its own IP only and still
    going stale; at most CHECKED are remembered, the oldest forgotten first."""
    nonces = Nonces(600, b"k" * 32)
    macs = []
    mac = nonces._mac
    nonces._mac = lambda issued, ip: macs.append(ip) or mac(issued, ip)
    ips = [f"10.0.{i // 250}.{i % 250}" for i in range(CHECKED + 1)]
    issued = [nonces.issue(ip, 1_000_000) for ip in ips]
    del macs[:]
    assert all(nonces.check(nonce, ip, 1_000_000) == "valid" for nonce, ip in zip(issued[1:], ips[1:]))
    assert nonces.check(issued[-1], ips[-1], 1_000_600) == "valid"
    assert nonces.check(issued[-1], ips[-1], 1_000_601) == "stale" and macs == []
    assert nonces.check(issued[-1], ips[0], 1_000_000) == "invalid" and macs == [ips[0]]
    assert nonces.check(issued[0], ips[0], 1_000_000) == "valid" and macs == [ips[0]] * 2  # forgotten
    assert nonces.check(issued[0], ips[0], 1_000_000) == "valid" and macs == [ips[0]] * 2  # remembered again


def test_valid_says_what_check_says():
    """Nonces.valid is check(...) == 'valid' for remembered and forgotten nonces, at and past the lifetime,
    across the issue time's wrap, for another IP and for altered or foreign ones."""
    nonces = Nonces(600, b"k" * 32)
    wrap = (1 << 24) * 3 - 10
    issued = [(nonces.issue("192.0.2.1", at), at) for at in (1_000_000.5, wrap)]
    foreign = Nonces(600, b"j" * 32).issue("192.0.2.1", 1_000_000)
    for nonce, at in issued + [(foreign, 1_000_000), (issued[0][0][:-1] + "A", 1_000_000), ("", 1_000_000)]:
        for ip in ("192.0.2.1", "192.0.2.2"):
            for later in (0, 20, 600, 601, 10**6):
                expected = nonces.check(nonce, ip, at + later) == "valid"
                assert nonces.valid(nonce, ip, at + later) is expected, (nonce, ip, later)
                forgetful = Nonces(600, b"k" * 32)  # the same key, nothing remembered
                assert forgetful.valid(nonce, ip, at + later) is expected
