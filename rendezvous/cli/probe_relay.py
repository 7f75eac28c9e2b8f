"""``txrendezvous probe-relay``: a security self-test an operator runs against their own TURN relay.

    txrendezvous probe-relay 203.0.113.7:3478 --user alice --password-file ~/.turn-probe
    txrendezvous probe-relay 127.0.0.1:3478 --user alice:secret --quota-check 50 --json

relay.probe runs the checks; this prints one verdict per check and a
summary (or JSON with ``--json``). Exit status: 0 when nothing is OPEN,
1 when something is, 2 for bad options or when the probe cannot start
(no answer, credentials refused).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from relay.loadgen_config import ConfigError
from relay.probe import DEFAULT_METRICS_PORT, QUOTA_CHECK_MAX, ProbeConfig, ProbeFailed, probe
from rendezvous.cli.load_test import parse_server, parse_user

PROG = "txrendezvous probe-relay"
EXIT_OPEN = 1
EXIT_ERROR = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the probe-relay options to an argparse (sub)parser."""
    parser.add_argument("server", metavar="HOST:PORT", help="the relay to test ([ADDR]:PORT for IPv6)")
    parser.add_argument("--user", required=True, metavar="NAME[:PASS]",
                        help="a user of the relay; without :PASS the password comes from --password-file, "
                             "TXRENDEZVOUS_PASSWORD, or a prompt")
    parser.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")
    parser.add_argument("--realm", help="expected realm; stop if the relay's differs (default: the relay's)")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp",
                        help="how the probe talks to the relay (default udp); Connect checks use TCP or TLS")
    parser.add_argument("--also-port", type=int, action="append", default=[], metavar="PORT",
                        help="another port of the relay's host to try reaching through the relay (repeatable)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, metavar="PORT",
                        help=f"the relay's metrics port, tried through the relay (default {DEFAULT_METRICS_PORT}; "
                             "0 skips it)")
    parser.add_argument("--quota-check", type=int, default=0, metavar="N",
                        help=f"allocate up to N (at most {QUOTA_CHECK_MAX}) as one user and report whether a "
                             "per-user quota stopped it; all are released after (default: not run)")
    parser.add_argument("--max-amplification", type=float, default=5.0, metavar="RATIO",
                        help="largest acceptable answer/request size ratio for an unauthenticated Allocate "
                             "(default 5)")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help="how long to wait for each answer (default 3)")
    parser.add_argument("--max-seconds", type=float, default=180.0, metavar="S",
                        help="stop sending new requests after this long (default 180)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--tls-insecure", action="store_true",
                        help="TLS: accept any server certificate (self-signed development servers)")
    parser.add_argument("--tls-ca", metavar="FILE", help="TLS: trust this PEM CA or certificate")
    parser.add_argument("--tls-hostname", metavar="NAME",
                        help="TLS: name to verify the certificate against (default: the server host)")


def credentials(args: argparse.Namespace, environ: dict[str, str] | None = None,
                prompt: Callable[[str], str] = getpass.getpass, terminal: TextIO | None = None) -> tuple[str, str]:
    """(name, password) from --user NAME:PASS, --password-file, TXRENDEZVOUS_PASSWORD, or a prompt.

    The prompt is used only when standard input is a terminal; ConfigError
    when no source gives a password.
    """
    if args.password_file:
        if ":" in args.user:
            raise ConfigError("give the password once: --user NAME:PASS or --password-file, not both")
        try:
            lines = Path(args.password_file).expanduser().read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"--password-file: {e.strerror}: {args.password_file}") from None
        if not args.user or not lines or not lines[0]:
            raise ConfigError(f"--password-file {args.password_file}: the first line is empty")
        return args.user, lines[0]
    try:
        return parse_user(args.user, environ)
    except ConfigError:
        terminal = sys.stdin if terminal is None else terminal
        if ":" in args.user or not args.user or not terminal.isatty():
            raise ConfigError("--user must be NAME:PASSWORD, or NAME with --password-file, "
                              "TXRENDEZVOUS_PASSWORD or a terminal to ask on") from None
    password = prompt(f"password of {args.user}: ")
    if not password:
        raise ConfigError("no password given")
    return args.user, password


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None, **ask) -> ProbeConfig:
    """A validated ProbeConfig; ConfigError for bad input."""
    username, password = credentials(args, environ, **ask)
    try:
        server = parse_server(args.server)
    except ConfigError:
        raise ConfigError(f"the relay must be HOST:PORT ([ADDR]:PORT for IPv6), not {args.server!r}") from None
    try:
        return ProbeConfig(
            server=server, username=username, password=password, realm=args.realm,
            transport=args.transport, also_ports=tuple(args.also_port),
            metrics_port=args.metrics_port or None, quota_check=args.quota_check,
            max_amplification=args.max_amplification, timeout_seconds=args.timeout,
            max_seconds=args.max_seconds, tls_verify=not args.tls_insecure, tls_ca_file=args.tls_ca,
            tls_hostname=args.tls_hostname,
        ).validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_command(args: argparse.Namespace) -> int:
    """``txrendezvous probe-relay``: 0 all closed, 1 something OPEN, 2 bad options or no probe possible."""
    try:
        config = config_from_args(args)
    except ConfigError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return EXIT_ERROR

    from twisted.internet import task
    from twisted.internet.defer import Deferred

    outcome: dict = {}

    async def main(reactor) -> None:
        try:
            outcome["report"] = await probe(reactor, config)
        except ProbeFailed as e:
            outcome["error"] = str(e)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit:  # react always exits; a failure has been logged
        pass
    if "report" not in outcome:
        sys.stderr.write(f"{PROG}: error: {outcome.get('error', 'the probe failed (see the log above)')}\n")
        return EXIT_ERROR
    report = outcome["report"]
    sys.stdout.write((report.to_json() if args.json else report.text()) + "\n")
    return EXIT_OPEN if report.open else 0
