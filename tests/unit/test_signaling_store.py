"""The signaling core while its account store is slow, away or large: requests in order, the
``unavailable`` error, logged-in users going on from memory, and buddy lists a page at a time."""

import pytest
from twisted.internet.task import Clock

from rendezvous.node.accounts import BUDDY_PAGE, AccountStore
from rendezvous.node.signaling import SignalingConfig, SignalingNode
from rendezvous.node.signaling.core import MAX_BACKLOG
from rendezvous.node.signaling.login import LOGIN_SOURCE_BURST
from rendezvous.wire.frames import MAX_FRAME_BYTES, FrameError, encode
from tests.switchable_store import Switchable
from tests.unit.test_signaling import Peer, buddies, logged_in


@pytest.fixture
def store(tmp_path):
    s = AccountStore(tmp_path / "accounts.sqlite")
    for name in ("alice", "bob", "carol"):
        s.add(name, f"{name}-pw", "example.org")
    yield s
    s.close()


@pytest.fixture
def accounts(store):
    return Switchable(store)


@pytest.fixture
def node(accounts):
    clock = Clock()
    clock.advance(1_700_000_000)
    return SignalingNode(accounts, clock, SignalingConfig(realm="example.org", node_name="node-a"))


def test_requests_behind_a_slow_one_are_answered_in_order(node, accounts):
    """Frames that arrive while a login waits for the store are answered after it, in the order they came."""
    peer = Peer(node)
    accounts.held = []
    for request_id, frame in enumerate([{"op": "login", "user": "alice", "password": "alice-pw"},
                                        {"op": "ping", "token": "after-login"},
                                        {"op": "buddy-add", "user": "bob"}, {"op": "ping", "token": "last"}]):
        node.receive(peer.session, {**frame, "id": request_id})
    assert peer.out == []
    accounts.release()  # the password check
    assert [m["op"] for m in peer.out] == ["welcome", "ping", "pong"]
    accounts.release()  # the buddy request
    assert [(m["op"], m.get("id")) for m in peer.out if m.get("id") is not None] == [
        ("welcome", 0), ("pong", 1), ("buddy", 2), ("pong", 3)]


def test_a_full_backlog_answers_busy(node, accounts):
    """Past MAX_BACKLOG frames waiting behind a slow request, each further one is refused with busy at once."""
    peer = logged_in(node, "alice")
    accounts.held = []
    peer.out.clear()
    for request_id in range(MAX_BACKLOG + 2):
        node.receive(peer.session, {"op": "buddy-list", "id": request_id})
    assert [(m["op"], m["code"], m["id"]) for m in peer.out] == [("error", "busy", MAX_BACKLOG + 1)]
    for _ in range(MAX_BACKLOG + 1):
        accounts.release()
    assert [m["id"] for m in peer.out if m["op"] == "buddies"] == list(range(MAX_BACKLOG + 1))


def test_a_bad_frame_behind_a_full_backlog_still_closes_the_connection(node, accounts):
    """A fatal frame error that comes while the backlog is full is kept, answered bad-frame in its turn, and
    the connection is closed (the adapter reads nothing after it, so dropping it would leave it open)."""
    peer = logged_in(node, "alice")
    accounts.held = []
    peer.out.clear()
    for request_id in range(MAX_BACKLOG + 1):
        node.receive(peer.session, {"op": "buddy-list", "id": request_id})
    node.receive(peer.session, FrameError("bad frame header", fatal=True))
    for _ in range(MAX_BACKLOG + 1):
        accounts.release()
    assert [m["op"] for m in peer.out][-2:] == ["buddies", "error"] and peer.out[-1]["code"] == "bad-frame"
    assert peer.closed


def test_a_connection_closed_during_the_password_check_never_logs_in(node, accounts):
    """A login whose connection goes while the store checks the password leaves no session and no presence."""
    bob = logged_in(node, "bob")
    buddies(node, logged_in(node, "alice"), bob)
    node.closed(node.sessions["alice"])
    bob.out.clear()
    peer = Peer(node)
    accounts.held = []
    node.receive(peer.session, {"op": "login", "id": 1, "user": "alice", "password": "alice-pw"})
    node.closed(peer.session)
    accounts.release()
    assert "alice" not in node.sessions and bob.out == []


