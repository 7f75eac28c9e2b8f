"""The client transaction's RFC 8489 §6.2 retransmission schedule, on a fake clock."""

from twisted.internet.task import Clock

from rendezvous.stun import Class, Message, Method
from rendezvous.stun.transaction import ClientTransaction, State


def _run(transaction, clock, until):
    sends = [0.0]
    while transaction.deadline is not None and transaction.deadline <= until:
        clock.advance(transaction.deadline - clock.seconds())
        if transaction.expire(clock.seconds()) is not None:
            sends.append(clock.seconds())
    return sends


def test_udp_schedule():
    """Over UDP, sends go at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and it fails at 39.5 s."""
    clock = Clock()
    request = Message(Method.BINDING, Class.REQUEST).encode()
    transaction = ClientTransaction(request, clock.seconds())
    assert _run(transaction, clock, 100) == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert transaction.state is State.TIMED_OUT
    assert clock.seconds() == 39.5


def test_reliable_sends_once_and_fails_at_ti():
    """Over TCP/TLS the request goes once and fails after Ti = 39.5 s."""
    clock = Clock()
    transaction = ClientTransaction(Message(Method.BINDING, Class.REQUEST).encode(), 0, reliable=True)
    assert _run(transaction, clock, 100) == [0]
    assert transaction.state is State.TIMED_OUT and clock.seconds() == 39.5


def test_nothing_happens_before_the_deadline():
    """expire() before the deadline sends nothing."""
    transaction = ClientTransaction(Message(Method.BINDING, Class.REQUEST).encode(), 10.0)
    assert transaction.expire(10.4) is None and transaction.sends == 1


def test_matching_response_ends_it():
    """A response with the same transaction id answers it; another id does not."""
    request = Message(Method.BINDING, Class.REQUEST)
    transaction = ClientTransaction(request.encode(), 0)
    assert not transaction.receive(Message(Method.BINDING, Class.SUCCESS))
    response = Message(Method.BINDING, Class.SUCCESS, request.transaction_id)
    assert transaction.receive(response)
    assert transaction.state is State.ANSWERED and transaction.response is response
    assert transaction.deadline is None and transaction.expire(100) is None
