"""The signaling core on a fake clock, with a real SQLite account store."""

import pytest
from twisted.internet.task import Clock

from relay.credentials import RestSecrets
from rendezvous.node.accounts import MAX_BUDDIES, AccountStore
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.signaling import ERROR_DECAY_SECONDS, MAX_ERRORS, Session, SignalingConfig, SignalingNode
from rendezvous.node.signaling.connects import END_WAIT_SECONDS, PONG_WAIT_SECONDS, RTT_FRESH_SECONDS
from rendezvous.node.signaling.login import LOGIN_ACCOUNT_BURST, LOGIN_BURST
from rendezvous.wire.frames import MAX_FRAME_BYTES, FrameError, FrameReader, encode, fitting


class Peer:
    """A session whose sent frames are kept in a list."""

    def __init__(self, node, address=("198.18.0.7", 40000)):
        self.node = node
        self.out = []
        self.closed = False
        self.session = Session(send=self.out.append, close=self.close, address=address)

    def close(self):
        self.closed = True

    def do(self, op, **fields):
        self.out.clear()
        self.node.receive(self.session, {"op": op, "id": 7, **fields})
        replies = [m for m in self.out if m.get("id") == 7]
        return replies[-1] if replies else None

    def ops(self):
        return [m["op"] for m in self.out]


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def node(tmp_path, clock):
    store = AccountStore(tmp_path / "accounts.sqlite")
    for name in ("alice", "bob", "carol"):
        store.add(name, f"{name}-pw", "example.org")
    config = SignalingConfig(realm="example.org", node_name="node-a", latest_client_version="2.0",
                             host_cache=[{"host": "198.18.0.9", "port": 3478}],
                             relays=["turn:198.18.0.1:3478?transport=udp"], turn_secret="s3cret")
    return SignalingNode(AsyncAccounts.inline(store), clock, config)


def fired(deferred):
    """The result of a Deferred that has fired (the inline store's always have)."""
    results = []
    deferred.addBoth(results.append)
    return results[0]


def logged_in(node, name, address=("198.18.0.7", 40000)):
    """A peer logged in as name that has answered the node's RTT ping at once."""
    peer = Peer(node, address)
    peer.welcome = peer.do("login", user=name, password=f"{name}-pw")
    assert peer.welcome["op"] == "welcome" and peer.out[-1]["op"] == "ping"
    node.receive(peer.session, {"op": "pong", "token": peer.out[-1]["token"]})
    return peer


def buddies(node, a, b):
    a.do("buddy-add", user=b.session.user)
    b.do("buddy-accept", user=a.session.user)


def test_frames_round_trip_and_bounds():
    """Frames decode in any chunking; bad JSON is a soft error, a bad header is fatal."""
    data = encode({"op": "ping", "token": "x"}) + encode({"op": "login"})
    reader = FrameReader()
    out = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    assert out == [{"op": "ping", "token": "x"}, {"op": "login"}]
    soft = FrameReader().feed(b"\xf5\x01\x00\x02[]")[0]
    assert isinstance(soft, FrameError) and not soft.fatal
    for bad in (b"\xf5\x01\xff\xff", b"\x00\x01\x00\x00", b"\xf5\x02\x00\x00"):
        (fatal,) = FrameReader().feed(bad)
        assert isinstance(fatal, FrameError) and fatal.fatal


def test_frames_before_a_bad_header_are_kept():
    """Whole frames ahead of bad bytes in one chunk come out before the fatal error; nothing after it is read."""
    reader = FrameReader()
    out = reader.feed(encode({"op": "ping"}) + encode({"op": "message"}) + b"GARBAGE!" + encode({"op": "late"}))
    assert out[:2] == [{"op": "ping"}, {"op": "message"}]
    assert len(out) == 3 and out[2].fatal
    assert reader.feed(encode({"op": "ping"})) == [out[2]]


def test_login_returns_join_information(node):
    """A login gets the session, mapped address, host cache, relays, version and TURN credentials."""
    peer = Peer(node)
    welcome = peer.do("login", user="alice", password="alice-pw")
    assert welcome["op"] == "welcome" and welcome["id"] == 7
    assert welcome["mapped"] == ["198.18.0.7", 40000]
    assert welcome["host_cache"] == [{"host": "198.18.0.9", "port": 3478, "load": 0}]
    assert welcome["relays"] and welcome["latest_client_version"] == "2.0"
    turn = welcome["turn"]
    assert turn["username"].endswith(":alice")
    assert turn["password"] == RestSecrets.password("s3cret", turn["username"])


def test_turn_credentials_are_renewed_on_request(node, clock):
    """turn-credentials gives a logged-in user fresh relay credentials, expiring ttl from now; not before login."""
    assert Peer(node).do("turn-credentials")["code"] == "unauthenticated"
    peer = logged_in(node, "alice")
    clock.advance(5000)
    reply = peer.do("turn-credentials")
    turn = reply["turn"]
    assert reply["op"] == "turn-credentials" and reply["id"] == 7
    assert turn["username"] == f"{int(clock.seconds()) + turn['ttl']}:alice" != peer.welcome["turn"]["username"]
    assert turn["password"] == RestSecrets.password("s3cret", turn["username"])
    assert turn["urls"] == peer.welcome["turn"]["urls"]


