"""A TurnClient's requests and their transactions (RFC 8489 §6.2, §9.2.5).

``request`` builds a request, signs it once the credentials know the realm
and nonce, and retries it as a new transaction after a 401 or 438. Each
transaction is retransmitted over UDP on the §6.2.1 schedule and sent once
over TCP and TLS (§6.2.2), and ends with the first response that passes
MESSAGE-INTEGRITY. These are functions over the client's ``_pending`` table
(transaction id -> ``Pending``), not methods, so ``relay.client`` holds only
the allocation and its data path.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rendezvous.stun import Attr, Class, CodecError, Message
from rendezvous.stun.attributes import decode_error_code
from rendezvous.stun.constants import Error
from rendezvous.stun.transaction import ClientTransaction, TransactionTimeout

from .client_auth import ConnectionClosed, TurnError

log = Logger()  # twisted.logger: .warn, not .warning (hence the G010 noqa marks)

MAX_CHALLENGES = 3  # 401/438 rounds per request before giving up


class Pending:
    """An outstanding transaction: its retransmission state, waiter, timer and MESSAGE-INTEGRITY key."""

    __slots__ = ("done", "key", "timer", "transaction")

    def __init__(self, transaction: ClientTransaction, done: Deferred, timer: Any, key: bytes | None):
        self.transaction = transaction
        self.done = done
        self.timer = timer
        self.key = key


async def request(client, method: int, build: Callable[[Message], None]) -> Message:
    """Send a request, answering 401/438 challenges; the success response.

    Each attempt is a new transaction (RFC 8489 §9.2.5: the retry is a
    new request). Fails with TurnError for any other error response.
    """
    for _ in range(MAX_CHALLENGES + 1):
        message = Message(method, Class.REQUEST)
        build(message)
        if client.software:
            message.add(Attr.SOFTWARE, client.software.encode("utf-8"))
        signed = client.credentials.ready
        key = client.credentials.key if signed else None
        data = client.credentials.sign(message) if signed else message.encode()
        response = await transact(client, data, key)
        if response.cls is Class.SUCCESS:
            return response
        code, reason = error_code(response)
        if code in (Error.UNAUTHENTICATED, Error.STALE_NONCE) and client.credentials.challenge(
            response, code, signed
        ):
            continue
        raise TurnError(code, reason, method)
    raise TurnError(code, reason, method)


def transact(client, data: bytes, key: bytes | None) -> Deferred:
    """One transaction: fires with the first valid response to ``data``."""
    if client._closed:
        raise ConnectionClosed("client is closed")
    now = client.clock.seconds()
    transaction = ClientTransaction(data, now, reliable=client.reliable, **client._timing)
    tid = transaction.transaction_id
    done: Deferred = Deferred(lambda _: forget(client, tid))
    timer = client.clock.callLater(transaction.deadline - now, expire, client, tid)
    client._pending[tid] = Pending(transaction, done, timer, key)
    client._write(data)
    return done


def receive_response(client, response: Message) -> None:
    """A success or error response from the server: it ends its transaction, if it is ours and valid."""
    pending = client._pending.get(response.transaction_id)
    if pending is None:
        return  # a late answer to a retransmission, or not ours
    # RFC 8489 §9.2.5: an unverifiable response is discarded as if never
    # received. Error responses without MESSAGE-INTEGRITY are accepted: a
    # server cannot sign a 401/438, and accepting another error only ends
    # a request early.
    must_verify = response.cls is Class.SUCCESS or Attr.MESSAGE_INTEGRITY in response or (
        Attr.MESSAGE_INTEGRITY_SHA256 in response
    )
    if pending.key is not None and must_verify and not response.check_integrity(pending.key):
        client.dropped += 1
        log.warn("dropped a response from {server} that fails MESSAGE-INTEGRITY", server=client.server)  # noqa: G010
        return
    if not pending.transaction.receive(response):
        return
    del client._pending[response.transaction_id]
    pending.timer.cancel()
    pending.done.callback(response)


def expire(client, tid: bytes) -> None:
    """A transaction's timer: retransmit (UDP), or fail it with TransactionTimeout."""
    pending = client._pending.get(tid)
    if pending is None:
        return
    transaction = pending.transaction
    again = transaction.expire(client.clock.seconds())
    if transaction.deadline is None:
        del client._pending[tid]
        pending.done.errback(
            TransactionTimeout(f"no response from {client.server[0]}:{client.server[1]} ({client.transport})")
        )
        return
    if again is not None and not client._gone:
        client._write(again)
    # max: a reactor running late must not hand callLater a negative delay
    pending.timer = client.clock.callLater(max(0.0, transaction.deadline - client.clock.seconds()), expire, client, tid)


def forget(client, tid: bytes) -> None:
    """Drop a transaction whose Deferred was cancelled."""
    pending = client._pending.pop(tid, None)
    if pending is not None and pending.timer.active():
        pending.timer.cancel()


def fail_pending(client, reason: Exception) -> None:
    """Fail every outstanding transaction with ``reason`` (the client closed or lost its connection)."""
    while client._pending:
        _, pending = client._pending.popitem()
        if pending.timer.active():
            pending.timer.cancel()
        pending.done.errback(reason)


def error_code(response: Message) -> tuple[int, str]:
    """An error response's ERROR-CODE as (code, reason); 400 when it is missing or malformed."""
    value = response.get(Attr.ERROR_CODE)
    if value is None:
        return Error.BAD_REQUEST, "error response without ERROR-CODE"
    try:
        code, reason = decode_error_code(value)
        return code, reason.strip(" \0")
    except CodecError:
        return Error.BAD_REQUEST, "malformed ERROR-CODE"
