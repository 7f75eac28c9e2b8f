"""relay.client.TurnClient against a scripted server on task.Clock: auth, retransmission, data path."""

import struct

import pytest
from twisted.internet.task import Clock

from relay.client import (
    ConnectionClosed,
    RealmMismatch,
    TransactionTimeout,
    TurnClient,
    TurnError,
)
from rendezvous.stun import Attr, Class, Error, Message, Method
from rendezvous.stun.attributes import (
    decode_uint16,
    decode_uint32,
    encode_error_code,
    encode_uint32,
)
from rendezvous.stun.framing import StreamFramer, encode_channel_data
from rendezvous.stun.integrity import long_term_key

SERVER = ("192.0.2.1", 3478)
PEER = ("198.51.100.7", 40000)
RELAYED = ("192.0.2.1", 50000)
KEY = long_term_key("alice", "example.org", "secret")


class Wire:
    """Collects what the client writes; answers requests like a TURN server would."""

    def __init__(self, client, reliable=False):
        self.client = client
        self.sent = []
        self.framer = StreamFramer() if reliable else None
        self.nonces = [b"nonce-1"]
        self.sign = True
        client._attach(self.sent.append, lambda: client._connection_lost())

    def requests(self):
        frames = []
        for data in self.sent:
            frames += self.framer.feed(data) if self.framer else [data]
        return [Message.decode(f) for f in frames if f[0] < 0x40]

    def answer(self, request, cls=Class.SUCCESS, attrs=(), error=None, sign=None):
        response = Message(request.method, cls, request.transaction_id)
        if error is not None:
            response.add(Attr.ERROR_CODE, encode_error_code(error, "x"))
        for attr_type, value in attrs:
            response.add(attr_type, value)
        if request.method == Method.ALLOCATE and cls is Class.SUCCESS:
            response.add_address(Attr.XOR_RELAYED_ADDRESS, RELAYED)
            response.add_address(Attr.XOR_MAPPED_ADDRESS, ("203.0.113.9", 1234))
            response.add(Attr.LIFETIME, encode_uint32(600))
        key = KEY if (self.sign if sign is None else sign) and cls is Class.SUCCESS else None
        self.client._packet(response.encode(integrity_key=key))

    def serve(self, request):
        """The long-term credential dance of RFC 8489 §9.2.4, then success."""
        if request.get(Attr.USERNAME) is None:
            self.answer(request, Class.ERROR, [(Attr.REALM, b"example.org"), (Attr.NONCE, self.nonces[-1])],
                        error=Error.UNAUTHENTICATED, sign=False)
        elif request.get(Attr.NONCE) != self.nonces[-1]:
            self.answer(request, Class.ERROR, [(Attr.REALM, b"example.org"), (Attr.NONCE, self.nonces[-1])],
                        error=Error.STALE_NONCE, sign=False)
        else:
            assert request.check_integrity(KEY)
            self.answer(request)

    def serve_all(self):
        """Answer every request not answered yet, until none is left."""
        answered = set()
        for _ in range(10):
            todo = [r for r in self.requests() if r.transaction_id not in answered]
            if not todo:
                return
            for request in todo:
                answered.add(request.transaction_id)
                self.serve(request)


def make(transport="udp", **kw):
    clock = Clock()
    client = TurnClient(clock, SERVER, transport, "alice", "secret", **kw)
    return clock, client, Wire(client, reliable=transport != "udp")


def result_of(deferred):
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_allocate_answers_the_401_challenge():
    """The first Allocate goes without credentials; the retry carries USERNAME, REALM, NONCE and integrity."""
    clock, client, wire = make()
    d = client.allocate(300)
    wire.serve_all()
    assert result_of(d) == RELAYED
    first, second = wire.requests()
    assert first.get(Attr.USERNAME) is None and Attr.MESSAGE_INTEGRITY not in first
    assert second.get(Attr.USERNAME) == b"alice" and second.get(Attr.REALM) == b"example.org"
    assert second.transaction_id != first.transaction_id
    assert decode_uint32(second.get(Attr.LIFETIME)) == 300
    assert second.get(Attr.REQUESTED_TRANSPORT)[0] == 17
    assert client.mapped_address == ("203.0.113.9", 1234) and client.lifetime_seconds == 600
    assert client.realm == "example.org"


def test_stale_nonce_is_retried_with_the_new_nonce():
    """A 438 makes the client retry once with the nonce the error carried."""
    clock, client, wire = make()
    d = client.allocate()
    wire.serve_all()
    result_of(d)
    wire.nonces.append(b"nonce-2")
    d = client.refresh(600)
    wire.serve_all()
    assert result_of(d) == 600
    assert wire.requests()[-1].get(Attr.NONCE) == b"nonce-2"


