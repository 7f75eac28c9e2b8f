"""``txrendezvous``: the suite's one console script, a subcommand per tool.

    txrendezvous load-test --server HOST:PORT --user NAME:PASS ...

Each subcommand lives in its own module, named here as a string and imported
only when that subcommand runs (``txrendezvous --help`` imports none of
them). A subcommand module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run_command(args: argparse.Namespace) -> int    # the exit status

To add a tool, add one ``Subcommand`` line to SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

PROG = "txrendezvous"


@dataclass(frozen=True)
class Subcommand:
    """A subcommand: its name, a one-line help and the module that implements it."""

    name: str
    module: str
    help: str
    description: str = ""


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "accounts",
        "rendezvous.cli.accounts",
        "add, remove and list users of a super node's account store, reset a password",
    ),
    Subcommand(
        "nat-check",
        "rendezvous.cli.nat_check",
        "analyse the NAT between this host and an RFC 5780 STUN server (mapping, filtering, ports, "
        "hairpinning, binding lifetime)",
    ),
    Subcommand("buddies", "rendezvous.cli.buddies",
               "ask for, accept, remove and list buddies (only buddies may connect to each other)"),
    Subcommand("listen", "rendezvous.cli.connect",
               "log in, wait for a buddy's session, relay stdin/stdout over it (connect() by hand)"),
    Subcommand("connect", "rendezvous.cli.connect",
               "open a session to a buddy by the best path, print it and the attempts, relay stdin/stdout"),
    Subcommand("send", "rendezvous.cli.transfer",
               "send a file to a buddy over an encrypted session (size and SHA-256 checked, progress shown)"),
    Subcommand("receive", "rendezvous.cli.transfer",
               "wait for a buddy's file and save it, verified, without overwriting unless --force"),
    Subcommand("upnp", "rendezvous.cli.upnp", "map, list and unmap ports on the LAN's UPnP gateway (IGD)"),
    Subcommand("status", "rendezvous.cli.status",
               "list a running node's allocations and signaling sessions, end one (its admin API)"),
    Subcommand(
        "load-test",
        "rendezvous.cli.load_test",
        "drive packets through a TURN relay and report throughput, loss and RTT",
        "Start N TURN clients, each with an allocation and a local echoing peer, send "
        "ChannelData or Send indications at a fixed rate through the relay and back, and "
        "report packets/s, Mbit/s, loss and round-trip percentiles. Works against any TURN "
        "server (RFC 8656). Progress goes to stderr once a second, the report to stdout.",
    ),
    Subcommand("probe-relay", "rendezvous.cli.probe_relay",
               "security self-test of a TURN relay: internal peers, its own ports, auth, amplification, quota"),
)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in argv gets its module imported."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools of the txrendezvous NAT traversal suite.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(argv)
    for sub in SUBCOMMANDS:
        subparser = subparsers.add_parser(sub.name, help=sub.help, description=sub.description or sub.help)
        if sub.name == chosen:
            module = importlib.import_module(sub.module)
            module.add_arguments(subparser)
            subparser.set_defaults(run_command=module.run_command)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    """The first argument naming a subcommand (top-level options take no values)."""
    names = {sub.name for sub in SUBCOMMANDS}
    for arg in argv:
        if arg in names:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run_command(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
