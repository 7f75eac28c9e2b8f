"""A STUN client over UDP on Twisted: requests with RFC 8489 §6.2.1 retransmission.

The retransmission schedule and response matching are the sans-IO
``ClientTransaction``; this protocol only owns the socket and the timers.
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from rendezvous.stun import CodecError, Message
from rendezvous.stun.addresses import Address
from rendezvous.stun.transaction import ClientTransaction, TransactionTimeout

log = Logger()


class StunClientProtocol(DatagramProtocol):
    """Sends STUN requests from one UDP socket and matches their responses.

    Listen with ``reactor.listenUDP(0, protocol)``; then ``request`` as often
    as needed, concurrently.
    """

    noisy = False

    def __init__(self, clock: IReactorTime, rto_seconds: float = 0.5, rc: int = 7, rm: int = 16) -> None:
        self.clock = clock
        self._timing = dict(rto_seconds=rto_seconds, rc=rc, rm=rm)
        self._pending: dict[bytes, tuple[ClientTransaction, Deferred, Address, object]] = {}

    def request(self, message: Message, address: Address) -> Deferred:
        """Send a request; fires with (response Message, the address it came from).

        Fails with TransactionTimeout when the schedule runs out.
        """
        data = message.encode()
        transaction = ClientTransaction(data, self.clock.seconds(), **self._timing)
        done: Deferred = Deferred(lambda _: self._forget(transaction.transaction_id))
        timer = self.clock.callLater(transaction.deadline - self.clock.seconds(), self._expire, transaction)
        self._pending[transaction.transaction_id] = (transaction, done, address, timer)
        self.transport.write(data, address)
        return done

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            response = Message.decode(data)
        except CodecError as e:
            log.debug("dropped malformed datagram from {addr}: {error}", addr=addr, error=e)
            return
        entry = self._pending.get(response.transaction_id)
        if entry is None or not entry[0].receive(response):
            return
        _, done, _, timer = self._pending.pop(response.transaction_id)
        timer.cancel()
        done.callback((response, addr[:2]))

    def _expire(self, transaction: ClientTransaction) -> None:
        entry = self._pending.get(transaction.transaction_id)
        if entry is None:
            return
        _, done, address, _ = entry
        again = transaction.expire(self.clock.seconds())
        if transaction.deadline is None:
            del self._pending[transaction.transaction_id]
            done.errback(TransactionTimeout(f"no response from {address[0]}:{address[1]}"))
            return
        if again is not None:
            self.transport.write(again, address)
        timer = self.clock.callLater(transaction.deadline - self.clock.seconds(), self._expire, transaction)
        self._pending[transaction.transaction_id] = (transaction, done, address, timer)

    def _forget(self, transaction_id: bytes) -> None:
        entry = self._pending.pop(transaction_id, None)
        if entry is not None:
            entry[3].cancel()

    def stopProtocol(self) -> None:
        for transaction_id in list(self._pending):
            _, done, _, timer = self._pending.pop(transaction_id)
            timer.cancel()
            done.errback(TransactionTimeout("socket closed"))