def test_wrong_password_and_unauthenticated_ops(node):
    """A wrong password and ops before login get error frames, not sessions."""
    peer = Peer(node)
    assert peer.do("login", user="alice", password="nope")["code"] == "unauthenticated"
    assert peer.do("lookup", user="bob")["code"] == "unauthenticated"
    assert peer.session.user is None


def test_login_rate_limit(node):
    """Repeated failed logins for one account from one address are rate limited."""
    peer = Peer(node)
    codes = [peer.do("login", user="bob", password="x")["code"] for _ in range(LOGIN_BURST + 1)]
    assert codes == ["unauthenticated"] * LOGIN_BURST + ["rate-limited"]


def test_a_guesser_cannot_lock_the_owner_out(node):
    """Wrong passwords from one address throttle that address, not the owner logging in from another."""
    attacker = Peer(node, ("198.18.0.66", 1))
    for _ in range(3 * LOGIN_BURST):
        attacker.do("login", user="bob", password="guess")
    assert attacker.do("login", user="bob", password="bob-pw")["code"] == "rate-limited"
    assert Peer(node, ("198.18.0.7", 2)).do("login", user="bob", password="bob-pw")["op"] == "welcome"


def test_many_addresses_hit_the_account_bound(node):
    """Guesses spread over many addresses are stopped by the much higher per-account bound."""
    codes = [Peer(node, (f"198.18.{i // 200}.{i % 200}", 1)).do("login", user="bob", password="x")["code"]
             for i in range(LOGIN_ACCOUNT_BURST + 1)]
    assert codes == ["unauthenticated"] * LOGIN_ACCOUNT_BURST + ["rate-limited"]


def test_an_ipv6_slash_64_is_one_source(node):
    """Addresses of one IPv6 /64 share the per-source limits (a host has a whole /64 to pick from)."""
    codes = [Peer(node, (f"2001:db8::{i:x}", 1)).do("login", user="bob", password="x")["code"]
             for i in range(LOGIN_BURST + 1)]
    assert codes[-1] == "rate-limited"
    assert Peer(node, ("2001:db8:0:1::1", 1)).do("login", user="bob", password="x")["code"] == "unauthenticated"


def test_too_many_errors_close_the_session(node):
    """After repeated bad frames the session is closed."""
    peer = Peer(node)
    for _ in range(MAX_ERRORS):
        peer.do("no-such-op")
    assert peer.closed


def test_ordinary_error_answers_never_close_the_session(node):
    """not-a-buddy, offline, not-found, conflict and a wrong password are answers, not abuse: none closes."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 1))
    for _ in range(3 * MAX_ERRORS):
        assert alice.do("lookup", user="bob")["code"] == "not-a-buddy"
        assert alice.do("connect-answer", token="nope.node-a", candidates=[])["code"] == "not-found"
        assert alice.do("buddy-accept", user="carol")["code"] == "not-found"
        assert alice.do("login", user="alice", password="alice-pw")["code"] == "conflict"
    buddies(node, alice, bob)
    node.closed(bob.session)
    for _ in range(3 * MAX_ERRORS):
        assert alice.do("message", to="bob", text="hi")["code"] == "offline"
    assert not alice.closed
    stranger = Peer(node, ("198.18.0.9", 1))
    for _ in range(MAX_ERRORS):
        assert stranger.do("login", user="carol", password="wrong")["code"] == "unauthenticated"
    assert not stranger.closed


def test_the_error_count_decays(node, clock):
    """Bad requests spread out in time do not add up: the count falls by one every ERROR_DECAY_SECONDS."""
    peer = Peer(node)
    for _ in range(4):
        for _ in range(MAX_ERRORS - 1):
            assert peer.do("no-such-op")["code"] == "bad-request"
        clock.advance((MAX_ERRORS - 1) * ERROR_DECAY_SECONDS)
    assert not peer.closed
    for _ in range(MAX_ERRORS):
        peer.do("lookup", user="bob")  # before login: abuse
    assert peer.closed


def test_buddy_accept_shares_presence(node):
    """Presence is shared only after the buddy request is accepted, and changes are pushed."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    assert alice.do("buddy-add", user="bob")["state"] == "requested"
    assert bob.out[-1] == {"op": "buddy-request", "from": "alice"}
    assert alice.do("lookup", user="bob")["code"] == "not-a-buddy"
    bob.do("buddy-accept", user="alice")
    assert {"op": "presence", "user": "bob", "state": "online", "nat_type": None, "node": "node-a"} in alice.out
    bob.do("presence", state="away", nat_type="endpoint-independent")
    assert alice.out[-1]["state"] == "away" and alice.out[-1]["nat_type"] == "endpoint-independent"
    peer = alice.do("lookup", user="bob")
    assert (peer["online"], peer["state"], peer["node"]) == (True, "away", "node-a")
    listed = alice.do("buddy-list")["buddies"]
    assert listed == [{"user": "bob", "relation": "accepted", "state": "away"}]


