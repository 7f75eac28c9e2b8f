"""The signaling client on a fake transport and a fake clock."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rendezvous.peer.signaling_client import (
    MAX_REQUESTS_IN_FLIGHT,
    MAX_UNHANDLED_FRAMES,
    SignalingClient,
    SignalingConnectionLost,
    SignalingRequestError,
    _SignalingStream,
)
from rendezvous.wire.frames import FrameReader, encode
from rendezvous.wire.streams import IDLE_TIMEOUT_SECONDS, MAX_FRAMES_WHILE_PAUSED


class Wire:
    """A client on a StringTransport; ``sent()`` decodes what it wrote, ``push()`` feeds frames in."""

    def __init__(self):
        self.clock = Clock()
        self.client = SignalingClient(self.clock, request_timeout_seconds=5)
        self.stream = _SignalingStream(self.client)
        self.transport = StringTransport()
        self.stream.makeConnection(self.transport)
        self.reader = FrameReader()

    def sent(self):
        data = self.transport.value()
        self.transport.clear()
        return self.reader.feed(data)

    def push(self, *messages):
        self.stream.dataReceived(b"".join(encode(m) for m in messages))


def results(deferred):
    out = []
    deferred.addBoth(out.append)
    return out


def test_replies_match_requests_by_id():
    """Each reply fires the request with its id, whatever the order."""
    wire = Wire()
    first, second = results(wire.client.request("lookup", user="bob")), results(wire.client.request("buddy-list"))
    frames = wire.sent()
    assert [(f["op"], f["id"]) for f in frames] == [("lookup", 1), ("buddy-list", 2)]
    assert frames[0]["user"] == "bob"
    wire.push({"op": "buddies", "id": 2, "buddies": []}, {"op": "peer", "id": 1, "user": "bob"})
    assert first == [{"op": "peer", "id": 1, "user": "bob"}]
    assert second[0]["op"] == "buddies"


def test_error_reply_fails_the_request():
    """An error frame with the request's id fails it with the code and reason."""
    wire = Wire()
    out = results(wire.client.request("login", user="alice", password="x"))
    wire.push({"op": "error", "id": 1, "code": "unauthenticated", "reason": "wrong user name or password"})
    assert out[0].check(SignalingRequestError)
    assert (out[0].value.code, out[0].value.reason) == ("unauthenticated", "wrong user name or password")


def test_connection_loss_fails_every_pending_request():
    """Losing the connection fails all requests in flight and fires when_closed."""
    wire = Wire()
    pending = [results(wire.client.request("ping", token=str(i))) for i in range(3)]
    closed = results(wire.client.when_closed())
    wire.stream.connectionLost(Failure(ConnectionLost()))
    assert all(p[0].check(SignalingConnectionLost) for p in pending)
    assert closed == [None] and not wire.client.connected
    assert results(wire.client.request("ping"))[0].check(SignalingConnectionLost)
    assert results(wire.client.when_closed()) == [None]


def test_pings_are_answered():
    """A ping from the node gets a pong with the same token and never reaches handlers."""
    wire = Wire()
    seen = []
    wire.client.on("ping", seen.append)
    wire.push({"op": "ping", "token": "abcd"})
    assert wire.sent() == [{"op": "pong", "token": "abcd"}]
    assert seen == []


def test_pushed_frames_reach_handlers_and_wait_for_late_ones():
    """Pushed frames go to their handlers; those that came before a handler are replayed to it."""
    wire = Wire()
    wire.push({"op": "punch", "token": "t1"}, {"op": "presence", "user": "bob", "state": "online"})
    punches, presences = [], []
    wire.client.on("punch", punches.append)
    assert punches == [{"op": "punch", "token": "t1"}]
    wire.push({"op": "punch", "token": "t2"})
    assert [p["token"] for p in punches] == ["t1", "t2"]
    wire.client.on("presence", presences.append)
    wire.client.off("punch", punches.append)
    wire.push({"op": "punch", "token": "t3"})
    assert len(punches) == 2 and presences[0]["user"] == "bob"


def test_unhandled_frames_are_bounded():
    """Without a handler only the newest frames are kept; the rest are counted as dropped."""
    wire = Wire()
    wire.push(*[{"op": "message", "from": "bob", "text": str(i)} for i in range(MAX_UNHANDLED_FRAMES + 10)])
    assert wire.client.dropped == 10
    seen = []
    wire.client.on("message", seen.append)
    assert len(seen) == MAX_UNHANDLED_FRAMES and seen[0]["text"] == "10"


def test_a_failing_handler_does_not_break_the_stream():
    """A handler that raises is logged; later frames and other handlers still work."""
    wire = Wire()
    seen = []
    wire.client.on("message", lambda m: 1 / 0)
    wire.client.on("message", seen.append)
    wire.push({"op": "message", "text": "a"}, {"op": "message", "text": "b"})
    assert [m["text"] for m in seen] == ["a", "b"]


def test_requests_time_out_and_are_bounded():
    """A request without a reply fails after its timeout; too many in flight fail at once."""
    wire = Wire()
    slow = results(wire.client.request("lookup", user="bob"))
    wire.clock.advance(5)
    assert slow[0].check(TimeoutError)
    wire.push({"op": "peer", "id": 1})  # a late reply is ignored, not an error
    for _ in range(MAX_REQUESTS_IN_FLIGHT):
        wire.client.request("buddy-list").addErrback(lambda f: None)
    refused = results(wire.client.request("buddy-list"))
    assert refused[0].check(SignalingRequestError) and refused[0].value.code == "busy"
    wire.clock.advance(5)


