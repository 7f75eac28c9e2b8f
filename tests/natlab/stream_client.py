"""A session that streams numbered chunks while its path moves, run inside a lab namespace.

    python -m tests.natlab.stream_client listen  HOST PORT TLS USER PASSWORD [OPTION=VALUE...]
    python -m tests.natlab.stream_client connect HOST PORT TLS USER PASSWORD PEER SECONDS [OPTION=VALUE...]

Options as tests/natlab/connect_client.py takes. The connector prints
{"up": true, "path": ...} as soon as its session is up and {"moved": PATH}
each time the session moves, and meanwhile writes a
CHUNK_BYTES chunk every 10 ms for SECONDS on one stream (each begins with
its number), ends the stream, and prints {"paths": [...], "summary": ...}:
every path the session ran on, in order, and the listener's verdict, which
the listener sends back on the stream once it has read to the end: the
chunks counted and the first one out of place (null when every chunk
arrived once, in order, intact).
"""

import json
import struct
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from rendezvous.peer import Client, listen

from .connect_client import parse_options, report, run_work

CHUNK_BYTES = 1024
INTERVAL_SECONDS = 0.01


def chunk(number: int) -> bytes:
    return struct.pack("!Q", number) + bytes([number % 251]) * (CHUNK_BYTES - 8)


@implementer(IHalfCloseableProtocol)
class Check(Protocol):
    """The listener's side: reads chunks, checks each, answers the verdict at the end of the stream."""

    def __init__(self, done: Deferred) -> None:
        self.done, self.buffer, self.count, self.bad = done, b"", 0, None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= CHUNK_BYTES:
            piece, self.buffer = self.buffer[:CHUNK_BYTES], self.buffer[CHUNK_BYTES:]
            if self.bad is None and piece != chunk(self.count):
                self.bad = self.count
            self.count += 1

    def readConnectionLost(self) -> None:
        first_bad = self.bad if self.bad is not None or not self.buffer else self.count
        self.transport.write(json.dumps({"chunks": self.count, "first_bad": first_bad}).encode())
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.done.called or self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class Feed(Protocol):
    """The connector's side: a chunk every INTERVAL_SECONDS for ``seconds``, then the end; the verdict back."""

    def __init__(self, seconds: float) -> None:
        self.total = int(seconds / INTERVAL_SECONDS)
        self.sent, self.answer, self.verdict = 0, b"", Deferred()

    def connectionMade(self) -> None:
        self.loop = LoopingCall(self.tick)
        self.loop.start(INTERVAL_SECONDS)

    def tick(self) -> None:
        self.transport.write(chunk(self.sent))
        self.sent += 1
        if self.sent >= self.total:
            self.loop.stop()
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def readConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        if self.loop.running:
            self.loop.stop()
        self.verdict.called or self.verdict.callback(
            json.loads(self.answer) if self.answer else {"error": reason.getErrorMessage(), "sent": self.sent})


async def run_listen(server, tls, user, password, options) -> None:
    done = Deferred()
    client = await listen(reactor, user, password, lambda session: session.accept_streams(
        Factory.forProtocol(lambda: Check(done))), [server], tls=tls, tls_verify=False, **options)
    report(ready=True)
    await done
    await client.close()


async def run_connect(server, tls, user, password, peer, seconds, options) -> None:
    client = await Client.login(reactor, user, password, [server], tls=tls, tls_verify=False, **options)
    session = await client.connect(peer)
    paths = [session.path]

    def moved(path: str) -> None:
        paths.append(path)
        report(moved=path)

    session.on_path_change(moved)
    report(up=True, path=session.path)
    feed = Feed(seconds)
    session.open_stream(feed)
    summary = await feed.verdict.addTimeout(seconds + 20, reactor)
    report(paths=paths, summary=summary, sent=feed.sent)
    await client.close()


def main(argv: list[str]) -> int:
    mode, host, port, tls, user, password, *rest = argv
    server, tls = (host, int(port)), tls == "tls"
    if mode == "listen":
        return run_work(lambda o: run_listen(server, tls, user, password, o), parse_options(rest)[0])
    return run_work(lambda o: run_connect(server, tls, user, password, rest[0], float(rest[1]), o),
                    parse_options(rest[2:])[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
