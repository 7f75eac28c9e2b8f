"""The echo service's core (same-size answers, rate limits, bounded table) and the
SIP probe's comparison, on bytes with an injected clock; decoders fuzzed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rendezvous.node.echo import EchoCore, EchoStreamFactory
from rendezvous.wire.echo_probe import MAX_PROBE_BYTES, EchoCodecError, decode_reply, probe
from rendezvous.peer.sip_probe import invite, rewritten_fields

SOURCE = ("198.18.0.11", 40000)


@given(st.binary(max_size=1000), st.sampled_from([("198.18.0.11", 5060), ("2001:db8::1", 1)]))
def test_answer_is_the_payload_and_source_in_the_probe_size(payload, source):
    """The answer holds the payload exactly and the source seen, and is exactly as long as the probe."""
    data = probe(payload)
    answer = EchoCore().answer(data, source, 0.0)
    assert len(answer) == len(data)
    assert decode_reply(answer) == (payload, source)


def test_only_probes_are_answered():
    """Data without the trailer, or longer than the limit, gets no answer."""
    core = EchoCore()
    assert core.answer(b"INVITE sip:x SIP/2.0\r\n\r\n", SOURCE, 0.0) is None
    assert core.answer(probe(bytes(MAX_PROBE_BYTES)), SOURCE, 0.0) is None
    assert core.dropped == 2 and core.answered == 0


def test_per_source_rate_limit_refills_with_time():
    """A source gets its burst, then nothing, then one answer per 1/rate seconds."""
    core = EchoCore(per_source_rate=2, per_source_burst=3)
    assert [core.answer(probe(b"x"), SOURCE, 0.0) is not None for _ in range(5)] == [True] * 3 + [False] * 2
    assert core.answer(probe(b"x"), ("198.18.0.12", 1), 0.0) is not None  # another source is not limited
    assert core.answer(probe(b"x"), SOURCE, 0.5) is not None
    assert core.answer(probe(b"x"), SOURCE, 0.5) is None


def test_total_rate_limit_caps_all_sources():
    """Many sources together get no more than the global rate."""
    core = EchoCore(total_rate=10)
    answered = sum(core.answer(probe(b"x"), (f"198.18.1.{i}", 1), 0.0) is not None for i in range(50))
    assert answered == 10


def test_source_table_is_bounded():
    """The per-source table never holds more than max_sources entries."""
    core = EchoCore(max_sources=8, total_rate=1e9)
    for i in range(100):  # within one refill (5 s), so the cap, not forgetting full buckets, bounds it
        core.answer(probe(b"x"), (f"198.18.{i // 256}.{i % 256}", 1), i / 100)
    assert len(core._per_source.buckets) == 8


@given(st.binary(max_size=80))
def test_reply_decoder_takes_any_bytes(data):
    """Any bytes decode as an echo answer or raise EchoCodecError."""
    try:
        decode_reply(data)
    except EchoCodecError:
        pass


def test_unchanged_invite_shows_no_rewrite():
    """An INVITE that comes back byte for byte has no rewritten field."""
    sent = invite("192.168.1.2", 40000, "198.18.0.1", 5060, 40002)
    assert rewritten_fields(sent, sent) == []


def test_rewritten_addresses_are_named():
    """An INVITE whose private address was replaced names Via, Contact, From, Call-ID and the SDP lines."""
    sent = invite("192.168.1.2", 40000, "198.18.0.1", 5060, 40002)
    rewritten = sent.replace(b"192.168.1.2", b"198.18.0.11")
    assert rewritten_fields(sent, rewritten) == ["call-id", "contact", "from", "sdp c=", "sdp o=", "via"]
    ported = sent.replace(b"m=audio 40002", b"m=audio 1024")
    assert rewritten_fields(sent, ported) == ["sdp m="]


@pytest.mark.parametrize("tail", [b"x", b"\r\nX-Extra: 1"])
def test_any_other_difference_is_still_a_rewrite(tail):
    """A change outside the known fields is still reported, never as no change."""
    sent = invite("192.168.1.2", 40000, "198.18.0.1", 5060, 40002)
    assert rewritten_fields(sent, sent + tail) != []


def test_tcp_connections_at_once_are_capped():
    factory = EchoStreamFactory(EchoCore(), Clock(), max_connections=2)
    first, second = (factory.buildProtocol(("198.18.0.9", 1000 + n)) for n in range(2))
    for protocol in (first, second):
        protocol.makeConnection(StringTransport())
    assert factory.buildProtocol(("198.18.0.9", 1002)) is None
    first.connectionLost(None)
    third = factory.buildProtocol(("198.18.0.9", 1003))
    assert third is not None
    third.makeConnection(StringTransport())
    third.dataReceived(probe(b"INVITE"))
    assert third.transport.value().startswith(b"INVITE")
