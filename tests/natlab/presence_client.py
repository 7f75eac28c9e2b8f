"""A user that stays logged in through node failures, run inside a lab namespace.

    python -m tests.natlab.presence_client once USER PASSWORD HOST:PORT [register]
    python -m tests.natlab.presence_client stay USER PASSWORD CACHE_FILE HOST:PORT...

``once`` logs in (registering first with ``register``), prints the welcome
and exits. ``stay`` logs in through its host cache file (bootstrap:
the HOST:PORTs), prints each pushed ``presence`` and, when the connection
goes, logs in again from the host cache at once, over and over, until
LIMIT_SECONDS. Each line on stdin is a request, a JSON object with ``op``;
its reply (or error code) is printed. Every printed line is a JSON object
with ``event`` and ``t``, this host's CLOCK_MONOTONIC (the test's clock too).
"""

import json
import os
import sys
import time
from pathlib import Path

from twisted.internet import reactor, stdio
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from rendezvous.peer.host_cache import HostCache
from rendezvous.peer.signaling_client import SignalingClient, SignalingRequestError, SignalingUnavailable

LIMIT_SECONDS = 120
LOGIN_TRY_SECONDS = 2  # each node tried gets this long (a dead host's SYN goes unanswered)
RETRY_SECONDS = 0.2


def report(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def server(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


class Requests(LineReceiver):
    """Lines on stdin: requests sent on the client logged in now."""

    delimiter = b"\n"

    def __init__(self, user) -> None:
        self.user = user

    def lineReceived(self, line: bytes) -> None:
        request = json.loads(line)
        if self.user.client is None:
            report("reply", code="not-logged-in", request=request)
            return
        self.user.client.request(request.pop("op"), **request).addCallbacks(
            lambda reply: report("reply", reply=reply),
            lambda failure: report("reply", code=getattr(failure.value, "code", failure.getErrorMessage())))


class StayingUser:
    def __init__(self, name: str, password: str, cache: HostCache) -> None:
        self.name, self.password, self.cache = name, password, cache
        self.client: SignalingClient | None = None

    async def run(self) -> None:
        while True:
            try:
                self.client = await SignalingClient.login(reactor, self.name, self.password, host_cache=self.cache,
                                                          timeout_seconds=LOGIN_TRY_SECONDS)
            except SignalingUnavailable as e:
                report("unreachable", error=str(e))
                await deferLater(reactor, RETRY_SECONDS)
                continue
            except SignalingRequestError as e:
                report("refused", code=e.code)
                await deferLater(reactor, RETRY_SECONDS)
                continue
            report("welcome", node=self.client.welcome["node"], hosts=self.client.welcome["host_cache"])
            self.client.on("presence", lambda frame: report("presence", **{k: frame.get(k) for k in (
                "user", "state", "node")}))
            self.client.on("message", lambda frame: report("message", **{"from": frame["from"], "text": frame["text"]}))
            await self.client.when_closed()
            self.client = None
            report("lost")


async def once(name: str, password: str, where: tuple[str, int], register: bool) -> None:
    try:
        client = await SignalingClient.login(reactor, name, password, servers=[where], register=register,
                                             timeout_seconds=5)
    except SignalingRequestError as e:
        report("refused", code=e.code)
        return
    report("welcome", node=client.welcome["node"])
    await client.close()


def main(argv: list[str]) -> int:
    if os.environ.get("NATLAB_CLIENT_LOG"):  # the client's log on stderr, for a failing test to show
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    mode, name, password, *rest = argv
    if mode == "once":
        work = once(name, password, server(rest[0]), rest[1:] == ["register"])
    else:
        user = StayingUser(name, password, HostCache(Path(rest[0]), [server(r) for r in rest[1:]]).load())
        stdio.StandardIO(Requests(user))
        work = user.run()
    finished = Deferred.fromCoroutine(work)
    finished.addErrback(lambda failure: report("error", error=failure.getErrorMessage()))
    finished.addBoth(lambda _: reactor.running and reactor.stop())
    reactor.callLater(LIMIT_SECONDS, lambda: reactor.running and reactor.stop())
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
