"""A connect()/listen() client run inside a lab namespace; prints one JSON line.

    python -m tests.natlab.connect_client listen  HOST PORT TLS USER PASSWORD [OPTION=VALUE...]
    python -m tests.natlab.connect_client connect HOST PORT TLS USER PASSWORD PEER [OPTION=VALUE...]

Options: ``direct=udp,tcp`` and ``relay=udp,tcp,tls`` (comma lists, may be
empty) become connect()'s ``direct_transports`` and ``relay_transports``,
``consent=SECONDS`` its ``consent_timeout_seconds``, ``relay_wait=SECONDS``
its ``relay_wait_seconds``; ``settle=SECONDS`` has the connector wait that
long after logging in before it connects (a client logged in for a while);
``state=DIR`` keeps the identity and pins there instead of in a fresh folder;
``spare=0`` turns ``spare_relay`` off; ``report=1`` sets ``report_outcome`` (the connector then waits for the field
test's answer and prints it as ``reported``); ``again=1`` has the connector,
once the checks settle, ping once more on a new stream and print whether
that pong came back too (``pong_again``: data both ways on the final path).

Both run encrypted sessions (each process has a fresh identity in a
temporary state directory). The listener prints {"ready": true} once
online, answers "ping" on the first stream the peer opens with "pong", and
once the checks settle prints its session's first and final path, its
attempts and when the ping arrived (``pinged_at``, wall-clock seconds),
then exits. The connector logs in, then
opens a session (``connect_at``: when it called connect), sends "ping" on a
stream as soon as the session is up, waits for the checks to settle, and
prints its first and final path, its attempts, whether the pong came back,
and ``direct_at``, when the session moved off the relay (null if it never
did). Lab machines share one clock, so the two reports give issue 13's
times: first byte at the peer (pinged_at - connect_at) and first byte to
direct (direct_at - pinged_at).
With ``watch=SECONDS`` neither ends there: each then waits that long for
its path's ``when_lost()`` and prints {"lost": reason or null}.
Both give up after 40 s. ``run_pair`` runs a listener and a connector in
two sites of a lab (tests/natlab/lab.py) and returns their reports;
``add_buddies`` makes the accounts it logs in with.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from rendezvous.node.accounts import AccountStore
from rendezvous.peer import Client, ConnectError, listen

from .lab import ENV, ROOT, SERVER_IP, SERVER_PORT

LIMIT_SECONDS = 40
WEB_ONLY = "tcp-web-only"


def user(site) -> str:
    """The account name of a lab site (its name, "#" and "+" made "-")."""
    return site.name.replace("#", "-").replace("+", "-")


def add_buddies(lab, names: list[str]) -> None:
    """Accounts (password "pw-NAME") on the lab's node, every pair buddies; before start_server."""
    store = AccountStore(lab.workdir / f"twistd-{SERVER_PORT}-state" / "accounts.sqlite")
    try:
        for name in names:
            store.add(name, "pw-" + name, "txrendezvous")
        for a, b in itertools.combinations(names, 2):
            store.request_buddy(a, b)
            store.accept_buddy(b, a)
    finally:
        store.close()


def client(site, mode: str, *extra: str) -> subprocess.Popen:
    """This module run in the site's namespace (TLS to 443 behind the web-only firewall)."""
    web_only = site.kind == WEB_ONLY
    argv = site.exec_argv(sys.executable, "-m", "tests.natlab.connect_client", mode, SERVER_IP,
                          "443" if web_only else str(SERVER_PORT), "tls" if web_only else "tcp",
                          user(site), "pw-" + user(site), *extra)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=ENV)


def run_pair(caller, callee, *options: str) -> tuple[dict, dict]:
    """Listener in callee's namespace, connector in caller's (both with options); their reports."""
    listener = client(callee, "listen", *options)
    try:
        ready = json.loads(listener.stdout.readline() or "{}")
        assert ready.get("ready"), listener.stderr.read() if listener.poll() is not None else ready
        started_at = time.time()
        connector = client(caller, "connect", user(callee), *options)
        out, err = connector.communicate(timeout=60)
        mine = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
        mine["started_at"] = started_at  # when the connector's process was started
        line = listener.stdout.readline()
        theirs = json.loads(line) if line.strip() else {}
    finally:
        if listener.poll() is None:
            listener.terminate()
        listener.wait(10)
    return mine, theirs


