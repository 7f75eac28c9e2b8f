"""A connect()/listen() client run inside a lab namespace; prints one JSON line.

    python -m tests.natlab.connect_client listen  HOST PORT TLS USER PASSWORD [OPTION=VALUE...]
    python -m tests.natlab.connect_client connect HOST PORT TLS USER PASSWORD PEER [OPTION=VALUE...]

Options: ``direct=udp,tcp`` and ``relay=udp,tcp,tls`` (comma lists, may be
empty) become connect()'s ``direct_transports`` and ``relay_transports``.

The listener prints {"ready": true} once online, then its connection's
path and attempts, answers one "ping" datagram with "pong" and exits. The
connector prints its path and attempts and whether the pong came back.
Both give up after 40 s.
"""

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from rendezvous.connect import ConnectError, connect, listen

LIMIT_SECONDS = 40


def report(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def described(connection) -> dict:
    return {"path": connection.path, "local": list(connection.local), "remote": list(connection.remote),
            "attempts": [[a.technique, a.duration_ms, a.outcome, a.detail] for a in connection.attempts]}


async def run_listen(server, tls, user, password, options) -> None:
    done = Deferred()

    def connected(connection) -> None:
        def received(data: bytes) -> None:
            if data == b"ping":
                for _ in range(3):
                    connection.send(b"pong")
                reactor.callLater(1.0, lambda: done.called or done.callback(None))

        report(**described(connection))
        connection.set_receiver(received)

    listener = await listen(reactor, user, password, connected, [server], tls=tls, tls_verify=False, **options)
    report(ready=True, hint=listener.hint.to_presence())
    await done
    await listener.close()


async def run_connect(server, tls, user, password, peer, options) -> None:
    try:
        connection = await connect(reactor, user, password, peer, [server], tls=tls, tls_verify=False, **options)
    except ConnectError as e:
        report(error=str(e), attempts=[[a.technique, a.duration_ms, a.outcome, a.detail] for a in e.attempts])
        return
    pong = Deferred()
    connection.set_receiver(lambda data: data == b"pong" and not pong.called and pong.callback(True))
    for i in range(20):
        reactor.callLater(i * 0.25, connection.send, b"ping")
    ok = await pong.addTimeout(6, reactor).addErrback(lambda _: False)
    report(**described(connection), pong=ok)
    await connection.close()


def parse_options(words: list[str]) -> dict:
    names = {"direct": "direct_transports", "relay": "relay_transports"}
    options = {}
    for word in words:
        key, _, value = word.partition("=")
        options[names[key]] = tuple(v for v in value.split(",") if v)
    return options


def main(argv: list[str]) -> int:
    mode, host, port, tls, user, password, *rest = argv
    server, tls = (host, int(port)), tls == "tls"
    if mode == "listen":
        work = run_listen(server, tls, user, password, parse_options(rest))
    else:
        work = run_connect(server, tls, user, password, rest[0], parse_options(rest[1:]))
    finished = Deferred.fromCoroutine(work)
    finished.addErrback(lambda f: report(error=f.getErrorMessage()))
    finished.addBoth(lambda _: reactor.stop())
    reactor.callLater(LIMIT_SECONDS, lambda: reactor.running and reactor.stop())
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