def test_buddy_add_does_not_tell_who_exists(node):
    """buddy-add of an unknown name answers and lists exactly like a pending request to a real, offline user."""
    alice = logged_in(node, "alice")
    real, unknown = alice.do("buddy-add", user="carol"), alice.do("buddy-add", user="nobody")
    assert real == {"op": "buddy", "id": 7, "user": "carol", "state": "requested"}
    assert unknown == {"op": "buddy", "id": 7, "user": "nobody", "state": "requested"}
    assert alice.do("buddy-list")["buddies"] == [{"user": "carol", "relation": "requested"},
                                                 {"user": "nobody", "relation": "requested"}]
    assert alice.do("lookup", user="nobody")["code"] == alice.do("lookup", user="carol")["code"] == "not-a-buddy"


def test_buddy_add_of_yourself_is_a_distinct_error(node):
    """Adding yourself is refused with its own code, not the answer an unknown name would get."""
    alice = logged_in(node, "alice")
    refused = alice.do("buddy-add", user="alice")
    assert (refused["op"], refused["code"]) == ("error", "self-buddy")
    assert alice.do("buddy-list")["buddies"] == []


def test_a_full_buddy_list_says_so(node):
    """Past MAX_BUDDIES requests and buddies, buddy-add answers list-full."""
    alice = logged_in(node, "alice")
    for i in range(MAX_BUDDIES):
        assert alice.do("buddy-add", user=f"name{i}")["state"] == "requested"
    assert alice.do("buddy-add", user="carol")["code"] == "list-full"


def test_offline_is_pushed_and_resume_restores(node):
    """Closing pushes offline; the resume token restores the session without the password."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    buddies(node, alice, bob)
    bob2 = Peer(node)
    token = bob2.do("login", user="bob", password="bob-pw")["resume_token"]
    node.closed(bob2.session)
    assert alice.out[-1]["state"] == "offline"
    bob3 = Peer(node)
    resumed = bob3.do("resume", token=token)
    assert resumed["op"] == "welcome" and resumed["resumed"] and resumed["user"] == "bob"
    assert Peer(node).do("resume", token=token)["code"] == "unauthenticated"  # once only


def test_resume_token_expires(node, clock):
    """A resume token is refused after its lifetime."""
    peer = Peer(node)
    token = peer.do("login", user="alice", password="alice-pw")["resume_token"]
    node.closed(peer.session)
    clock.advance(121)
    assert Peer(node).do("resume", token=token)["code"] == "unauthenticated"


def test_logout_ends_the_resume_token(node):
    """After a logout the welcome's resume token logs no one back in, and buddies are not told otherwise."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 1))
    buddies(node, alice, bob)
    assert bob.do("logout")["op"] == "logged-out"
    assert alice.out[-1]["state"] == "offline"
    node.closed(bob.session)
    alice.out.clear()
    assert Peer(node).do("resume", token=bob.welcome["resume_token"])["code"] == "unauthenticated"
    assert "bob" not in node.sessions and not [m for m in alice.out if m["op"] == "presence"]


def test_resume_token_counts_from_the_close(node, clock):
    """A long session is resumable for resume_seconds after its connection closes, not after its login."""
    alice = logged_in(node, "alice")
    clock.advance(600)
    node.closed(alice.session)
    clock.advance(alice.welcome["resume_seconds"] - 1)
    assert Peer(node).do("resume", token=alice.welcome["resume_token"])["op"] == "welcome"
    again = logged_in(node, "bob")
    node.closed(again.session)
    clock.advance(again.welcome["resume_seconds"] + 1)
    assert Peer(node).do("resume", token=again.welcome["resume_token"])["code"] == "unauthenticated"


def test_resume_replaces_a_live_session(node):
    """Resuming with the token of a session that still looks alive takes its place; the old one is closed."""
    alice = logged_in(node, "alice")
    resumed = Peer(node, ("198.18.0.50", 2))
    assert resumed.do("resume", token=alice.welcome["resume_token"])["resumed"] is True
    assert alice.closed and alice.out[-1]["op"] == "replaced"
    assert node.sessions["alice"] is resumed.session


def test_a_second_login_on_one_connection_is_refused(node):
    """A logged-in connection cannot log in again (as anyone) until it logs out."""
    alice = logged_in(node, "alice")
    assert alice.do("login", user="bob", password="bob-pw")["code"] == "conflict"
    assert node.sessions == {"alice": alice.session}
    alice.do("logout")
    assert alice.do("login", user="bob", password="bob-pw")["op"] == "welcome"
    assert node.sessions == {"bob": alice.session}


def test_second_login_replaces_the_first(node):
    """Logging in again elsewhere closes the older session."""
    first = logged_in(node, "alice")
    logged_in(node, "alice", ("198.18.0.99", 1))
    assert first.closed and first.out[-1]["op"] == "replaced"


