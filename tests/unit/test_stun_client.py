"""The Twisted STUN client: retransmits on the RFC schedule, matches, times out."""

from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport

from rendezvous.stun import Class, Message, Method
from rendezvous.peer.stun_client import StunClientProtocol, TransactionTimeout

SERVER = ("198.18.0.1", 3478)


def client():
    clock = Clock()
    protocol = StunClientProtocol(clock)
    protocol.makeConnection(FakeDatagramTransport())
    return clock, protocol


def test_retransmits_then_times_out():
    """Seven sends at the RFC 8489 times, then TransactionTimeout at 39.5 s."""
    clock, protocol = client()
    failures = []
    protocol.request(Message(Method.BINDING, Class.REQUEST), SERVER).addErrback(failures.append)
    send_times = [0.0]
    for _ in range(100):
        clock.advance(0.5)
        if len(protocol.transport.written) > len(send_times):
            send_times.append(clock.seconds())
        if failures:
            break
    assert send_times == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert clock.seconds() == 39.5 and failures[0].check(TransactionTimeout)
    assert not protocol._pending


def test_response_fires_the_deferred_once():
    """A matching response fires the request's Deferred and stops retransmission."""
    clock, protocol = client()
    request = Message(Method.BINDING, Class.REQUEST)
    results = []
    protocol.request(request, SERVER).addCallback(results.append)
    response = Message(Method.BINDING, Class.SUCCESS, request.transaction_id).encode()
    protocol.datagramReceived(b"garbage", SERVER)
    protocol.datagramReceived(response, SERVER)
    protocol.datagramReceived(response, SERVER)
    clock.advance(60)
    assert len(results) == 1 and results[0][1] == SERVER
    assert len(protocol.transport.written) == 1
    assert not clock.getDelayedCalls()


def test_cancel_and_stop():
    """Cancelling a request or stopping the socket leaves no timers behind."""
    clock, protocol = client()
    d = protocol.request(Message(Method.BINDING, Class.REQUEST), SERVER)
    d.addErrback(lambda f: None)
    d.cancel()
    failures = []
    protocol.request(Message(Method.BINDING, Class.REQUEST), SERVER).addErrback(failures.append)
    protocol.doStop()
    assert not clock.getDelayedCalls()
    assert failures and failures[0].check(TransactionTimeout)
    assert not protocol._pending
