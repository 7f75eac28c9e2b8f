"""The Binding server core on bytes: RFC 8489 §7.3, RFC 5780 §6.1, RFC 3489 classic.

Every test runs twice: on the Python core alone, and as the UDP read pass
answers (the C fast path of relay/_binding.c first, the Python core for
what it leaves), so both paths keep the same behaviour.
"""

import os
import struct
import sys

import pytest

from relay.datagrams import _mmsg
from rendezvous.stun.binding import Addresses, BindingServer, Reply
from rendezvous.stun import Attr, Class, Error, Message, Method
from rendezvous.stun.attributes import (
    decode_error_code,
    decode_unknown_attributes,
    encode_change_request,
    encode_uint16,
)

P, A = ("198.18.0.1", 3478), ("198.18.0.2", 3479)
CLIENT = ("203.0.113.5", 40000)


FAST_ANSWERS: list[bytes] = []  # what the C fast path answered in the test under way


def fast_path_first(python_handle):
    """handle_datagram as the UDP read pass answers: the C fast path first, the Python core for the rest."""

    def handle_datagram(self, data, source, local):
        answer = _mmsg.answer_binding(data, source, self.plain_answer_tail(local))
        if answer is None:
            return python_handle(self, data, source, local)
        FAST_ANSWERS.append(answer)
        self.count_fast_answers(1)
        return Reply(answer, local, source)

    return handle_datagram


@pytest.fixture(autouse=True, params=["python", "c"])
def answering(request, monkeypatch):
    """Which path answers datagrams: the Python core, or the C fast path before it."""
    FAST_ANSWERS.clear()
    if request.param == "c":
        if _mmsg is None:
            if sys.platform.startswith("linux"):
                pytest.fail("relay._mmsg is missing: scripts/setup builds it")
            pytest.skip("relay._mmsg is built on Linux only")
        monkeypatch.setattr(BindingServer, "handle_datagram", fast_path_first(BindingServer.handle_datagram))
    return request.param


@pytest.fixture
def server():
    return BindingServer(Addresses(P[0], P[1], A[0], A[1]))


def request(*attrs, classic=False):
    if classic:
        msg = Message(Method.BINDING, Class.REQUEST, os.urandom(16), cookie=0x01020304)
        msg.transaction_id = msg.cookie.to_bytes(4, "big") + msg.transaction_id[4:]
    else:
        msg = Message(Method.BINDING, Class.REQUEST)
    for attr_type, value in attrs:
        msg.add(attr_type, value)
    return msg


def ask(server, msg, local=P, fingerprint=False, datagram=True):
    raw = msg.encode(fingerprint=fingerprint)
    if datagram:
        reply = server.handle_datagram(raw, CLIENT, local)
        return reply, Message.decode(reply.data) if reply else None
    data = server.handle_stream_message(raw, CLIENT, local)
    return None, Message.decode(data) if data else None


def error_of(response):
    return decode_error_code(response.get(Attr.ERROR_CODE))[0]


