"""A sans-IO STUN client transaction.

RFC 8489 §6.2.1: over UDP the request is sent at 0, RTO, 3 RTO, 7 RTO, ...
(the interval doubling) for Rc sends in all, and the transaction fails Rm x RTO
after the last send: with RTO 500 ms, Rc 7 and Rm 16 the sends are at 0, 0.5,
1.5, 3.5, 7.5, 15.5 and 31.5 s and the timeout at 39.5 s. §6.2.2: over TCP
and TLS the request is sent once and fails after Ti = 39.5 s.

The caller sends ``request`` when it makes the transaction, calls
``expire(now)`` at ``deadline`` (which returns bytes to send again, or None
once the transaction has failed), and hands every response to ``receive``.
"""

from enum import Enum

from .message import Message

RTO_SECONDS = 0.5
RC = 7
RM = 16
TI_SECONDS = 39.5



class TransactionTimeout(Exception):
    """No (valid) response within the RFC 8489 §6.2.1 / §6.2.2 schedule (39.5 s by default)."""

class State(Enum):
    WAITING = "waiting"
    ANSWERED = "answered"
    TIMED_OUT = "timed-out"


class ClientTransaction:
    """Retransmission and matching for one request."""

    def __init__(
        self,
        request: bytes,
        now: float,
        reliable: bool = False,
        rto_seconds: float = RTO_SECONDS,
        rc: int = RC,
        rm: int = RM,
    ) -> None:
        self.request = request
        self.transaction_id = request[8:20]
        self.state = State.WAITING
        self.response: Message | None = None
        self.sends = 1
        self._reliable = reliable
        self._rc = rc
        self._rm = rm
        self._rto = rto_seconds
        self._interval = rto_seconds
        self.deadline = now + (TI_SECONDS if reliable else rto_seconds)

    def expire(self, now: float) -> bytes | None:
        """Advance the clock: the request to send again, or None.

        Before ``deadline`` nothing happens. After the last allowed wait the
        state becomes TIMED_OUT and ``deadline`` None.
        """
        if self.state is not State.WAITING or self.deadline is None or now < self.deadline:
            return None
        if self._reliable or self.sends >= self._rc:
            self.state = State.TIMED_OUT
            self.deadline = None
            return None
        self.sends += 1
        if self.sends == self._rc:
            self.deadline += self._rm * self._rto
        else:
            self._interval *= 2
            self.deadline += self._interval
        return self.request

    def receive(self, response: Message) -> bool:
        """Take a response; True if it answers this transaction."""
        if self.state is not State.WAITING or response.transaction_id != self.transaction_id:
            return False
        self.state = State.ANSWERED
        self.response = response
        self.deadline = None
        return True