def test_message_routing(node):
    """Messages reach online buddies only."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    logged_in(node, "carol")  # online, but not a buddy
    buddies(node, alice, bob)
    assert alice.do("message", to="bob", text="hi bob")["op"] == "delivered"
    assert bob.out[-1] == {"op": "message", "from": "alice", "text": "hi bob"}
    assert alice.do("message", to="carol", text="hi")["code"] == "not-a-buddy"
    assert alice.do("message", to="bob", text="x" * 5000)["code"] == "bad-request"


def test_connect_coordination_gives_both_the_same_instant(node, clock):
    """Both sides get each other's candidates and delays that end at the same instant."""
    alice = logged_in(node, "alice", ("198.18.0.7", 40000))
    bob = logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    alice.session.rtt, bob.session.rtt = 0.100, 0.300
    alice.session.rtt_at = bob.session.rtt_at = clock.seconds()
    a_candidates = [{"type": "srflx", "ip": "198.18.0.7", "port": 40001, "protocol": "udp"}]
    pending = alice.do("connect", to="bob", candidates=a_candidates)
    assert pending["op"] == "connect-pending"
    request = [m for m in bob.out if m["op"] == "connect-request"][0]
    assert request["candidates"] == a_candidates and request["from"] == "alice"
    bob.session.rtt = 0.300
    b_candidates = [{"type": "host", "ip": "10.0.0.2", "port": 5000, "protocol": "udp"},
                    {"type": "predicted", "ip": "198.18.0.8", "port": 50002, "protocol": "udp"}]
    alice.out.clear()
    bob.do("connect-answer", token=request["token"], candidates=b_candidates)
    to_alice = [m for m in alice.out if m["op"] == "punch"][0]
    to_bob = [m for m in bob.out if m["op"] == "punch"][0]
    assert to_alice["candidates"] == b_candidates and to_bob["candidates"] == a_candidates
    # Start instant = send time + one-way delay + start_in: equal for both.
    start_alice = 0.100 / 2 + to_alice["start_in_ms"] / 1000
    start_bob = 0.300 / 2 + to_bob["start_in_ms"] / 1000
    assert start_alice == pytest.approx(start_bob)
    assert to_alice["turn"]["username"].endswith(":alice")
    assert bob.do("connect-answer", token=request["token"], candidates=[])["code"] == "not-found"


def test_connect_validation_and_expiry(node, clock):
    """Bad candidates are refused; tokens expire; only the addressee may answer."""
    alice, bob, carol = logged_in(node, "alice"), logged_in(node, "bob"), logged_in(node, "carol")
    buddies(node, alice, bob)
    bad = [{"type": "srflx", "ip": "not-an-ip", "port": 1}]
    assert alice.do("connect", to="bob", candidates=bad)["code"] == "bad-request"
    assert alice.do("connect", to="bob", candidates=[{}] * 33)["code"] == "bad-request"
    token = alice.do("connect", to="bob", candidates=[])["token"]
    assert carol.do("connect-answer", token=token, candidates=[])["code"] == "not-found"
    clock.advance(31)
    assert bob.do("connect-answer", token=token, candidates=[])["code"] == "not-found"
    token = alice.do("connect", to="bob", candidates=[])["token"]
    bob.do("connect-decline", token=token)
    assert alice.out[-1] == {"op": "connect-declined", "token": token, "peer": "bob"}


def test_a_decline_passes_its_reason_on(node):
    """connect-decline's optional reason reaches the requester; one past 64 bytes is a bad request."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    buddies(node, alice, bob)
    token = alice.do("connect", to="bob", candidates=[])["token"]
    assert bob.do("connect-decline", token=token, reason="x" * 65)["code"] == "bad-request"
    bob.do("connect-decline", token=token, reason="fingerprint-changed")
    assert alice.out[-1] == {"op": "connect-declined", "token": token, "peer": "bob", "reason": "fingerprint-changed"}


def pong(peer, after_seconds, clock):
    """Answer the node's latest ping to peer after_seconds later."""
    token = [m for m in peer.out if m["op"] == "ping"][-1]["token"]
    clock.advance(after_seconds)
    peer.do("pong", token=token)


def test_rtt_from_ping(node, clock):
    """A pong to the node's ping sets the session's round-trip time."""
    peer = Peer(node)
    peer.node.receive(peer.session, {"op": "login", "user": "alice", "password": "alice-pw"})
    pong(peer, 0.25, clock)
    assert peer.session.rtt == pytest.approx(0.25)


class SlowHashing:
    """An account store whose password check takes hash_seconds of the node's clock, as scrypt does."""

    def __init__(self, store, clock, hash_seconds):
        self.store, self.clock, self.hash_seconds = store, clock, hash_seconds

    def check_password(self, user, password):
        self.clock.advance(self.hash_seconds)
        return self.store.check_password(user, password)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_first_rtt_leaves_out_the_login_work(node, clock):
    """The RTT ping follows the welcome, so the password hashing is not counted as network time."""
    node.accounts = SlowHashing(node.accounts, clock, hash_seconds=0.05)
    peer = Peer(node)
    assert peer.do("login", user="alice", password="alice-pw")["op"] == "welcome"
    assert [m["op"] for m in peer.out] == ["welcome", "ping"]
    pong(peer, 0.0003, clock)
    assert peer.session.rtt == pytest.approx(0.0003, abs=1e-6)