def test_plain_binding(server):
    """A Binding request gets both mapped addresses, RESPONSE-ORIGIN and OTHER-ADDRESS."""
    msg = request()
    reply, response = ask(server, msg)
    assert (reply.source, reply.destination) == (P, CLIENT)
    assert response.cls == Class.SUCCESS and response.transaction_id == msg.transaction_id
    assert response.address(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.address(Attr.MAPPED_ADDRESS) == CLIENT
    assert response.address(Attr.RESPONSE_ORIGIN) == P
    assert response.address(Attr.OTHER_ADDRESS) == A
    assert Attr.SOFTWARE not in response and Attr.FINGERPRINT not in response


@pytest.mark.parametrize(
    "change_ip, change_port, source",
    [(False, False, P), (True, False, (A[0], P[1])), (False, True, (P[0], A[1])), (True, True, A)],
)
def test_change_request_picks_the_source(server, change_ip, change_port, source):
    """CHANGE-REQUEST answers from the changed IP and/or port (RFC 5780 §6.1 Table 1)."""
    reply, response = ask(server, request((Attr.CHANGE_REQUEST, encode_change_request(change_ip, change_port))))
    assert reply.source == source
    assert response.address(Attr.RESPONSE_ORIGIN) == source
    assert response.address(Attr.OTHER_ADDRESS) == A


def test_other_address_is_relative_to_the_receiving_endpoint(server):
    """A request to the alternate endpoint names the primary one as OTHER-ADDRESS."""
    _, response = ask(server, request(), local=A)
    assert response.address(Attr.OTHER_ADDRESS) == P


def test_response_port(server):
    """RESPONSE-PORT sends the response to the client's IP at that port (RFC 5780 §7.5)."""
    reply, _ = ask(server, request((Attr.RESPONSE_PORT, encode_uint16(5000))))
    assert reply.destination == (CLIENT[0], 5000)


def test_padding_is_echoed_at_request_length(server):
    """PADDING in the request comes back at the same length, not the MTU (no amplification)."""
    reply, response = ask(server, request((Attr.PADDING, b"x" * 500)))
    assert len(response.get(Attr.PADDING)) == 500
    assert len(reply.data) < 520 + 100


def test_padding_with_response_port_is_400(server):
    """PADDING and RESPONSE-PORT together are refused with 400 (RFC 5780 §6.1)."""
    reply, response = ask(server, request((Attr.PADDING, b"x" * 8), (Attr.RESPONSE_PORT, encode_uint16(5000))))
    assert error_of(response) == Error.BAD_REQUEST
    assert reply.destination == CLIENT


def test_without_alternate():
    """Without an alternate: no OTHER-ADDRESS, and CHANGE-REQUEST gets 420 (RFC 5780 §6)."""
    server = BindingServer(Addresses(P[0], P[1]))
    _, response = ask(server, request())
    assert Attr.OTHER_ADDRESS not in response
    assert response.address(Attr.RESPONSE_ORIGIN) == P
    _, response = ask(server, request((Attr.CHANGE_REQUEST, encode_change_request(True, False))))
    assert error_of(response) == Error.UNKNOWN_ATTRIBUTE
    assert decode_unknown_attributes(response.get(Attr.UNKNOWN_ATTRIBUTES)) == [Attr.CHANGE_REQUEST]


def test_advertised_addresses():
    """Behind a 1:1 NAT, RESPONSE-ORIGIN and OTHER-ADDRESS carry the public addresses."""
    server = BindingServer(Addresses("10.0.0.1", 3478, "10.0.0.2", 3479, "198.18.5.1", "198.18.5.2"))
    reply, response = ask(server, request((Attr.CHANGE_REQUEST, encode_change_request(True, False))),
                          local=("10.0.0.1", 3478))
    assert reply.source == ("10.0.0.2", 3478)
    assert response.address(Attr.RESPONSE_ORIGIN) == ("198.18.5.2", 3478)
    assert response.address(Attr.OTHER_ADDRESS) == ("198.18.5.2", 3479)


def test_wildcard_primary_omits_response_origin():
    """Bound to a wildcard with nothing advertised, RESPONSE-ORIGIN is left out rather than 0.0.0.0."""
    server = BindingServer(Addresses("0.0.0.0", 3478))
    _, response = ask(server, request(), local=("0.0.0.0", 3478))
    assert Attr.RESPONSE_ORIGIN not in response
    assert response.address(Attr.XOR_MAPPED_ADDRESS) == CLIENT


def test_classic_client(server):
    """An RFC 3489 request gets MAPPED-, SOURCE- and CHANGED-ADDRESS and its 128-bit id back."""
    msg = request((Attr.CHANGE_REQUEST, encode_change_request(True, True)), classic=True)
    reply, response = ask(server, msg)
    assert response.classic and response.transaction_id == msg.transaction_id
    assert reply.data[4:20] == msg.transaction_id
    assert reply.source == A
    assert response.address(Attr.MAPPED_ADDRESS) == CLIENT
    assert response.address(Attr.SOURCE_ADDRESS) == A
    assert response.address(Attr.CHANGED_ADDRESS) == A
    assert Attr.XOR_MAPPED_ADDRESS not in response


def test_unknown_comprehension_required_is_420(server):
    """Unknown types below 0x8000 get 420 listing them; unknown optional ones are ignored."""
    _, response = ask(server, request((0x7F00, b"x"), (0xFF00, b"y"), (Attr.RESPONSE_ADDRESS, b"\0" * 8)))
    assert error_of(response) == Error.UNKNOWN_ATTRIBUTE
    assert decode_unknown_attributes(response.get(Attr.UNKNOWN_ATTRIBUTES)) == [0x7F00, Attr.RESPONSE_ADDRESS]


@pytest.mark.parametrize(
    "attrs, reason",
    [
        (((Attr.CHANGE_REQUEST, b"\0\0"),), "not 4 bytes"),
        (((Attr.RESPONSE_PORT, b"\0"),), "not 4 bytes"),
        (((Attr.RESPONSE_PORT, b"\0\0\0\0"),), "RESPONSE-PORT is 0"),
    ],
)
def test_bad_request_is_400_with_reason(server, attrs, reason):
    """A malformed attribute value gets 400 with a reason."""
    _, response = ask(server, request(*attrs))
    code, text = decode_error_code(response.get(Attr.ERROR_CODE))
    assert code == 400 and reason in text


def test_other_methods_are_400(server):
    """A request for a method this server lacks is answered 400."""
    reply = server.handle_datagram(Message(Method.ALLOCATE, Class.REQUEST).encode(), CLIENT, P)
    assert error_of(Message.decode(reply.data)) == Error.BAD_REQUEST


def test_malformed_and_indications_are_dropped_and_counted(server):
    """Garbage and indications get no answer; garbage is counted."""
    assert server.handle_datagram(b"\x00\x01\x00\x04garbage-garbage-", CLIENT, P) is None
    assert server.handle_datagram(Message(Method.BINDING, Class.INDICATION).encode(), CLIENT, P) is None
    assert server.handle_datagram(Message(Method.BINDING, Class.SUCCESS).encode(), CLIENT, P) is None
    assert server.counters["malformed"] == 1 and server.counters["ignored"] == 2
    assert server.counters["requests"] == 0


def test_bad_fingerprint_is_dropped(server):
    """A request with a wrong FINGERPRINT is dropped (RFC 8489 §7.3)."""
    raw = bytearray(request().encode(fingerprint=True))
    raw[-1] ^= 0xFF
    assert server.handle_datagram(bytes(raw), CLIENT, P) is None
    assert server.counters["malformed"] == 1


def test_fingerprint_is_mirrored(server):
    """A request with FINGERPRINT gets a response with a valid one."""
    _, response = ask(server, request(), fingerprint=True)
    assert response.check_fingerprint() is True


def test_software_only_when_configured():
    """SOFTWARE is sent only when the operator sets it."""
    server = BindingServer(Addresses(P[0], P[1]), software="txrendezvous")
    _, response = ask(server, request())
    assert response.get(Attr.SOFTWARE) == b"txrendezvous"


def test_stream_refuses_change_request(server):
    """Over TCP/TLS, CHANGE-REQUEST and RESPONSE-PORT get 400: no new connection is opened."""
    _, response = ask(server, request((Attr.CHANGE_REQUEST, encode_change_request(True, False))), datagram=False)
    assert error_of(response) == Error.BAD_REQUEST
    _, response = ask(server, request(), datagram=False)
    assert response.address(Attr.XOR_MAPPED_ADDRESS) == CLIENT


def test_minimal_request_response_ratio(server):
    """A 20-byte request gets a response of at most 68 bytes (the documented ratio 3.4)."""
    raw = struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12)
    reply = server.handle_datagram(raw, CLIENT, P)
    assert len(reply.data) <= 68


