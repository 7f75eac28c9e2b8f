"""Hypothesis: arbitrary and mutated bytes raise only CodecError, never anything else."""

import inspect

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from rendezvous.node.accounts import AccountStore
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.signaling import Session, SignalingConfig, SignalingNode
from rendezvous.wire.frames import FrameError, FrameReader

from rendezvous.stun.binding import Addresses, BindingServer
from rendezvous.stun import Attr, Class, CodecError, Message, Method
from rendezvous.stun import attributes as attribute_codecs
from rendezvous.stun.addresses import decode_address, decode_xor_address
from rendezvous.stun.attributes import encode_change_request
from rendezvous.stun.demux import classify
from rendezvous.stun.framing import StreamFramer, decode_channel_data

from . import rfc5769_vectors as v

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALUE_DECODERS = [
    f for name, f in inspect.getmembers(attribute_codecs, inspect.isfunction)
    if name.startswith("decode_")
]


def _seeds():
    request = Message(Method.BINDING, Class.REQUEST)
    request.add(Attr.CHANGE_REQUEST, encode_change_request(True, True))
    request.add_address(Attr.XOR_PEER_ADDRESS, ("2001:db8::1", 80))
    return [
        v.SAMPLE_REQUEST, v.SAMPLE_IPV4_RESPONSE, v.SAMPLE_IPV6_RESPONSE,
        v.SAMPLE_REQUEST_LONG_TERM, request.encode(b"k", b"k", True),
    ]


@st.composite
def mutated(draw):
    """A valid message with a few bytes changed, cut or inserted."""
    data = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


inputs = st.one_of(st.binary(max_size=600), mutated())


def _exercise(msg: Message) -> None:
    msg.check_integrity(b"key")
    msg.check_fingerprint()
    for attr_type in (Attr.XOR_MAPPED_ADDRESS, Attr.MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS):
        try:
            msg.addresses(attr_type)
        except CodecError:
            pass


@SETTINGS
@given(inputs)
def test_message_decode(data):
    """Message.decode and what follows it raise only CodecError."""
    try:
        msg = Message.decode(data)
    except CodecError:
        return
    _exercise(msg)
    assert len(msg.raw) == len(data)


@SETTINGS
@given(st.binary(max_size=64), st.binary(min_size=12, max_size=16))
def test_value_decoders(value, transaction_id):
    """Every attribute value decoder raises only CodecError."""
    for decode in VALUE_DECODERS + [decode_address, lambda b: decode_xor_address(b, transaction_id)]:
        try:
            decode(value)
        except CodecError:
            pass


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=80), mutated()), max_size=8))
def test_stream_framer(chunks):
    """The framer raises only CodecError and never holds more than one frame's worth."""
    framer = StreamFramer()
    try:
        for chunk in chunks:
            for frame in framer.feed(chunk):
                classify(frame)
                if frame[0] >> 6 == 1:
                    decode_channel_data(frame)
            assert framer.buffered <= 4 + 0xFFFF + 3 + 80 + 16
    except CodecError:
        pass


@SETTINGS
@given(inputs, st.booleans())
def test_binding_server_never_raises(data, datagram):
    """The server core answers or drops any bytes without raising."""
    server = BindingServer(Addresses("127.0.0.1", 3478, "127.0.0.2", 3479))
    source, local = ("192.0.2.9", 5555), ("127.0.0.1", 3478)
    if datagram:
        reply = server.handle_datagram(data, source, local)
        if reply is not None:
            Message.decode(reply.data)
            assert reply.destination[0] == source[0]
    else:
        server.handle_stream_message(data, source, local)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_signaling_frame_reader(chunks):
    """The signaling frame reader never raises: it returns dicts and FrameErrors, a fatal one only last."""
    reader = FrameReader()
    for chunk in chunks:
        out = reader.feed(b"\xf5\x01" + chunk if chunk[:1] == b"\x00" else chunk)
        assert all(isinstance(item, (dict, FrameError)) for item in out)
        assert not any(isinstance(item, FrameError) and item.fatal for item in out[:-1])


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    store = AccountStore(tmp_path_factory.mktemp("fuzz") / "accounts.sqlite")
    store.add("alice", "pw", "txrendezvous")
    yield store
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["login", "register", "resume", "presence", "buddy-add", "buddy-accept", "lookup",
                        "message", "connect", "connect-answer", "connect-decline", "ping", "pong", "logout",
                        "buddy-list", "buddy-remove", "nonsense"]),
       st.dictionaries(st.sampled_from(["id", "user", "password", "to", "text", "token", "state", "nat_type",
                                        "candidates"]), json_values, max_size=6),
       st.booleans())
def test_signaling_core_never_raises(fuzz_store, op, fields, logged_in):
    """Any op with any JSON fields gets a reply, an error frame or nothing, never an exception."""
    node = SignalingNode(AsyncAccounts.inline(fuzz_store), Clock(), SignalingConfig())
    out = []
    session = Session(send=out.append, close=lambda: None, address=("198.18.0.1", 1))
    if logged_in:
        node.receive(session, {"op": "login", "user": "alice", "password": "pw"})
    node.receive(session, {"op": op, **fields})
    assert all(isinstance(m, dict) and "op" in m for m in out)
