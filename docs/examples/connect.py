"""Connect two peers through a super node and talk over an encrypted session, by the best path there is.

    python docs/examples/connect.py listen  HOST[:PORT] USER PASSWORD [--insecure] [--loopback]
    python docs/examples/connect.py connect HOST[:PORT] USER PASSWORD PEER [--insecure] [--loopback]

Run ``listen`` as one user in one process (or on one host), then ``connect``
as a buddy of that user in another. Each side's key is made on first use in
``~/.local/state/txrendezvous`` (or ``$XDG_STATE_HOME/txrendezvous``), and
each pins the other's fingerprint. The connector opens a stream and sends
"hello"; the listener answers on that stream with the bytes upper-cased,
then exits; the connector prints the answer, then the path that won (the
session starts on the relay and moves to a direct path once the checks
confirm one) and every technique tried, then exits. ``--insecure`` accepts a self-signed node
certificate, ``--loopback`` offers loopback addresses (both peers on one
machine).
"""

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from rendezvous.peer import connect, listen


def describe(session) -> None:
    path = session.connection
    print(f"connected to {session.peer} by {session.path}: {path.local} -> {path.remote}")
    print(f"  peer certificate {session.peer_fingerprint}")
    for attempt in session.attempts:
        print(f"  {attempt.technique:12} {attempt.outcome:12} {attempt.duration_ms:8.1f} ms {attempt.detail}")
    sys.stdout.flush()


class Upper(Protocol):
    """The listener's end of a stream: writes back what it reads, upper-cased, and ends with the peer."""

    def __init__(self, done: Deferred) -> None:
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def connectionLost(self, reason) -> None:
        self.done.called or self.done.callback(None)


class Hello(Protocol):
    """The connector's end: says hello, collects the answer until the stream ends."""

    def __init__(self) -> None:
        self.answer, self.received = Deferred(), b""

    def connectionMade(self) -> None:
        self.transport.write(b"hello")
        self.transport.loseConnection()  # FIN: the listener has everything

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.answer.called or self.answer.callback(self.received)


async def answer_one(reactor, server, user: str, password: str, **options) -> None:
    answered = Deferred()

    sessions = []

    def on_session(session) -> None:
        sessions.append(session)
        session.accept_streams(Factory.forProtocol(lambda: Upper(answered)))

    listener = await listen(reactor, user, password, on_session, [server], **options)
    print(f"listening as {user}", flush=True)
    try:
        await answered
        await sessions[0].when_settled()  # the checks are over: the path that won
        describe(sessions[0])
    finally:
        await listener.close()


async def say_hello(reactor, server, user: str, password: str, peer: str, **options) -> None:
    session = await connect(reactor, user, password, peer, [server], **options)
    hello = Hello()
    session.open_stream(hello)  # at once, on whatever path the session has now
    try:
        print("answer:", (await hello.answer.addTimeout(10, reactor)).decode(), flush=True)
        await session.when_settled()
        describe(session)
    finally:
        await session.close()


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