def test_without_the_database_logins_fail_clearly_and_sessions_go_on(node, accounts):
    """With the store away, login and buddy-list get unavailable; logged-in buddies still message, look up and
    see presence, and the failed logins do not count against the login rate limits."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    buddies(node, alice, bob)
    accounts.down = True
    for _ in range(10):
        refused = Peer(node).do("login", user="carol", password="carol-pw")
        assert (refused["op"], refused["code"]) == ("error", "unavailable")
    assert alice.do("buddy-list")["code"] == "unavailable"
    assert alice.do("message", to="bob", text="still here")["op"] == "delivered"
    assert bob.out[-1] == {"op": "message", "from": "alice", "text": "still here"}
    assert alice.do("lookup", user="bob")["online"] is True
    assert alice.do("lookup", user="carol")["code"] == "not-a-buddy"
    bob.do("presence", state="away")
    assert alice.out[-1]["state"] == "away"
    accounts.down = False
    assert Peer(node).do("login", user="carol", password="carol-pw")["op"] == "welcome"


def test_a_resumed_session_keeps_its_buddies_while_the_database_is_away(node, accounts):
    """A resume while the store is away carries the closed session's buddies, so messages still go through."""
    alice, bob = logged_in(node, "alice"), logged_in(node, "bob")
    buddies(node, alice, bob)
    token = alice.welcome["resume_token"]
    node.closed(alice.session)
    accounts.down = True
    again = Peer(node)
    assert again.do("resume", token=token)["op"] == "welcome"
    assert again.do("message", to="bob", text="back")["op"] == "delivered"


def test_buddy_list_pages_stay_under_the_frame_limit(node, store):
    """A list of requests to long, JSON-escaped names comes in pages whose frames fit, and the pages add up."""
    alice = logged_in(node, "alice")
    names = [f"{i:03d}" + "\x01" * 125 for i in range(120)]  # 128 bytes, six in JSON each
    for name in names:
        store.request_buddy("alice", name)
    seen, after, pages = [], None, 0
    while True:
        fields = {} if after is None else {"after": after}
        page = alice.do("buddy-list", **fields)
        assert len(encode(page)) <= MAX_FRAME_BYTES + 4 and len(page["buddies"]) <= BUDDY_PAGE
        seen += [entry["user"] for entry in page["buddies"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert seen == names and pages > len(names) / BUDDY_PAGE + 1


def test_a_short_list_is_one_page(node):
    """A list shorter than a page answers with next null."""
    alice = logged_in(node, "alice")
    alice.do("buddy-add", user="bob")
    assert alice.do("buddy-list") == {"op": "buddies", "id": 7, "next": None,
                                      "buddies": [{"user": "bob", "relation": "requested"}]}
    assert alice.do("buddy-list", after=5)["code"] == "bad-request"


def test_many_logins_from_one_address_at_once_all_get_in(tmp_path):
    """Logins from one address beyond the per-source burst wait for those in flight instead of being
    refused: 60 users behind one NAT logging in at once (after a failover) all get a welcome."""
    store = AccountStore(tmp_path / "many.sqlite")
    names = [f"user{n}" for n in range(60)]
    for name in names:
        store.add(name, f"{name}-pw", "example.org")
    accounts = Switchable(store)
    node = SignalingNode(accounts, Clock(), SignalingConfig(realm="example.org", node_name="node-a"))
    accounts.held = []
    peers = [Peer(node, ("198.51.100.7", 40000 + n)) for n in range(len(names))]
    for peer, name in zip(peers, names):
        node.receive(peer.session, {"op": "login", "id": 1, "user": name, "password": f"{name}-pw"})
    for _ in range(len(names)):
        accounts.release()
    assert [[m["op"] for m in p.out if m.get("id") == 1] for p in peers] == [["welcome"]] * len(names)
    store.close()


def test_guesses_from_one_address_at_once_are_still_limited(tmp_path):
    """Wrong passwords sent all at once keep their tokens: past the per-source burst they are refused."""
    store = AccountStore(tmp_path / "guess.sqlite")
    store.add("alice", "alice-pw", "example.org")
    accounts = Switchable(store)
    node = SignalingNode(accounts, Clock(), SignalingConfig(realm="example.org", node_name="node-a"))
    accounts.held = []
    peers = [Peer(node, ("198.51.100.8", 40000 + n)) for n in range(40)]
    for n, peer in enumerate(peers):
        node.receive(peer.session, {"op": "login", "id": 1, "user": f"user{n}", "password": "guess"})
    for _ in range(40):
        accounts.release()
    codes = [[m.get("code") for m in p.out if m.get("id") == 1][-1] for p in peers]
    assert codes.count("unauthenticated") == LOGIN_SOURCE_BURST and codes.count("rate-limited") == 40 - LOGIN_SOURCE_BURST
    store.close()
