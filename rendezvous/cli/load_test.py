"""``txrendezvous load-test``: drive packets through a TURN relay and report throughput, loss and RTT.

    txrendezvous load-test --server 127.0.0.1:3478 --user alice:secret --clients 10 --rate 1000

The options become a LoadConfig, relay.loadgen runs it with progress on
stderr, and the report (text, or JSON with ``--json``) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from relay.loadgen import LoadTestFailed, run
from relay.loadgen_config import HARD_CAP_PACKETS, MAX_SIZE_BYTES, MIN_SIZE_BYTES, ConfigError, LoadConfig
from relay.loadgen_report import format_report, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the load-test options to an argparse (sub)parser."""
    parser.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="the TURN server ([ADDR]:PORT for IPv6)")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp",
                        help="client-to-relay transport (default udp)")
    parser.add_argument("--user", required=True, metavar="NAME:PASS",
                        help="long-term credentials; a bare NAME reads the password from TXRENDEZVOUS_PASSWORD")
    parser.add_argument("--realm", help="expected realm; fail if the server's differs (default: the server's)")
    parser.add_argument("--clients", type=int, default=1, metavar="N",
                        help="allocations, each with its own peer socket (default 1)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="worker processes sharing the clients (default 1)")
    parser.add_argument("--mode", choices=("channel", "send"), default="channel",
                        help="ChannelData or Send/Data indications (default channel)")
    parser.add_argument("--size", type=int, default=100, metavar="BYTES",
                        help=f"application payload per packet, {MIN_SIZE_BYTES}-{MAX_SIZE_BYTES} (default 100)")
    parser.add_argument("--rate", type=float, default=100.0, metavar="PPS",
                        help="packets per second per client (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, metavar="S",
                        help="how long to send (default 10)")
    parser.add_argument("--peer-ip", default="127.0.0.1", metavar="IP",
                        help="local address the peer sockets bind to; the relay must reach it (default 127.0.0.1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--tls-insecure", action="store_true",
                        help="TLS: accept any server certificate (self-signed development servers)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="TLS: trust this PEM CA or certificate instead of the system's")
    parser.add_argument("--tls-hostname", metavar="NAME",
                        help="TLS: name to verify the certificate against (default: the --server host)")
    parser.add_argument("--tick-ms", type=float, default=None, metavar="MS",
                        help="send loop period; each tick sends the packets owed "
                             "(default: 1 ms up to 100 clients per process, +0.01 ms per client, at most 10)")
    parser.add_argument("--setup-timeout", type=float, default=10.0, metavar="S",
                        help="give up on clients not allocated by then (default 10)")
    parser.add_argument("--drain", type=float, default=1.0, metavar="S",
                        help="wait this long after sending for packets in flight (default 1)")
    parser.add_argument("--max-packets", type=int, default=HARD_CAP_PACKETS, metavar="N",
                        help=f"stop after this many packets over all clients (at most {HARD_CAP_PACKETS:,})")


def parse_server(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' to (host, port); ConfigError when malformed."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server must be HOST:PORT (IPv6 as [ADDR]:PORT), not {text!r}")
    return host, int(port)


def parse_user(text: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """'NAME:PASSWORD' to (name, password).

    A bare NAME takes the password from TXRENDEZVOUS_PASSWORD, which keeps it
    out of the process list.
    """
    environ = os.environ if environ is None else environ
    name, sep, password = text.partition(":")
    if not sep:
        password = environ.get("TXRENDEZVOUS_PASSWORD", "")
    if not name or not password:
        raise ConfigError("--user must be NAME:PASSWORD (or NAME with TXRENDEZVOUS_PASSWORD set)")
    return name, password


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> LoadConfig:
    """Build and validate a LoadConfig; ConfigError for bad input."""
    username, password = parse_user(args.user, environ)
    return LoadConfig(
        server=parse_server(args.server),
        username=username,
        password=password,
        realm=args.realm,
        transport=args.transport,
        clients=args.clients,
        processes=min(args.processes, max(1, args.clients)),
        mode=args.mode,
        size=args.size,
        rate=args.rate,
        seconds=args.seconds,
        peer_ip=args.peer_ip,
        tls_verify=not args.tls_insecure,
        tls_ca_file=args.tls_ca,
        tls_hostname=args.tls_hostname,
        tick_seconds=None if args.tick_ms is None else args.tick_ms / 1000,
        setup_timeout_seconds=args.setup_timeout,
        drain_seconds=args.drain,
        max_packets=args.max_packets,
    ).validate()


def run_command(args: argparse.Namespace) -> int:
    """``txrendezvous load-test``: 0 when packets came back, 1 when the run failed, 2 for bad input."""
    try:
        config = config_from_args(args)
    except ConfigError as e:
        sys.stderr.write(f"txrendezvous load-test: error: {e}\n")
        return 2
    if config.tls_ca_file and not os.path.isfile(config.tls_ca_file):
        sys.stderr.write(f"txrendezvous load-test: error: --tls-ca {config.tls_ca_file}: no such file\n")
        return 2

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    sys.stderr.write(f"setting up {config.clients} client(s) on {config.server[0]}:{config.server[1]} "
                     f"over {config.transport} in {config.processes} process(es)...\n")
    try:
        result = run(config, progress)
    except LoadTestFailed as e:
        sys.stderr.write(f"txrendezvous load-test: error: {e}\n")
        return 1
    summary = summarize(config, result)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(format_report(summary) + "\n")
    if not result.received:
        sys.stderr.write("txrendezvous load-test: error: no packet came back through the relay\n")
        return 1
    return 0