def punches(*peers):
    return [[m for m in p.out if m["op"] == "punch"] for p in peers]


def start_instants(alice, bob):
    """When each side starts: the punch's one-way trip (half its RTT) plus its start_in_ms."""
    (to_alice,), (to_bob,) = punches(alice, bob)
    return (alice.session.rtt / 2 + to_alice["start_in_ms"] / 1000, bob.session.rtt / 2 + to_bob["start_in_ms"] / 1000)


def connected_buddies(node, clock):
    """alice and bob, buddies, each with a round trip of 50 ms measured now."""
    alice, bob = Peer(node, ("198.18.0.7", 40000)), Peer(node, ("198.18.0.8", 50000))
    for peer, name in ((alice, "alice"), (bob, "bob")):
        peer.do("login", user=name, password=f"{name}-pw")
        pong(peer, 0.05, clock)
    buddies(node, alice, bob)
    return alice, bob


def ops(peer, *wanted):
    return [m["op"] for m in peer.out if m["op"] in wanted]


def test_connect_repings_both_sides_when_an_rtt_is_stale(node, clock):
    """Past RTT_FRESH_SECONDS both sides are pinged again and the start uses the fresh round trips."""
    alice, bob = connected_buddies(node, clock)
    clock.advance(RTT_FRESH_SECONDS + 1)
    alice.do("connect", to="bob", candidates=[])
    assert ops(alice, "ping", "connect-pending") == ["ping", "connect-pending"]
    assert ops(bob, "ping", "connect-request") == ["ping", "connect-request"]
    token = bob.out[-1]["token"]
    pong(alice, 0.1, clock)
    pong(bob, 0.2, clock)  # sent with alice's: 0.3 s ago
    bob.do("connect-answer", token=token, candidates=[])
    assert (alice.session.rtt, bob.session.rtt) == (pytest.approx(0.1), pytest.approx(0.3))
    assert start_instants(alice, bob)[0] == pytest.approx(start_instants(alice, bob)[1])


def test_fresh_rtts_are_not_pinged_again(node, clock):
    """Within RTT_FRESH_SECONDS of a measurement a connect sends no extra ping and starts at once."""
    alice, bob = connected_buddies(node, clock)
    alice.do("connect", to="bob", candidates=[])
    assert ops(alice, "ping") == ops(bob, "ping") == []
    bob.do("connect-answer", token=bob.out[-1]["token"], candidates=[])
    assert all(punches(alice, bob))


def answered_before_alice_pongs(node, clock):
    """alice connects to bob with stale RTTs; bob pongs and answers at once, alice's pong is still out."""
    alice, bob = connected_buddies(node, clock)
    clock.advance(RTT_FRESH_SECONDS + 1)
    alice.do("connect", to="bob", candidates=[])
    token = bob.out[-1]["token"]
    pong(bob, 0.01, clock)
    bob.do("connect-answer", token=token, candidates=[])
    return alice, bob


def test_the_start_waits_for_an_outstanding_pong(node, clock):
    """An answer that beats the requester's pong is held until the pong, so both starts use fresh RTTs."""
    alice, bob = answered_before_alice_pongs(node, clock)
    assert punches(alice, bob) == [[], []]
    pong(alice, 0.2, clock)
    assert alice.session.rtt == pytest.approx(0.21)
    assert start_instants(alice, bob)[0] == pytest.approx(start_instants(alice, bob)[1])


def test_a_missing_pong_delays_the_start_only_briefly(node, clock):
    """A side that never answers the re-ping gets its punch PONG_WAIT_SECONDS later, with the RTT known before."""
    alice, bob = answered_before_alice_pongs(node, clock)
    clock.advance(PONG_WAIT_SECONDS - 0.01)
    assert punches(alice, bob) == [[], []]
    clock.advance(0.02)
    assert alice.session.rtt == pytest.approx(0.05)
    assert start_instants(alice, bob)[0] == pytest.approx(start_instants(alice, bob)[1])


def test_registration_is_closed_by_default(node):
    """register is refused unless open registration is on."""
    peer = Peer(node)
    assert peer.do("register", user="dave", password="dave-password")["code"] == "forbidden"
    node.config.open_registration = True
    assert peer.do("register", user="dave", password="dave-password")["op"] == "registered"
    assert peer.do("register", user="dave", password="dave-password")["code"] == "conflict"


