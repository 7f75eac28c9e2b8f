"""``txrendezvous listen`` and ``txrendezvous connect``: connect() by hand.

Both print the path that won and every attempt with its time, then carry
stdin lines to the peer and the peer's datagrams to stdout, one per line.
"""

from __future__ import annotations

import argparse
import sys

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


def run_command(args: argparse.Namespace) -> int:
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import Deferred
    from twisted.protocols.basic import LineReceiver

    from rendezvous.peer import connect, listen

    direct = () if args.relay_only else tuple(t for t, off in (("udp", args.no_udp), ("tcp", args.no_tcp))
                                               if not off)
    options = dict(tls=args.tls, tls_verify=not args.insecure, include_loopback=args.loopback,
                   direct_transports=direct, tcp_low_ttl=args.low_ttl)
    status = {"code": 0}

    class Lines(LineReceiver):
        delimiter = b"\n"

        def __init__(self, connection) -> None:
            self.connection = connection

        def lineReceived(self, line: bytes) -> None:
            self.connection.send(line)

        def connectionLost(self, reason=None) -> None:
            self.connection.close().addBoth(lambda _: reactor.running and reactor.stop())

    def use(connection) -> None:
        sys.stderr.write(f"connected to {connection.peer} by {connection.path}: "
                         f"{connection.local[0]}:{connection.local[1]} -> "
                         f"{connection.remote[0]}:{connection.remote[1]}\n")
        for attempt in connection.attempts:
            detail = f" ({attempt.detail})" if attempt.detail else ""
            sys.stderr.write(f"  {attempt.technique:14} {attempt.duration_ms:9.1f} ms  {attempt.outcome}{detail}\n")
        connection.set_receiver(lambda data: sys.stdout.write(data.decode("utf-8", "replace") + "\n")
                                or sys.stdout.flush())
        stdio.StandardIO(Lines(connection))

    def failed(failure) -> None:
        sys.stderr.write(f"txrendezvous {args.command}: {failure.getErrorMessage()}\n")
        for attempt in getattr(failure.value, "attempts", []):
            sys.stderr.write(f"  {attempt.technique:14} {attempt.duration_ms:9.1f} ms  {attempt.outcome}\n")
        status["code"] = 1
        if reactor.running:
            reactor.stop()

    if args.command == "connect":
        started: Deferred = connect(reactor, args.user, args.password, args.peer, [args.server], **options)
        started.addCallbacks(use, failed)
    else:
        started = listen(reactor, args.user, args.password, use, [args.server], **options)
        started.addCallbacks(lambda _: sys.stderr.write(f"listening as {args.user}\n"), failed)
    reactor.run()
    return status["code"]
