"""Connect two peers through a super node and exchange a datagram, by the best path there is.

    python docs/examples/connect.py listen  HOST[:PORT] USER PASSWORD [--insecure] [--loopback]
    python docs/examples/connect.py connect HOST[:PORT] USER PASSWORD PEER [--insecure] [--loopback]

Run ``listen`` as one user in one process (or on one host), then ``connect``
as a buddy of that user in another. The listener answers the first
datagram it gets with the same bytes upper-cased, then exits; the connector
sends "hello", prints the path that won, every technique tried and the
answer, then exits. ``--insecure`` accepts a self-signed node certificate,
``--loopback`` offers loopback addresses (both peers on one machine).
"""

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred

from rendezvous.peer import connect, listen


def describe(connection) -> None:
    print(f"connected to {connection.peer} by {connection.path}: {connection.local} -> {connection.remote}")
    for attempt in connection.attempts:
        print(f"  {attempt.technique:12} {attempt.outcome:12} {attempt.duration_ms:8.1f} ms {attempt.detail}")
    sys.stdout.flush()


async def answer_one(reactor, server, user: str, password: str, **options) -> None:
    answered = Deferred()

    def on_connection(connection) -> None:
        describe(connection)

        def received(data: bytes) -> None:
            connection.send(data.upper())
            if not answered.called:
                reactor.callLater(1.0, answered.callback, None)  # time for a resend to be answered too

        connection.set_receiver(received)

    listener = await listen(reactor, user, password, on_connection, [server], **options)
    print(f"listening as {user}", flush=True)
    try:
        await answered
    finally:
        await listener.close()


async def say_hello(reactor, server, user: str, password: str, peer: str, **options) -> None:
    connection = await connect(reactor, user, password, peer, [server], **options)
    describe(connection)
    reply = Deferred()
    connection.set_receiver(lambda data: reply.called or reply.callback(data))
    sender = task.LoopingCall(connection.send, b"hello")  # datagrams may be lost: repeat until answered
    sender.clock = reactor
    sender.start(0.5)
    try:
        print("answer:", (await reply.addTimeout(10, reactor)).decode(), flush=True)
    finally:
        sender.stop()
        await connection.close()


def main(reactor, mode: str, server: str, user: str, password: str, *rest: str) -> Deferred:
    flags = {word for word in rest if word.startswith("--")}
    words = [word for word in rest if not word.startswith("--")]
    host, _, port = server.partition(":")
    options = {"tls_verify": "--insecure" not in flags, "include_loopback": "--loopback" in flags}
    if mode == "listen":
        work = answer_one(reactor, (host, int(port or 3478)), user, password, **options)
    else:
        work = say_hello(reactor, (host, int(port or 3478)), user, password, words[0], **options)
    return Deferred.fromCoroutine(work)


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] not in ("listen", "connect") or (sys.argv[1] == "connect"
                                                                        and len(sys.argv) < 6):
        sys.exit(__doc__)
    task.react(main, sys.argv[1:])