def report(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def described(session) -> dict:
    connection = session.connection
    return {"path": session.path, "local": list(connection.local), "remote": list(connection.remote),
            "attempts": [[a.technique, a.duration_ms, a.outcome, a.detail] for a in session.attempts]}


async def watch_loss(session, seconds: float | None) -> None:
    """With watch=SECONDS: report the reason the session's path is lost, or null if it lasts."""
    if seconds is not None:
        lost = await session.connection.when_lost().addTimeout(seconds, reactor).addErrback(lambda _: None)
        report(lost=lost)


class Pong(Protocol):
    """The listener's side of the first stream: answers b"ping" with b"pong"."""

    def __init__(self, pinged: Deferred) -> None:
        self.pinged, self.data = pinged, b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data == b"ping":
            self.transport.write(b"pong")
            self.pinged.called or self.pinged.callback(time.time())


class Ping(Protocol):
    """The connector's side: sends b"ping", fires ``ponged`` on b"pong"."""

    def __init__(self) -> None:
        self.ponged, self.data = Deferred(), b""

    def connectionMade(self) -> None:
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data == b"pong" and not self.ponged.called:
            self.ponged.callback(True)


async def run_listen(server, tls, user, password, options, watch) -> None:
    options.pop("settle_seconds", None)
    options.pop("ping_again", None)
    done, finished = Deferred(), Deferred()  # pinged; and, with watch, the loss reported

    def connected(session) -> None:
        pinged, first_path = Deferred(), session.path

        async def answered() -> None:
            pinged_at = await pinged
            await session.when_settled().addTimeout(15, reactor).addErrback(lambda _: None)
            report(**described(session), first_path=first_path, pinged_at=pinged_at)
            if watch is None:
                reactor.callLater(1.0, lambda: done.called or done.callback(None))
            elif not done.called:
                done.callback(None)
                await watch_loss(session, watch)
                finished.callback(None)

        Deferred.fromCoroutine(answered())
        session.accept_streams(Factory.forProtocol(lambda: Pong(pinged)))

    listener = await listen(reactor, user, password, connected, [server], tls=tls, tls_verify=False, **options)
    report(ready=True, hint=listener.hint.to_presence())
    await done
    if watch is not None:
        await finished
    await listener.close()


async def run_connect(server, tls, user, password, peer, options, watch) -> None:
    settle = options.pop("settle_seconds", 0)
    again = options.pop("ping_again", False)
    client = await Client.login(reactor, user, password, [server], tls=tls, tls_verify=False, **options)
    await deferLater(reactor, settle)
    connect_at = time.time()
    try:
        session = await client.connect(peer)
    except ConnectError as e:
        report(error=str(e), attempts=[[a.technique, a.duration_ms, a.outcome, a.detail] for a in e.attempts])
        await client.close()
        return
    first_path, moved = session.path, []
    session.on_path_change(lambda path: moved.append(time.time()))
    ping = Ping()
    session.open_stream(ping)
    ok = await ping.ponged.addTimeout(6, reactor).addErrback(lambda _: False)
    await session.when_settled().addTimeout(15, reactor).addErrback(lambda _: None)
    extra = {}
    if again:
        ping = Ping()
        session.open_stream(ping)
        extra["pong_again"] = await ping.ponged.addTimeout(6, reactor).addErrback(lambda _: False)
    reported = [await d for d in client.reports]
    if reported:
        extra["reported"] = reported[0]
    report(**described(session), pong=ok, first_path=first_path, connect_at=connect_at,
           direct_at=moved[0] if moved else None, **extra)
    await watch_loss(session, watch)
    await client.close()


def parse_options(words: list[str]) -> tuple[dict, float | None]:
    """connect()'s options, and the watch=SECONDS (None without it)."""
    names = {"direct": "direct_transports", "relay": "relay_transports"}
    options, watch = {}, None
    for word in words:
        key, _, value = word.partition("=")
        if key == "watch":
            watch = float(value)
        elif key == "consent":
            options["consent_timeout_seconds"] = float(value)
        elif key == "relay_wait":
            options["relay_wait_seconds"] = float(value)
        elif key == "settle":
            options["settle_seconds"] = float(value)  # the connector's pause after login, not connect()'s
        elif key == "state":
            options["state_dir"] = value  # keys and pins kept across runs (default: a fresh folder)
        elif key == "spare":
            options["spare_relay"] = value == "1"
        elif key == "report":
            options["report_outcome"] = value == "1"
        elif key == "again":
            options["ping_again"] = value == "1"  # the connector's second ping, not connect()'s
        else:
            options[names[key]] = tuple(v for v in value.split(",") if v)
    return options, watch


def run_work(make_work, options: dict) -> int:
    """Run the coroutine ``make_work(options)`` on the reactor, the identity in a fresh folder unless
    ``state=`` named one; an error is reported as a JSON line; bounded by LIMIT_SECONDS."""
    state_dir = tempfile.mkdtemp(prefix="txr-natlab-peer-")
    options.setdefault("state_dir", state_dir)
    if os.environ.get("NATLAB_CLIENT_LOG"):  # debugging: the client's log on stderr
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    finished = Deferred.fromCoroutine(make_work(options))
    finished.addErrback(lambda f: report(error=f.getErrorMessage()))
    finished.addBoth(lambda _: reactor.stop())
    reactor.callLater(LIMIT_SECONDS, lambda: reactor.running and reactor.stop())
    reactor.run()
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    mode, host, port, tls, user, password, *rest = argv
    server, tls = (host, int(port)), tls == "tls"
    options, watch = parse_options(rest if mode == "listen" else rest[1:])
    if mode == "listen":
        return run_work(lambda o: run_listen(server, tls, user, password, o, watch), options)
    return run_work(lambda o: run_connect(server, tls, user, password, rest[0], o, watch), options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