def test_plain_requests_take_the_fast_path(server, answering):
    """In the read pass, plain requests (FINGERPRINT or optional attributes allowed) are answered in C,
    counted as the core counts, and every other request is left to the Python core."""
    for msg, fingerprint in ((request(), False), (request(), True), (request((Attr.SOFTWARE, b"client")), True)):
        ask(server, msg, fingerprint=fingerprint)
    assert len(FAST_ANSWERS) == (3 if answering == "c" else 0)
    for msg in (request((Attr.CHANGE_REQUEST, encode_change_request(False, False))), request(classic=True),
                request((Attr.PADDING, b"x" * 8)), request((Attr.USERNAME, b"u:v"))):
        ask(server, msg)
    assert len(FAST_ANSWERS) == (3 if answering == "c" else 0)
    assert server.counters["requests"] == server.counters["answered"] == 7


P6, A6 = ("2001:db8::1", 3478), ("2001:db8::2", 3479)
CLIENT6 = ("2001:db8:ffff::9", 40000)


def ask_from(server, msg, client, local):
    reply = server.handle_datagram(msg.encode(), client, local)
    return reply, Message.decode(reply.data)


@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)])
def test_dual_stack_groups_answer_within_their_family(flags):
    """With an IPv4 and an IPv6 group, each with an alternate, a CHANGE-REQUEST moves within the family it
    arrived on: an IPv4 client gets only IPv4 addresses back and an IPv6 client only IPv6 ones (RFC 5780 §6.1)."""
    server = BindingServer([Addresses(P[0], P[1], A[0], A[1]), Addresses(P6[0], P6[1], A6[0], A6[1])])
    change = request((Attr.CHANGE_REQUEST, encode_change_request(*flags)))
    for client, primary, alternate in ((CLIENT, P, A), (CLIENT6, P6, A6)):
        reply, response = ask_from(server, change, client, primary)
        expected = (alternate[0] if flags[0] else primary[0], alternate[1] if flags[1] else primary[1])
        assert reply.source == expected and reply.destination == client
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == client
        assert response.address(Attr.RESPONSE_ORIGIN) == expected
        assert response.address(Attr.OTHER_ADDRESS) == alternate