def test_wrong_password_fails_with_401():
    """A 401 to a request that already carried credentials is final."""
    clock, client, wire = make()
    client.credentials.password = "wrong"
    d = client.allocate()
    requests = wire.requests()
    wire.answer(requests[0], Class.ERROR, [(Attr.REALM, b"example.org"), (Attr.NONCE, b"n")],
                error=Error.UNAUTHENTICATED, sign=False)
    retry = wire.requests()[1]
    wire.answer(retry, Class.ERROR, [(Attr.REALM, b"example.org"), (Attr.NONCE, b"n")],
                error=Error.UNAUTHENTICATED, sign=False)
    with pytest.raises(TurnError) as info:
        result_of(d)
    assert info.value.code == 401
    assert len(wire.requests()) == 2


def test_pinned_realm_must_match():
    """A realm given by the caller that differs from the server's fails with RealmMismatch."""
    clock, client, wire = make(realm="other.org")
    d = client.allocate()
    wire.serve_all()
    with pytest.raises(RealmMismatch):
        result_of(d)


def test_unsigned_success_is_discarded():
    """A success response to an authenticated request without valid integrity is ignored (RFC 8489 §9.2.5)."""
    clock, client, wire = make()
    d = client.allocate()
    wire.serve_all()
    result_of(d)
    d = client.refresh(600)
    request = wire.requests()[-1]
    wire.answer(request, sign=False)
    assert not d.called and client.dropped == 1
    wire.answer(request)
    assert result_of(d) == 600


def test_udp_requests_are_retransmitted_then_time_out():
    """Over UDP a request is resent on the RFC 8489 schedule and fails with TransactionTimeout."""
    clock, client, wire = make(rc=3, rm=2)
    d = client.allocate()
    clock.advance(0.5)
    clock.advance(1.0)
    assert len(wire.sent) == 3 and len(set(wire.sent)) == 1
    clock.advance(1.0)
    with pytest.raises(TransactionTimeout):
        result_of(d)


def test_tcp_requests_are_sent_once():
    """Over TCP the request is written once and fails after Ti = 39.5 s."""
    clock, client, wire = make("tcp")
    d = client.allocate()
    clock.advance(39)
    assert len(wire.sent) == 1 and not d.called
    clock.advance(1)
    with pytest.raises(TransactionTimeout):
        result_of(d)


def test_error_responses_raise_turn_error():
    """Any other error response fails the request with its code and reason."""
    clock, client, wire = make()
    d = client.allocate()
    wire.serve_all()
    result_of(d)
    d = client.create_permission([PEER])
    wire.answer(wire.requests()[-1], Class.ERROR, error=Error.FORBIDDEN, sign=True)
    with pytest.raises(TurnError) as info:
        result_of(d)
    assert info.value.code == 403 and "CREATE_PERMISSION" in str(info.value)


def allocated(transport="udp", channel=None):
    clock, client, wire = make(transport)
    d = client.allocate()
    wire.serve_all()
    result_of(d)
    if channel is not None:
        d = client.channel_bind(channel, PEER)
        wire.serve_all()
        result_of(d)
    wire.sent.clear()
    if wire.framer:
        wire.framer = StreamFramer()
    return clock, client, wire


def test_channel_bind_carries_number_and_peer():
    """ChannelBind sends CHANNEL-NUMBER and XOR-PEER-ADDRESS and records the binding."""
    clock, client, wire = make()
    result_of_alloc = client.allocate()
    wire.serve_all()
    result_of(result_of_alloc)
    d = client.channel_bind(0x4001, PEER)
    wire.serve_all()
    result_of(d)
    request = wire.requests()[-1]
    assert decode_uint16(request.get(Attr.CHANNEL_NUMBER)) == 0x4001
    assert request.address(Attr.XOR_PEER_ADDRESS) == PEER
    assert client.channels == {0x4001: PEER}


def test_channel_numbers_outside_rfc8656_are_refused():
    """Channel numbers outside 0x4000-0x4FFF raise ValueError before anything is sent."""
    clock, client, wire = make()
    with pytest.raises(ValueError):
        client.channel_bind(0x5000, PEER)


def test_channel_data_over_udp_is_unpadded():
    """ChannelData over UDP is the 4-byte header and the data, nothing more."""
    clock, client, wire = allocated(channel=0x4000)
    client.send_channel_data(0x4000, b"abcde")
    assert wire.sent == [b"\x40\x00\x00\x05abcde"]


def test_channel_data_over_tcp_is_padded():
    """Over TCP ChannelData is padded to a multiple of 4 bytes (RFC 8656 §12.5)."""
    clock, client, wire = allocated("tcp", channel=0x4000)
    client.send_channel_data(0x4000, b"abcde")
    assert wire.sent == [b"\x40\x00\x00\x05abcde\0\0\0"]


def test_unbound_channel_is_refused():
    """Sending on a channel this client never bound raises KeyError."""
    clock, client, wire = allocated()
    with pytest.raises(KeyError):
        client.send_channel_data(0x4002, b"x")


