"""``txrendezvous load-test``: drive packets through a TURN relay and report throughput, loss and RTT.

    txrendezvous load-test --server 127.0.0.1:3478 --user alice:secret --clients 10 --rate 1000
    txrendezvous load-test --server 127.0.0.1:3478 --user alice:secret --clients 10 --ramp --plot ramp.svg

The options become a LoadConfig, relay.loadgen runs it with progress on
stderr (with ``--ramp``, relay.loadgen_ramp runs one a step, under a tqdm
bar), and the report (text, or JSON with ``--json``) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from relay.loadgen import LoadTestFailed, run
from relay.loadgen_config import HARD_CAP_PACKETS, MAX_SIZE_BYTES, MIN_SIZE_BYTES, ConfigError, LoadConfig
from relay.loadgen_plot import plot_ramp
from relay.loadgen_ramp import (
    MAX_REFINE,
    MAX_STEPS,
    STEP_HEADER,
    RampConfig,
    RampStep,
    format_ramp,
    ramp_report,
    run_ramp,
    step_line,
)
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
    parser.add_argument("--rate", type=float, metavar="PPS",
                        help=f"packets per second per client (default {LoadConfig.rate:g}; not with --ramp)")
    parser.add_argument("--seconds", type=float, metavar="S",
                        help=f"how long to send (default {LoadConfig.seconds:g}; not with --ramp, see --step-seconds)")
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
    ramp = parser.add_argument_group("ramp", "step the offered load up to find the highest rate that holds")
    ramp.add_argument("--ramp", action="store_true",
                      help="step the offered rate up until loss or p99 RTT passes its bound; report the highest "
                           "rate that held")
    ramp.add_argument("--ramp-start", type=float, default=RampConfig.start_pps, metavar="PPS",
                      help="offered packets/s of the first step, over all clients (default %(default)g)")
    ramp.add_argument("--ramp-factor", type=float, default=RampConfig.factor, metavar="F",
                      help="each step offers F times the previous one (default %(default)g)")
    ramp.add_argument("--ramp-max", type=float, default=RampConfig.max_pps, metavar="PPS",
                      help="never offer more than this, over all clients (default %(default)g)")
    ramp.add_argument("--ramp-steps", type=int, default=RampConfig.steps, metavar="N",
                      help=f"at most N climbing steps, 1-{MAX_STEPS} (default %(default)s)")
    ramp.add_argument("--ramp-refine", type=int, default=RampConfig.refine, metavar="N",
                      help=f"then N steps bisecting between the last held and first failed rate, 0-{MAX_REFINE} "
                           "(default %(default)s)")
    ramp.add_argument("--step-seconds", type=float, default=RampConfig.step_seconds, metavar="S",
                      help="how long each step sends (default %(default)g)")
    ramp.add_argument("--max-loss", type=float, default=RampConfig.max_loss_percent, metavar="PERCENT",
                      help="a step fails above this round-trip loss (default %(default)g)")
    ramp.add_argument("--max-p99-ms", type=float, metavar="MS",
                      help="a step fails above this p99 round-trip time (default: no bound)")
    ramp.add_argument("--plot", metavar="FILE",
                      help="write throughput and RTT against offered load as an SVG (drawn with matplotlib)")


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
    if args.ramp and (args.rate is not None or args.seconds is not None):
        raise ConfigError("--rate and --seconds do not apply to --ramp (see --ramp-start and --step-seconds)")
    if args.plot and not args.ramp:
        raise ConfigError("--plot draws a ramp: add --ramp")
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
        rate=LoadConfig.rate if args.rate is None else args.rate,
        seconds=LoadConfig.seconds if args.seconds is None else args.seconds,
        peer_ip=args.peer_ip,
        tls_verify=not args.tls_insecure,
        tls_ca_file=args.tls_ca,
        tls_hostname=args.tls_hostname,
        tick_seconds=None if args.tick_ms is None else args.tick_ms / 1000,
        setup_timeout_seconds=args.setup_timeout,
        drain_seconds=args.drain,
        max_packets=args.max_packets,
    ).validate()


def ramp_from_args(args: argparse.Namespace, clients: int) -> RampConfig:
    """Build and validate the RampConfig; ConfigError for bad input."""
    return RampConfig(
        start_pps=args.ramp_start,
        factor=args.ramp_factor,
        max_pps=args.ramp_max,
        steps=args.ramp_steps,
        refine=args.ramp_refine,
        step_seconds=args.step_seconds,
        max_loss_percent=args.max_loss,
        max_p99_ms=args.max_p99_ms,
    ).validate(clients)


def run_command(args: argparse.Namespace) -> int:
    """``txrendezvous load-test``: 0 when packets came back, 1 when the run failed, 2 for bad input.

    With --ramp: 0 when a step held, 1 when none did or the run failed.
    """
    try:
        config = config_from_args(args)
        ramp = ramp_from_args(args, config.clients) if args.ramp else None
    except ConfigError as e:
        sys.stderr.write(f"txrendezvous load-test: error: {e}\n")
        return 2
    if config.tls_ca_file and not os.path.isfile(config.tls_ca_file):
        sys.stderr.write(f"txrendezvous load-test: error: --tls-ca {config.tls_ca_file}: no such file\n")
        return 2
    if ramp is not None:
        return _run_ramp(args, config, ramp)

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


class RampProgress:
    """A tqdm bar over the ramp's steps on stderr: the step's offered rate, then its live rates
    as a postfix; each finished step is printed above the bar as a row of the step table."""

    def __init__(self, ramp: RampConfig, file: Any = None, enabled: bool | None = None) -> None:
        from tqdm import tqdm

        self.file = sys.stderr if file is None else file
        self.tqdm = tqdm
        enabled = self.file.isatty() if enabled is None else enabled
        self.bar = tqdm(total=ramp.steps + ramp.refine, desc="ramp", unit="step", file=self.file,
                        disable=not enabled, dynamic_ncols=True, leave=False)
        self.tqdm.write(STEP_HEADER, file=self.file)

    def step_started(self, index: int, offered_pps: float) -> None:
        self.bar.set_description(f"step {index + 1}: {offered_pps:,.0f} pkt/s offered")

    def rates(self, line: str) -> None:
        self.bar.set_postfix_str(line)

    def step_done(self, step: RampStep) -> None:
        self.tqdm.write(step_line(step), file=self.file)
        self.bar.update(1)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _run_ramp(args: argparse.Namespace, config: LoadConfig, ramp: RampConfig) -> int:
    sys.stderr.write(f"ramping {config.clients} client(s) on {config.server[0]}:{config.server[1]} over "
                     f"{config.transport}: from {ramp.start_pps:,.0f} pkt/s, x{ramp.factor:g} a step, "
                     f"{ramp.step_seconds:g} s each, until loss > {ramp.max_loss_percent:g} %"
                     + ("" if ramp.max_p99_ms is None else f" or p99 > {ramp.max_p99_ms:g} ms") + "\n")
    progress = RampProgress(ramp)
    try:
        result = run_ramp(config, ramp, progress.step_started, progress.step_done, progress.rates)
    except LoadTestFailed as e:
        sys.stderr.write(f"txrendezvous load-test: error: {e}\n")
        return 1
    finally:
        progress.close()
    report = ramp_report(config, ramp, result)
    if args.plot:
        try:
            plot_ramp(report, args.plot)
        except OSError as e:
            sys.stderr.write(f"txrendezvous load-test: error: --plot {args.plot}: {e.strerror or e}\n")
            return 1
        sys.stderr.write(f"plot written to {args.plot}\n")
    sys.stdout.write((json.dumps(report, indent=2) if args.json else format_ramp(report)) + "\n")
    if report["held"] is None:
        sys.stderr.write(f"txrendezvous load-test: error: no step held ({result.reason})\n")
        return 1
    return 0
