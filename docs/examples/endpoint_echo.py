"""Twisted endpoints over sessions: an echo served by serverFromString, reached by clientFromString.

    BOB_PW=... python docs/examples/endpoint_echo.py serve "rendezvous:host=HOST:user=bob:password-env=BOB_PW"
    ALICE_PW=... python docs/examples/endpoint_echo.py call \\
        "rendezvous:host=HOST:user=alice:password-env=ALICE_PW:peer=bob"

``serve`` logs in as the user and echoes the first stream a buddy opens,
then stops listening (which logs out) and exits. ``call`` connects a
protocol that says hello, prints the echo and exits. Nothing here knows it
runs over an encrypted QUIC session through NATs: swap the strings for
"tcp:..." ones and the same code runs over TCP. The strings' parameters
are in docs/EMBEDDING.md (add ``loopback=yes`` for two peers on one
machine, ``insecure=yes`` for a node with a self-signed certificate).
"""

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol


class Echo(Protocol):
    """Writes back what it reads; tells ``served`` when its stream ends."""

    def __init__(self, served: Deferred) -> None:
        self.served = served

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason) -> None:
        self.served.called or self.served.callback(None)


class Hello(Protocol):
    """Says hello, ends its direction, collects the answer until the stream ends."""

    def __init__(self) -> None:
        self.answer, self.received = Deferred(), b""

    def connectionMade(self) -> None:
        self.transport.write(b"hello over a rendezvous: endpoint")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.answer.callback(self.received)


async def serve(reactor, description: str) -> None:
    served = Deferred()
    port = await serverFromString(reactor, description).listen(Factory.forProtocol(lambda: Echo(served)))
    print(f"serving as {port.getHost().user}", flush=True)
    try:
        await served
    finally:
        await port.stopListening()


async def call(reactor, description: str) -> None:
    hello = await connectProtocol(clientFromString(reactor, description), Hello())
    print("echoed:", (await hello.answer.addTimeout(20, reactor)).decode(), flush=True)


def main(reactor, mode: str, description: str) -> Deferred:
    return Deferred.fromCoroutine((serve if mode == "serve" else call)(reactor, description))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("serve", "call"):
        sys.exit(__doc__)
    task.react(main, sys.argv[1:])
