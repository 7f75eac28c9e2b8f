"""``txrendezvous nat-check``: what kind of NAT is between here and a STUN server.

    txrendezvous nat-check stun.example.org
    txrendezvous nat-check 198.51.100.1:3478 --json --lifetime-max-seconds 30 --no-tcp
    txrendezvous nat-check 198.51.100.1 --ipv6-server [2001:db8::1]:3478
    txrendezvous nat-check stun.example.org --submit --router AVM --isp "Example Telecom"

Progress goes to stderr while the tests run; the report (text, or JSON with
``--json``) to stdout: IPv4, IPv6 and the IPv6 transition. Exit status
(from the IPv4 tests, or the IPv6 ones when IPv4 was not tested): 0 when
the check ran, 2 when the server did not answer at all, 3 when it answered
but lacks RFC 5780 (the report then holds what could be determined), 4 when
``--submit`` failed (the report is still printed), 1 for a bad argument.

``--submit [NODE]`` sends the report, with the optional form fields, to a
node's field test (docs/NAT_CHECK.md, the field test) and prints the permanent link it gets back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rendezvous.peer import nat_memory
from rendezvous.peer.nat_check import DEFAULT_ECHO_PORT, DEFAULT_TCP_FALLBACK_PORT, NatCheckError, check
from rendezvous.peer.results_client import SubmitError, submit, submit_url
from rendezvous.peer.trust import default_state_dir
from rendezvous.wire.results import FORM_FIELDS, check_form, nat_check_submission

PROG = "txrendezvous nat-check"
DEFAULT_PORT = 3478
EXIT_NO_ANSWER = 2
EXIT_NO_RFC5780 = 3
EXIT_NOT_SUBMITTED = 4
FORM_HELP = {"router": "your router's brand", "model": "its model", "firmware": "its firmware version",
             "isp": "your Internet provider", "connection": "the kind of connection (DSL, cable, fibre, mobile...)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", metavar="SERVER[:PORT]",
                        help=f"an RFC 5780 STUN server, such as a super node (port {DEFAULT_PORT} by default)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--ipv6-server", metavar="[ADDRESS]:PORT",
                        help="the server's IPv6 address (default: the AAAA record of SERVER when it is a name)")
    parser.add_argument("--no-dns64", action="store_true",
                        help="do not ask the DNS resolver for ipv4only.arpa (NAT64 discovery, RFC 7050)")
    parser.add_argument("--lifetime-max-seconds", type=float, default=120.0, metavar="N",
                        help="longest the UDP binding lifetime search may take; 0 skips it (default: %(default)g)")
    parser.add_argument("--no-tcp", action="store_true", help="skip the TCP mapping test")
    parser.add_argument("--tcp-fallback-port", type=int, default=DEFAULT_TCP_FALLBACK_PORT, metavar="PORT",
                        help="TCP port tried when the server's port does not answer over TCP (a super node's "
                             "firewall port); 0 skips it (default: %(default)s)")
    parser.add_argument("--echo-port", type=int, default=DEFAULT_ECHO_PORT, metavar="PORT",
                        help="the server's echo service (UDP+TCP) for ALG detection; 0 skips it "
                             "(default: %(default)s)")
    parser.add_argument("--no-upnp", action="store_true", help="do not ask the LAN's gateway for port mapping")
    parser.add_argument("--upnp-timeout-seconds", type=float, default=2.0, metavar="S",
                        help="how long port-mapping discovery waits for the gateway (default: %(default)g)")
    parser.add_argument("--rto-seconds", type=float, default=0.2, metavar="S",
                        help="first STUN retransmission timeout; a lost answer counts after 15 x S "
                             "(default: %(default)g)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="where the report is kept for connect()'s outcome reports (default: "
                             "$XDG_STATE_HOME/txrendezvous or ~/.local/state/txrendezvous)")
    parser.add_argument("--submit", nargs="?", const="", default=None, metavar="NODE",
                        help="send the report to a node's field test (HOST[:PORT] over HTTPS, or an http(s) URL; "
                             "default: the SERVER's host on 443) and print its permanent link")
    for name in FORM_FIELDS:
        parser.add_argument(f"--{name}", metavar="TEXT", help=f"with --submit: {FORM_HELP[name]}")
    parser.add_argument("--insecure", action="store_true",
                        help="with --submit: accept a self-signed node certificate (development nodes only)")
    parser.add_argument("--ca-file", metavar="PEM", help="with --submit: trust this CA or self-signed certificate")


def parse_server(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPv6]:PORT -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    number = int(port) if port else DEFAULT_PORT
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    return host, number


def run_command(args: argparse.Namespace) -> int:
    try:
        server = parse_server(args.server)
        ipv6_server = parse_server(args.ipv6_server) if args.ipv6_server else None
        if ipv6_server is not None and ":" not in ipv6_server[0]:
            raise ValueError(f"--ipv6-server wants an IPv6 address, not {ipv6_server[0]!r}")
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if args.lifetime_max_seconds < 0 or args.rto_seconds <= 0:
        print(f"{PROG}: --lifetime-max-seconds must be >= 0 and --rto-seconds > 0", file=sys.stderr)
        return 1
    if args.upnp_timeout_seconds <= 0:
        print(f"{PROG}: --upnp-timeout-seconds must be > 0", file=sys.stderr)
        return 1
    if not 0 <= args.tcp_fallback_port < 65536 or not 0 <= args.echo_port < 65536:
        print(f"{PROG}: --tcp-fallback-port and --echo-port must be 0-65535", file=sys.stderr)
        return 1
    try:
        url = None if args.submit is None else submit_url(args.submit or server[0])
        form = {name: getattr(args, name) for name in FORM_FIELDS if getattr(args, name)}
        check_form(form)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1

    from twisted.internet import task
    from twisted.internet.defer import Deferred

    def progress(line: str) -> None:
        sys.stderr.write(f"{PROG}: {line}\n")
        sys.stderr.flush()

    outcome: dict = {}

    async def main(reactor) -> None:
        try:
            outcome["report"] = await check(
                reactor, server, lifetime_max_seconds=args.lifetime_max_seconds, tcp=not args.no_tcp,
                rto_seconds=args.rto_seconds, progress=progress, tcp_fallback_port=args.tcp_fallback_port or None,
                upnp_timeout_seconds=None if args.no_upnp else args.upnp_timeout_seconds,
                echo_port=args.echo_port or None, ipv6_server=ipv6_server, dns64=False if args.no_dns64 else None)
        except NatCheckError as e:
            outcome["error"] = str(e)
            return
        if outcome["report"].server_answered:
            nat_memory.save(args.state_dir or default_state_dir(), outcome["report"].to_dict(), reactor.seconds())
        if url is not None and outcome["report"].server_answered:
            progress(f"submitting the report to {url}")
            try:
                outcome["submitted"] = await submit(reactor, url, nat_check_submission(outcome["report"].to_dict(),
                                                                                       form),
                                                    verify=not args.insecure, ca_file=args.ca_file)
            except SubmitError as e:
                outcome["submit_error"] = str(e)

    try:
        task.react(lambda r: Deferred.fromCoroutine(main(r)))
    except SystemExit as e:  # react always exits; a failure has been logged
        if "report" not in outcome and "error" not in outcome:
            return int(e.code or 1)
    return _finish(outcome, args)


def _finish(outcome: dict, args: argparse.Namespace) -> int:
    if "error" in outcome:
        print(f"{PROG}: {outcome['error']}", file=sys.stderr)
        return 1
    full, submitted = outcome["report"], outcome.get("submitted")
    if args.json:
        document = full.to_dict()
        if submitted:
            document["submission"] = {"id": submitted["id"], "link": submitted["link"]}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(full.to_text() + (f"  {'Permanent link:':<22}{submitted['link']}\n" if submitted else ""))
    sys.stdout.flush()
    if "submit_error" in outcome:
        print(f"{PROG}: not submitted: {outcome['submit_error']}", file=sys.stderr)
        return EXIT_NOT_SUBMITTED
    tested_ipv6 = full.ipv6 is not None and full.ipv6.server_answered
    report = full.ipv6 if not full.server_answered and tested_ipv6 else full
    if not report.server_answered:
        print(f"{PROG}: no answer from {report.server or args.server}"
              + (" over UDP (TCP not tried)" if args.no_tcp else " over UDP or TCP"), file=sys.stderr)
        return EXIT_NO_ANSWER
    if report.rfc5780 is False:
        print(f"{PROG}: {report.server} does not support RFC 5780 (no alternate address); "
              "mapping and filtering are unknown", file=sys.stderr)
        return EXIT_NO_RFC5780
    return 0