@pytest.mark.parametrize("user, password, code", [
    ("dave smith", "long-enough", "bad-user-name"), ("Dave", "long-enough", "bad-user-name"),
    ("d" * 33, "long-enough", "bad-user-name"), ("dave", "short", "bad-password"),
    ("dave", "1234567", "bad-password"), ("dave", "long\x00enough", "bad-password"),
])
def test_registration_checks_name_and_password(node, user, password, code):
    """Open registration refuses names outside the syntax and passwords under 8 characters, each by its code."""
    node.config.open_registration = True
    peer = Peer(node)
    assert peer.do("register", user=user, password=password)["code"] == code
    assert not fired(node.accounts.check_password(user, password))
    assert peer.do("register", user="dave", password="long-enough")["op"] == "registered"


def test_successful_logins_are_not_rate_limited(node):
    """Only failed attempts count against the login limits."""
    for _ in range(20):
        assert Peer(node).do("login", user="alice", password="alice-pw")["op"] == "welcome"


def test_routed_envelopes_reach_local_sessions(node):
    """An envelope routed from another node is delivered to the local user."""
    bob = logged_in(node, "bob")
    node.handle_routed({"kind": "deliver", "to": "bob", "message": {"op": "message", "from": "x", "text": "y"}})
    assert bob.out[-1] == {"op": "message", "from": "x", "text": "y"}
    node.handle_routed({"kind": "deliver", "to": "nobody", "message": {}})
    node.handle_routed({"kind": "bogus"})


def test_host_cache_learns_ages_and_is_bounded(node, clock):
    """The host cache keeps the newest 200 valid entries and forgets those unseen for an hour."""
    node.learn_hosts([{"host": "198.18.1.1", "port": 3478, "load": 5}, {"host": "bad", "port": 1},
                      {"host": "198.18.1.2", "port": 0}, "junk"])
    assert node.host_cache()[0] == {"host": "198.18.1.1", "port": 3478, "load": 5}
    node.learn_hosts([{"host": f"198.18.{i // 250}.{i % 250}", "port": 4000} for i in range(300)])
    assert len(node.host_cache()) == 200
    clock.advance(3601)
    assert node.host_cache() == []


def test_hosts_exchange_learns_only_the_caller(node):
    """A 'hosts' request adds the calling node at its source address, not the list it claims."""
    caller = Peer(node, ("198.18.3.3", 5555))
    reply = caller.do("hosts", port=3478, load=2, hosts=[{"host": "198.18.9.9", "port": 1}])
    assert reply["op"] == "hosts" and reply["node"] == "node-a"
    cached = node.host_cache()
    assert {"host": "198.18.3.3", "port": 3478, "load": 2} in cached
    assert all(entry["host"] != "198.18.9.9" for entry in cached)


def test_a_huge_load_cannot_swell_the_welcome(node):
    """hosts calls claiming an enormous load are cut to 0, so every welcome still fits in one frame."""
    for port in range(1, 9):
        Peer(node, ("198.18.3.3", 1)).do("hosts", port=port, load=10**4000)
    welcome = logged_in(node, "alice").welcome
    assert {entry["load"] for entry in welcome["host_cache"] if entry["host"] == "198.18.3.3"} == {0}
    assert len(encode(welcome)) < MAX_FRAME_BYTES


def test_host_entries_carry_both_families(node):
    """A dual-stack node's entry carries its other family's address in ips (bad or extra ones dropped), and the
    cache hands it on."""
    node.learn_hosts([{"host": "198.18.4.4", "port": 3478, "load": 1,
                       "ips": ["198.18.4.4", "2001:db8:4::4", "nonsense", 7, "2001:db8:4::5"]}])
    assert node.host_cache()[0] == {"host": "198.18.4.4", "port": 3478, "load": 1,
                                    "ips": ["198.18.4.4", "2001:db8:4::4"]}
    node.learn_hosts([{"host": "2001:db8:5::5", "port": 3478, "ips": "2001:db8:5::6"}])
    assert node.host_cache()[0] == {"host": "2001:db8:5::5", "port": 3478, "load": 0}
    node.learn_hosts([{"host": "198.18.4.4", "port": 3478, "load": 2}])  # a hosts exchange sees one address
    assert node.host_cache()[0] == {"host": "198.18.4.4", "port": 3478, "load": 2,
                                    "ips": ["198.18.4.4", "2001:db8:4::4"]}


def test_welcome_and_hosts_name_this_nodes_addresses_of_both_families(tmp_path, clock):
    """welcome carries node_ips, and the hosts reply this node's entry with ips; neither address of its own is
    learned into its cache."""
    store = AccountStore(tmp_path / "accounts.sqlite")
    store.add("alice", "alice-pw", "example.org")
    config = SignalingConfig(realm="example.org", node_name="node-d", address=("198.18.0.1", 3478),
                             public_ips=("198.18.0.1", "2001:db8::1"))
    dual = SignalingNode(AsyncAccounts.inline(store), clock, config)
    assert logged_in(dual, "alice").welcome["node_ips"] == ["198.18.0.1", "2001:db8::1"]
    reply = Peer(dual, ("198.18.3.3", 5555)).do("hosts", port=3478)
    assert reply["hosts"][0] == {"host": "198.18.0.1", "port": 3478, "load": 1, "ips": ["198.18.0.1", "2001:db8::1"]}
    dual.learn_hosts([{"host": "2001:db8::1", "port": 3478}, {"host": "198.18.0.1", "port": 3478}])
    assert [e["host"] for e in dual.host_cache()] == ["198.18.3.3"]