def test_send_has_no_id_and_errors_without_id_are_pushed():
    """send() writes a frame without id; an error without id goes to on('error')."""
    wire = Wire()
    wire.client.send("connect-answer", token="t", candidates=[])
    assert wire.sent() == [{"op": "connect-answer", "token": "t", "candidates": []}]
    errors = []
    wire.client.on("error", errors.append)
    wire.push({"op": "error", "id": None, "code": "not-found", "reason": "unknown token"})
    assert errors[0]["code"] == "not-found"


def test_a_node_that_does_not_read_is_dropped():
    """Frames piling up while the transport is paused abort the connection."""
    wire = Wire()
    wire.stream.pauseProducing()
    for i in range(MAX_FRAMES_WHILE_PAUSED):
        wire.client.send("message", to="bob", text=str(i))
    assert not wire.transport.disconnecting
    wire.client.send("message", to="bob", text="one too many")
    assert wire.transport.disconnecting


def test_silence_closes_the_connection():
    """A node silent for three ping intervals is taken as gone; frames reset the count."""
    wire = Wire()
    wire.clock.advance(IDLE_TIMEOUT_SECONDS - 1)
    wire.push({"op": "ping", "token": "x"})
    wire.clock.advance(IDLE_TIMEOUT_SECONDS - 1)
    assert not wire.transport.disconnecting
    wire.clock.advance(1)
    assert wire.transport.disconnecting


def test_an_out_of_step_stream_is_closed():
    """A bad frame header closes the stream; a frame that is not a JSON object is only counted."""
    wire = Wire()
    wire.stream.dataReceived(b"\xf5\x01\x00\x02[]")
    assert wire.client.dropped == 1 and not wire.transport.disconnecting
    wire.stream.dataReceived(b"\x16\x03\x01\x00")
    assert wire.transport.disconnecting


def test_welcome_fills_the_attributes():
    """The welcome's user, node, mapped address and relays become attributes."""
    client = SignalingClient(Clock())
    welcome = {"op": "welcome", "user": "alice", "node": "n1", "mapped": ["198.18.0.7", 4000],
               "relays": ["turn:198.18.0.1:3478"]}
    client._welcomed(welcome, ("198.18.0.1", 3478))
    assert (client.user, client.node, client.mapped_address) == ("alice", "n1", ("198.18.0.7", 4000))
    assert client.relays == ["turn:198.18.0.1:3478"] and client.server == ("198.18.0.1", 3478)
    assert client.welcome is welcome


def test_relay_credentials_are_renewed_past_half_their_ttl():
    """The welcome's relay credentials serve for half their ttl; then the node is asked once for new ones,
    and a node that cannot give them leaves the old ones."""
    wire = Wire()
    old = {"username": "1:alice", "password": "p", "ttl": 600}
    wire.client._welcomed({"op": "welcome", "user": "alice", "turn": old}, ("198.18.0.1", 3478))
    wire.clock.advance(299)
    assert results(wire.client.turn_credentials()) == [old] and wire.sent() == []
    wire.clock.advance(2)
    first, second = results(wire.client.turn_credentials()), results(wire.client.turn_credentials())
    (frame,) = wire.sent()
    assert frame["op"] == "turn-credentials" and first == second == []
    new = {"username": "2:alice", "password": "q", "ttl": 600}
    wire.push({"op": "turn-credentials", "id": frame["id"], "turn": new})
    assert first == second == [new]
    assert results(wire.client.turn_credentials()) == [new] and wire.sent() == []
    wire.clock.advance(301)
    late = results(wire.client.turn_credentials())
    (frame,) = wire.sent()
    wire.push({"op": "error", "id": frame["id"], "code": "bad-request", "reason": "unknown op"})
    assert late == [new]


def test_no_relay_means_no_credentials():
    """Without a relay (turn null in the welcome) there are no credentials, and nothing is asked."""
    wire = Wire()
    wire.client._welcomed({"op": "welcome", "user": "alice", "turn": None}, ("198.18.0.1", 3478))
    wire.clock.advance(10_000)
    assert results(wire.client.turn_credentials()) == [None] and wire.sent() == []


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=8)
frames = st.fixed_dictionaries({"op": st.sampled_from(["ping", "error", "punch", "welcome", "x"])},
                               optional={"id": json_values, "token": json_values, "code": json_values})


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, max_size=20), st.binary(max_size=64))
def test_any_frames_leave_the_client_sound(messages, junk):
    """Arbitrary frames and bytes never raise; buffers stay bounded."""
    wire = Wire()
    pending = results(wire.client.request("buddy-list"))
    wire.push(*messages)
    wire.stream.dataReceived(junk)
    assert len(wire.client._unhandled) <= MAX_UNHANDLED_FRAMES
    assert len(pending) <= 1
    wire.stream.connectionLost(Failure(ConnectionLost()))
    assert len(pending) == 1


def test_close_is_bounded_in_time():
    """close() asks the transport to close, and aborts it when the node does not finish the close."""
    wire = Wire()
    closed = results(wire.client.close())
    assert wire.transport.disconnecting and wire.transport.producer is None and closed == []
    wire.clock.advance(5)
    assert wire.transport.disconnected
    wire.stream.connectionLost(Failure(ConnectionLost()))
    assert closed == [None]


def test_frames_before_bad_bytes_are_handled_then_the_stream_is_aborted():
    """A reply followed by bad bytes in one chunk still fires its request before the stream is aborted."""
    wire = Wire()
    out = results(wire.client.request("buddy-list"))
    wire.stream.dataReceived(encode({"op": "buddies", "id": 1, "buddies": []}) + b"GARBAGE!")
    assert out == [{"op": "buddies", "id": 1, "buddies": []}]
    assert wire.transport.disconnecting