def test_wildcard_groups_of_both_families():
    """The dual-stack default (0.0.0.0 and :: groups): each client gets its own family's XOR-MAPPED-ADDRESS
    and no RESPONSE-ORIGIN; CHANGE-REQUEST is 420 there."""
    server = BindingServer([Addresses("0.0.0.0", 3478), Addresses("::", 3478)])
    for client, local in ((CLIENT, ("0.0.0.0", 3478)), (CLIENT6, ("::", 3478))):
        reply, response = ask_from(server, request(), client, local)
        assert reply.source == local and response.address(Attr.XOR_MAPPED_ADDRESS) == client
        assert Attr.RESPONSE_ORIGIN not in response
        _, response = ask_from(server, request((Attr.CHANGE_REQUEST, encode_change_request(True, False))),
                               client, local)
        assert error_of(response) == Error.UNKNOWN_ATTRIBUTE


def test_change_request_needs_an_alternate_in_its_own_group():
    """CHANGE-REQUEST arriving on a group without an alternate is 420 though another family has one."""
    server = BindingServer([Addresses(P[0], P[1], A[0], A[1]), Addresses(P6[0], P6[1])])
    _, response = ask_from(server, request((Attr.CHANGE_REQUEST, encode_change_request(True, False))), CLIENT6, P6)
    assert error_of(response) == Error.UNKNOWN_ATTRIBUTE
    _, response = ask_from(server, request(), CLIENT6, P6)
    assert Attr.OTHER_ADDRESS not in response and response.address(Attr.RESPONSE_ORIGIN) == P6
    reply, _ = ask_from(server, request((Attr.CHANGE_REQUEST, encode_change_request(True, False))), CLIENT, P)
    assert reply.source == (A[0], P[1])