def test_send_indication_decodes_as_stun():
    """A Send indication carries XOR-PEER-ADDRESS and DATA and decodes with the codec."""
    clock, client, wire = allocated()
    client.send_indication(PEER, b"hello")
    client.send_indication(PEER, b"again")
    first, second = (Message.decode(p) for p in wire.sent)
    assert (first.method, first.cls) == (Method.SEND, Class.INDICATION)
    assert first.address(Attr.XOR_PEER_ADDRESS) == PEER and first.get(Attr.DATA) == b"hello"
    assert first.transaction_id != second.transaction_id


def test_send_prefers_the_channel():
    """send() uses the bound channel for a peer and a Send indication otherwise."""
    clock, client, wire = allocated(channel=0x4000)
    client.send(PEER, b"a")
    client.send(("198.51.100.8", 1), b"b")
    assert wire.sent[0][:2] == b"\x40\x00"
    assert Message.decode(wire.sent[1]).method == Method.SEND


def test_received_channel_data_and_data_indications_reach_on_data():
    """ChannelData and Data indications are delivered as (peer, data)."""
    clock, client, wire = allocated(channel=0x4000)
    got = []
    client.on_data = lambda peer, data: got.append((peer, data))
    client._packet(encode_channel_data(0x4000, b"via channel"))
    indication = Message(Method.DATA, Class.INDICATION)
    indication.add_address(Attr.XOR_PEER_ADDRESS, ("198.51.100.8", 9))
    indication.add(Attr.DATA, b"via indication")
    client._packet(indication.encode())
    assert got == [(PEER, b"via channel"), (("198.51.100.8", 9), b"via indication")]


def test_malformed_packets_are_dropped_and_counted():
    """Truncated ChannelData, unknown channels and junk are counted, never raised."""
    clock, client, wire = allocated(channel=0x4000)
    got = []
    client.on_data = lambda peer, data: got.append(data)
    for junk in (b"", b"\x40\x00\x00", b"\x40\x00\x00\x09abc", b"\x40\x07\x00\x01x", b"\xff\xff",
                 b"\x00\x17\x00\x04" + b"\x21\x12\xa4\x42" + b"\0" * 12 + b"\0\0\0\0"):
        client._packet(junk)
    assert got == [] and client.dropped == 6


def test_keep_alive_refreshes_before_expiry():
    """Permissions are refreshed before 300 s, channels before 600 s, the allocation before its lifetime."""
    clock, client, wire = allocated(channel=0x4000)
    d = client.create_permission([("198.51.100.8", 0)])
    wire.serve_all()
    result_of(d)
    wire.sent.clear()
    seen = []
    for _ in range(40):  # 40 x 15 s = 600 s
        clock.advance(15)
        for request in wire.requests():
            seen.append((clock.seconds(), request.method))
        wire.serve_all()
        wire.sent.clear()
    methods = [m for _, m in seen]
    assert Method.CREATE_PERMISSION in methods
    assert Method.CHANNEL_BIND in methods
    assert Method.REFRESH in methods
    first_permission = min(t for t, m in seen if m == Method.CREATE_PERMISSION)
    first_refresh = min(t for t, m in seen if m == Method.REFRESH)
    assert 240 <= first_permission < 300
    assert first_refresh < 600


def test_close_deletes_the_allocation_and_fails_pending():
    """close() sends Refresh LIFETIME 0, then closes; later requests fail with ConnectionClosed."""
    clock, client, wire = allocated()
    d = client.close()
    request = wire.requests()[-1]
    assert request.method == Method.REFRESH and decode_uint32(request.get(Attr.LIFETIME)) == 0
    wire.serve(request)
    result_of(d)
    assert client.relayed_address is None
    with pytest.raises(ConnectionClosed):
        result_of(client.refresh(600))
    with pytest.raises(ConnectionClosed):
        client.send_indication(PEER, b"x")


def test_close_gives_up_on_a_silent_server():
    """close() is bounded: a server that never answers the delete does not hold it up."""
    clock, client, wire = allocated()
    d = client.close(timeout_seconds=2)
    clock.advance(2.5)
    assert d.called


def test_stream_frames_split_anywhere_are_reassembled():
    """Over TCP, data split at any byte boundary still reaches on_data whole."""
    from relay.client_transports import _StreamAdapter

    clock = Clock()
    client = TurnClient(clock, SERVER, "tcp", "alice", "secret")
    adapter = _StreamAdapter(client)
    client._channel_peers[0x4000] = PEER
    got = []
    client.on_data = lambda peer, data: got.append(data)
    stream = encode_channel_data(0x4000, b"abcde", stream=True) * 3
    for i in range(len(stream)):
        adapter.dataReceived(stream[i:i + 1])
    assert got == [b"abcde"] * 3
    assert struct.unpack("!H", stream[2:4])[0] == 5
