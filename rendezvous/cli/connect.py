"""``txrendezvous listen`` and ``txrendezvous connect``: a session by hand, stdin and stdout over a stream.

Both print to stderr the path the session starts on, every attempt with
its time, and each later move (the relay first, then a direct path once
the checks confirm one); ``--json`` makes each a JSON object on a line.
They carry stdin to the peer and the peer's bytes to stdout over one
stream of the encrypted session, like netcat. At the end of stdin a side finishes its direction (a QUIC FIN);
each exits once both directions are finished or the session ends. The
listener serves the first buddy that connects, then exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from rendezvous.cli.nat_check import parse_server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", type=parse_server, help="super node HOST[:PORT] (default port 3478)")
    parser.add_argument("user", help="your account name")
    parser.add_argument("password", help="your password")
    if parser.prog.endswith("connect"):
        parser.add_argument("peer", help="the buddy to connect to")
    parser.add_argument("--tls", action="store_true", help="log in over TLS (e.g. to port 443)")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed node certificate")
    parser.add_argument("--relay-only", action="store_true", help="skip direct UDP and TCP (test the relay)")
    parser.add_argument("--no-udp", action="store_true", help="skip direct UDP candidates")
    parser.add_argument("--no-tcp", action="store_true", help="skip TCP hole punching")
    parser.add_argument("--low-ttl", type=int, default=None, metavar="TTL",
                        help="send the first TCP punching SYN with this IP TTL (default: a full TTL)")
    parser.add_argument("--loopback", action="store_true", help="offer loopback host candidates too")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where your key (USER.identity.pem) and pinned peers (USER.pins.json) live "
                             "(default: $XDG_STATE_HOME/txrendezvous or ~/.local/state/txrendezvous)")
    parser.add_argument("--allow-new-fingerprint", action="store_true",
                        help="accept a peer whose key changed since it was pinned, and pin the new one")
    parser.add_argument("--json", action="store_true", help="status lines on stderr as JSON objects")


def _described(session) -> dict:
    path = session.connection
    return {"event": "connected", "peer": session.peer, "path": session.path, "local": list(path.local),
            "remote": list(path.remote), "fingerprint": session.peer_fingerprint,
            "attempts": [{"technique": a.technique, "ms": a.duration_ms, "outcome": a.outcome, "detail": a.detail}
                         for a in session.attempts]}


def _status(args, fields: dict) -> None:
    if args.json:
        sys.stderr.write(json.dumps(fields) + "\n")
    elif fields["event"] == "connected":
        sys.stderr.write(f"connected to {fields['peer']} by {fields['path']}: {fields['local'][0]}:"
                         f"{fields['local'][1]} -> {fields['remote'][0]}:{fields['remote'][1]}\n")
        for a in fields["attempts"]:
            detail = f" ({a['detail']})" if a["detail"] else ""
            sys.stderr.write(f"  {a['technique']:14} {a['ms']:9.1f} ms  {a['outcome']}{detail}\n")
    elif fields["event"] == "path":
        sys.stderr.write(f"moved to {fields['path']}\n")
    elif fields["event"] == "listening":
        sys.stderr.write(f"listening as {fields['user']}\n")
    elif fields["event"] == "failed":
        sys.stderr.write(f"txrendezvous {args.command}: {fields['error']}\n")
        for a in fields.get("attempts", []):
            sys.stderr.write(f"  {a['technique']:14} {a['ms']:9.1f} ms  {a['outcome']}\n")
    elif fields["event"] == "closed" and fields["reason"] != "done":
        sys.stderr.write(f"txrendezvous {args.command}: {fields['reason']}\n")
    sys.stderr.flush()


@implementer(IHalfCloseableProtocol)
class _StreamSide(Protocol):
    """The session stream: its bytes go to stdout; it tells the relay when it has ended."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.start(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay.stdio.write(data)

    def readConnectionLost(self) -> None:
        pass  # the peer's FIN: wait for our own end of input

    def connectionLost(self, reason) -> None:
        self.relay.finish(None if reason.check(ConnectionDone) else reason.getErrorMessage())


@implementer(IHalfCloseableProtocol)
class _StdioSide(Protocol):
    """stdin and stdout: stdin's bytes go to the stream; its end finishes our direction."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def dataReceived(self, data: bytes) -> None:
        self.relay.stream.write(data)

    def readConnectionLost(self) -> None:
        self.relay.stream.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.relay.stream.loseConnection()
        self.relay.stdio_closed.callback(None)  # stdout is flushed


class _Relay:
    """stdin/stdout and one stream of a session, joined until both directions end."""

    def __init__(self, reactor, args, session, status: dict) -> None:
        self.reactor, self.args, self.session, self.status = reactor, args, session, status
        self.stream = None
        self.stdio = None
        self.stdio_closed = Deferred()
        self.done = False
        session.when_closed().addCallback(lambda reason: self.finish(reason))
        session.on_path_change(lambda path: _status(args, {"event": "path", "path": path}))

    def start(self, stream_transport) -> None:
        from twisted.internet import stdio

        self.stream = stream_transport
        self.stdio = stdio.StandardIO(_StdioSide(self), reactor=self.reactor)

    def finish(self, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        if reason is not None and reason != "closed by this side":
            self.status["code"] = 1
        _status(self.args, {"event": "closed", "reason": reason or "done"})
        if self.stdio is None:
            self.stdio_closed.callback(None)
        else:
            self.stdio.loseConnection()  # writes what stdout still holds, then closes
        closing = DeferredList([self.session.close(), self.stdio_closed])
        closing.addBoth(lambda _: self.reactor.running and self.reactor.stop())


class _FirstStream(Factory):
    """Accepts the peer's first stream for the relay and refuses the rest."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr):
        return _StreamSide(self.relay) if self.relay.stream is None else None


def run_command(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from rendezvous.peer import connect, listen

    direct = () if args.relay_only else tuple(t for t, off in (("udp", args.no_udp), ("tcp", args.no_tcp))
                                               if not off)
    options = dict(tls=args.tls, tls_verify=not args.insecure, include_loopback=args.loopback,
                   direct_transports=direct, tcp_low_ttl=args.low_ttl, state_dir=args.state_dir,
                   allow_new_fingerprint=args.allow_new_fingerprint)
    status = {"code": 0}
    served = []

    def connected(session) -> None:
        _status(args, _described(session))
        session.open_stream(_StreamSide(_Relay(reactor, args, session, status)))

    def accepted(session) -> None:
        if served:  # one buddy per run
            session.close()
            return
        served.append(session)
        _status(args, _described(session))
        session.accept_streams(_FirstStream(_Relay(reactor, args, session, status)))

    def failed(failure) -> None:
        attempts = [{"technique": a.technique, "ms": a.duration_ms, "outcome": a.outcome}
                    for a in getattr(failure.value, "attempts", [])]
        _status(args, {"event": "failed", "error": failure.getErrorMessage(), "attempts": attempts})
        status["code"] = 1
        if reactor.running:
            reactor.stop()

    if args.command == "connect":
        connect(reactor, args.user, args.password, args.peer, [args.server], **options).addCallbacks(
            connected, failed)
    else:
        listen(reactor, args.user, args.password, accepted, [args.server], **options).addCallbacks(
            lambda _: _status(args, {"event": "listening", "user": args.user}), failed)
    reactor.run()
    return status["code"]