def test_a_cache_of_long_ipv6_entries_still_fits_one_frame(node):
    """200 entries of the longest kind (IPv6 host, both families, the largest load) are cut to what fits, so
    the welcome is still one frame; the newest are kept."""
    node.learn_hosts([{"host": f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{i:x}", "port": 65535, "load": 2**31 - 1,
                       "ips": [f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{i:x}", "255.255.255.254"]} for i in range(200)])
    welcome = logged_in(node, "alice").welcome
    assert len(encode(welcome)) < MAX_FRAME_BYTES
    assert welcome["host_cache"][0]["host"] == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:c7"
    assert 40 < len(welcome["host_cache"]) < 200


def test_connect_passes_ice_credentials_through(node):
    """ufrag/pwd of the connect reach the buddy's connect-request, and each punch carries the peer's."""
    alice = logged_in(node, "alice", ("198.18.0.7", 40000))
    bob = logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    a_ice = {"ufrag": "aUfr", "pwd": "a" * 21 + "+/"}
    b_ice = {"ufrag": "B0b/" * 16, "pwd": "Zz9" * 42 + "zz"}
    alice.do("connect", to="bob", candidates=[], **a_ice)
    request = [m for m in bob.out if m["op"] == "connect-request"][0]
    assert (request["ufrag"], request["pwd"]) == (a_ice["ufrag"], a_ice["pwd"])
    alice.out.clear()
    bob.do("connect-answer", token=request["token"], candidates=[], **b_ice)
    to_alice = [m for m in alice.out if m["op"] == "punch"][0]
    to_bob = [m for m in bob.out if m["op"] == "punch"][0]
    assert (to_alice["ufrag"], to_alice["pwd"]) == (b_ice["ufrag"], b_ice["pwd"])
    assert (to_bob["ufrag"], to_bob["pwd"]) == (a_ice["ufrag"], a_ice["pwd"])


def test_connect_without_ice_credentials_carries_none(node):
    """A connect without ufrag/pwd still works and its frames carry no credentials."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    buddies(node, alice, bob)
    alice.do("connect", to="bob", candidates=[])
    request = [m for m in bob.out if m["op"] == "connect-request"][0]
    bob.do("connect-answer", token=request["token"], candidates=[])
    frames = [request, [m for m in alice.out if m["op"] == "punch"][0], bob.out[-1]]
    assert all("ufrag" not in m and "pwd" not in m for m in frames)


@pytest.mark.parametrize("fields", [
    {"ufrag": "abc"}, {"ufrag": "a" * 65}, {"ufrag": "ab-cd"}, {"ufrag": 1234},
    {"pwd": "a" * 21}, {"pwd": "a" * 129}, {"pwd": "a" * 21 + "="}, {"pwd": "a" * 21 + "\n"},
    {"ufrag": "abcd\n"},
])
def test_bad_ice_credentials_are_refused(node, fields):
    """A ufrag or pwd of the wrong length or alphabet is a bad-request, on connect and on answer."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    buddies(node, alice, bob)
    assert alice.do("connect", to="bob", candidates=[], **fields)["code"] == "bad-request"
    assert not [m for m in bob.out if m["op"] == "connect-request"]
    alice.do("connect", to="bob", candidates=[])
    token = [m for m in bob.out if m["op"] == "connect-request"][0]["token"]
    assert bob.do("connect-answer", token=token, candidates=[], **fields)["code"] == "bad-request"
    assert token in node.pending


def udp(kind, ip, port):
    return {"type": kind, "ip": ip, "port": port, "protocol": "udp"}


def test_candidates_trickled_before_the_answer_ride_in_the_peers_punch(node):
    """RFC 8838: a caller's candidates trickled before the answer join the candidates the callee's punch
    carries; later ones are pushed to it, end marked, and nothing after the end is taken."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    assert alice.welcome["trickle"] is True
    host, srflx, relay = udp("host", "10.0.0.1", 4000), udp("srflx", "198.18.0.7", 4000), udp("relay", "198.18.0.1", 9)
    token = alice.do("connect", to="bob", candidates=[host], trickle=True)["token"]
    request = [m for m in bob.out if m["op"] == "connect-request"][0]
    assert request["trickle"] is True and request["candidates"] == [host]
    assert alice.do("connect-candidates", token=token, candidates=[srflx]) is None and alice.out == []
    bob.do("connect-answer", token=token, candidates=[udp("srflx", "198.18.0.8", 5000)], trickle=True)
    to_bob = [m for m in bob.out if m["op"] == "punch"][0]
    assert to_bob["candidates"] == [host, srflx] and to_bob["trickle"] is True
    assert [m for m in alice.out if m["op"] == "punch"][0]["trickle"] is True
    bob.do("connect-candidates", token=token, candidates=[], end=True)
    bob.out.clear()
    alice.do("connect-candidates", token=token, candidates=[relay], end=True)
    assert bob.out == [{"op": "connect-candidates", "token": token, "candidates": [relay], "end": True}]
    assert alice.do("connect-candidates", token=token, candidates=[], end=True)["code"] == "not-found"
    assert bob.do("connect-candidates", token=token, candidates=[])["code"] == "not-found"


def test_both_sides_trickle_to_each_other_after_the_punch(node):
    """A callee that answers with trickle gets a punch without it until end-of-candidates, and its
    trickled candidates reach the caller; a side past its end is refused."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    token = alice.do("connect", to="bob", candidates=[], trickle=True)["token"]
    alice.do("connect-candidates", token=token, candidates=[udp("host", "10.0.0.1", 4000)], end=True)
    alice.out.clear()
    bob.do("connect-answer", token=token, candidates=[udp("host", "10.0.1.1", 5000)], trickle=True)
    to_alice = [m for m in alice.out if m["op"] == "punch"][0]
    to_bob = [m for m in bob.out if m["op"] == "punch"][0]
    assert to_alice["trickle"] is True and "trickle" not in to_bob
    assert to_bob["candidates"] == [udp("host", "10.0.0.1", 4000)]
    alice.out.clear()
    bob.do("connect-candidates", token=token, candidates=[udp("relay", "198.18.0.1", 7)])
    bob.do("connect-candidates", token=token, candidates=[], end=True)
    assert alice.out == [
        {"op": "connect-candidates", "token": token, "candidates": [udp("relay", "198.18.0.1", 7)], "end": False},
        {"op": "connect-candidates", "token": token, "candidates": [], "end": True}]
    assert alice.do("connect-candidates", token=token, candidates=[])["code"] == "not-found"


def test_trickled_candidates_are_bounded_and_checked(node, clock):
    """Past 32 candidates for one side, after end, without trickle, with a bad flag or an unknown token:
    refused; a trickling connect's state ends with its token."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    many = [udp("host", "10.0.0.1", 1000 + i) for i in range(20)]
    token = alice.do("connect", to="bob", candidates=many, trickle=True)["token"]
    assert alice.do("connect-candidates", token=token, candidates=many)["code"] == "bad-request"
    assert alice.do("connect-candidates", token=token, candidates=many[:5], end="yes")["code"] == "bad-request"
    assert alice.do("connect-candidates", token="nope.node-a", candidates=[])["code"] == "not-found"
    assert alice.do("connect", to="bob", candidates=[], trickle=1)["code"] == "bad-request"
    plain = alice.do("connect", to="bob", candidates=[])["token"]
    assert alice.do("connect-candidates", token=plain, candidates=[])["code"] == "bad-request"
    bob.do("connect-answer", token=token, candidates=[], trickle=True)
    assert bob.do("connect-candidates", token=token, candidates=many[:10]) is None
    assert token in node.trickling
    clock.advance(31)
    assert bob.do("connect-candidates", token=token, candidates=[])["code"] == "not-found"
    assert token not in node.trickling


def test_a_callee_that_does_not_trickle_gets_the_callers_candidates_up_to_the_end(node, clock):
    """The punch for a callee that answered without trickle waits for the caller's end-of-candidates
    (at most END_WAIT_SECONDS), so that punch carries them all."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob", ("198.18.0.8", 50000))
    buddies(node, alice, bob)
    host, relay = udp("host", "10.0.0.1", 4000), udp("relay", "198.18.0.1", 9)
    token = alice.do("connect", to="bob", candidates=[host], trickle=True)["token"]
    bob.do("connect-answer", token=token, candidates=[udp("srflx", "198.18.0.8", 5000)])
    assert ops(bob, "punch") == []
    alice.do("connect-candidates", token=token, candidates=[relay], end=True)
    (to_bob,) = [m for m in bob.out if m["op"] == "punch"]
    assert to_bob["candidates"] == [host, relay] and "trickle" not in to_bob
    assert token not in node.trickling
    token = alice.do("connect", to="bob", candidates=[host], trickle=True)["token"]
    bob.do("connect-answer", token=token, candidates=[])
    clock.advance(END_WAIT_SECONDS)
    (to_bob,) = [m for m in bob.out if m["op"] == "punch"]
    assert to_bob["candidates"] == [host] and to_bob["trickle"] is True


def test_fitting_counts_bytes_as_a_frame_carries_them():
    """fitting keeps the leading entries whose UTF-8 JSON (a comma each) fits the budget, and says if it cut."""
    entries = [{"user": "jürgen"}, {"user": "ann"}]  # 18 bytes + 1 (ü is two), then 14 + 1
    assert fitting(entries, 34) == (entries, False)
    assert fitting(entries, 33) == (entries[:1], True)
    assert fitting(entries, 18) == ([], True)
    assert fitting([], 0) == ([], False)
