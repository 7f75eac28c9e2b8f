"""``txrendezvous send`` and ``txrendezvous receive``: a file over an encrypted session.

    txrendezvous receive HOST[:PORT] bob [--from alice] [--output DIR|FILE] [--force]
    txrendezvous send HOST[:PORT] alice bob FILE

The password comes from ``--password-file``, else $TXRENDEZVOUS_PASSWORD,
else a prompt when stdin is a terminal. The receiver waits for a buddy's
session (``rendezvous.peer.endpoints.ServerEndpoint``), takes the first
file offered, writes it beside the target under a temporary name, checks
its size and SHA-256 and only then gives it the target name (never over an
existing file without ``--force``); the sender streams the file through a
producer, so it is never read whole (``rendezvous.peer.transfer``, wire
format in docs/PROTOCOL.md). A progress bar (bytes, rate, ETA) goes to
stderr when it is a terminal and not ``--quiet``; each side prints one
summary line to stdout at the end and exits 0, or prints why it failed to
stderr and exits 1.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from twisted.internet.defer import Deferred

from rendezvous.cli.nat_check import parse_server

PASSWORD_VARIABLE = "TXRENDEZVOUS_PASSWORD"
PROGRESS_SECONDS = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sending = parser.prog.endswith("send")
    parser.add_argument("server", type=parse_server, help="super node HOST[:PORT] (default port 3478)")
    parser.add_argument("user", help="your account name")
    if sending:
        parser.add_argument("peer", help="the buddy to send to (who runs txrendezvous receive)")
        parser.add_argument("file", type=Path, help="the file to send")
    else:
        parser.add_argument("--from", dest="peer", metavar="BUDDY", default=None,
                            help="accept a file from this buddy only (default: any buddy)")
        parser.add_argument("--output", "-o", type=Path, default=None, metavar="PATH",
                            help="a directory to receive into, or the file name to give the file "
                                 "(default: the sender's file name in the current directory)")
        parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--password-file", default=None, metavar="PATH",
                        help=f"read your password from the file's first line (default: ${PASSWORD_VARIABLE}, "
                             "else a prompt)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--tls", action="store_true", help="log in over TLS (e.g. to port 443)")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed node certificate")
    parser.add_argument("--relay-only", action="store_true", help="skip direct paths (use the relay)")
    parser.add_argument("--loopback", action="store_true", help="offer loopback host candidates too")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where your key and pinned peers live (default: $XDG_STATE_HOME/txrendezvous)")
    parser.add_argument("--allow-new-fingerprint", action="store_true",
                        help="accept a peer whose key changed since it was pinned, and pin the new one")


def _password(args: argparse.Namespace) -> str:
    from rendezvous.peer.endpoints import read_password

    if args.password_file is not None:
        return read_password(args.password_file, None)
    if os.environ.get(PASSWORD_VARIABLE):
        return read_password(None, PASSWORD_VARIABLE)
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    raise ValueError(f"no password: give --password-file PATH or set ${PASSWORD_VARIABLE}")


def _login(args: argparse.Namespace):
    from rendezvous.peer.endpoints import Login

    options = {"include_loopback": args.loopback, "allow_new_fingerprint": args.allow_new_fingerprint}
    if args.relay_only:
        options["direct_transports"] = ()
    if args.state_dir is not None:
        options["state_dir"] = args.state_dir
    return Login((args.server,), args.user, _password(args), tls=args.tls, tls_verify=not args.insecure,
                 options=tuple(sorted(options.items())))


class _Progress:
    """A progress bar on stderr (bytes, rate, ETA) fed from ``measure()`` a few times a second."""

    def __init__(self, reactor, name: str, total: int, measure, quiet: bool) -> None:
        from tqdm import tqdm
        from twisted.internet.task import LoopingCall

        self.started, self.measure = reactor.seconds(), measure
        self.bar = tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                        disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        self.loop = LoopingCall(self._update)
        self.loop.clock = reactor
        self.loop.start(PROGRESS_SECONDS)
        self.reactor = reactor

    def _update(self) -> None:
        self.bar.update(self.measure() - self.bar.n)

    def close(self) -> float:
        """Stop the bar; returns the seconds it ran."""
        if self.loop.running:
            self.loop.stop()
            self._update()
            self.bar.close()
        return self.reactor.seconds() - self.started


def _summary(verb: str, what, size: int, seconds: float, digest: str) -> str:
    rate = size / seconds / 1e6 if seconds > 0 else 0.0
    return f"{verb} {what}: {size} bytes in {seconds:.1f} s ({rate:.1f} MB/s), sha256 {digest}"


async def _send(reactor, args: argparse.Namespace, login) -> str:
    from twisted.internet.endpoints import connectProtocol

    from rendezvous.peer.endpoints import ClientEndpoint
    from rendezvous.peer.transfer import FileSending

    try:
        sending = FileSending.for_path(args.file)
    except OSError as e:
        raise ValueError(f"cannot read {args.file}: {e.strerror}") from None
    offer = sending.offer
    await connectProtocol(ClientEndpoint(reactor, login, args.peer, linger_seconds=0), sending)
    sys.stderr.write(f"sending {offer.name} ({offer.size} bytes) to {args.peer} over "
                     f"{sending.transport.session.path}\n")
    sending.transport.session.on_path_change(lambda path: sys.stderr.write(f"moved to {path}\n"))
    progress = _Progress(reactor, offer.name, offer.size, lambda: sending.bytes_done, args.quiet)
    try:
        digest = await sending.done
    finally:
        seconds = progress.close()
    return _summary("sent", offer.name, offer.size, seconds, digest)


async def _receive(reactor, args: argparse.Namespace, login) -> str:
    from twisted.internet.protocol import Factory

    from rendezvous.peer.endpoints import ServerEndpoint
    from rendezvous.peer.transfer import FileReceiving

    first: Deferred = Deferred()
    progress: list[_Progress] = []

    class FirstStream(Factory):
        def buildProtocol(self, addr):
            if first.called:
                return None

            def offered(offer) -> None:
                sys.stderr.write(f"receiving {offer.name} ({offer.size} bytes) from {addr.user} over "
                                 f"{receiving.transport.session.path}\n")
                progress.append(_Progress(reactor, offer.name, offer.size, lambda: receiving.bytes_done, args.quiet))

            receiving = FileReceiving(args.output, args.force, on_offer=offered)
            first.callback(receiving)
            return receiving

    port = await ServerEndpoint(reactor, login, frozenset({args.peer}) if args.peer else None).listen(FirstStream())
    try:
        sys.stderr.write(f"waiting for a file as {args.user}\n")
        sys.stderr.flush()
        receiving = await first
        try:
            target, digest = await receiving.done
        finally:
            seconds = progress[0].close() if progress else 0.0
    finally:
        await port.stopListening()
    return _summary("received", target, receiving.offer.size, seconds, digest)


def run_command(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    status = {"code": 1}

    def finished(summary: str) -> None:
        print(summary, flush=True)
        status["code"] = 0

    def failed(failure) -> None:
        sys.stderr.write(f"txrendezvous {args.command}: {failure.getErrorMessage()}\n")

    try:
        login = _login(args)
    except ValueError as e:
        sys.stderr.write(f"txrendezvous {args.command}: {e}\n")
        return 1
    work = _send(reactor, args, login) if args.command == "send" else _receive(reactor, args, login)
    done = Deferred.fromCoroutine(work).addCallbacks(finished, failed)
    done.addBoth(lambda _: reactor.running and reactor.stop())
    reactor.run()
    return status["code"]
