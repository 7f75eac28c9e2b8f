"""``txrendezvous upnp``: ask the LAN's gateway for port mappings by hand.

    txrendezvous upnp status                      # gateway, LAN and external address
    txrendezvous upnp map 40000 [--protocol tcp] [--external-port 40000] [--lease-seconds 0]
    txrendezvous upnp list
    txrendezvous upnp unmap 40000 [--protocol tcp]
    txrendezvous upnp --method pcp map 40000      # PCP; natpmp, auto (PCP, NAT-PMP, UPnP) too

``--method`` picks UPnP IGD (the default), NAT-PMP, PCP or auto. A PCP
mapping belongs to its nonce: ``map`` prints it and ``unmap`` needs it
(``--nonce``); NAT-PMP unmaps by internal port.

Exit status: 0 done, 1 other failure, 2 no gateway answered, 3 the gateway
refused (its UPnP, NAT-PMP or PCP error code and text are printed).
"""

from __future__ import annotations

import argparse
import sys

PROG = "txrendezvous upnp"
EXIT_ERROR = 1
EXIT_NO_GATEWAY = 2
EXIT_REFUSED = 3


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 1-65535")
    return port


def _nonce(text: str) -> bytes:
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        nonce = b""
    if len(nonce) != 12:
        raise argparse.ArgumentTypeError("a PCP nonce is 24 hex digits")
    return nonce


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout-seconds", type=float, default=2.0,
                        help="how long discovery waits for the gateway (default: %(default)s)")
    parser.add_argument("--method", choices=("upnp", "natpmp", "pcp", "auto"), default="upnp",
                        help="UPnP IGD, NAT-PMP (RFC 6886), PCP (RFC 6887), or auto: PCP, then NAT-PMP, "
                             "then UPnP (default: %(default)s)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("status", help="show the gateway, this host's LAN address and the external address")
    mapper = actions.add_parser("map", help="map an external port to a port of this host")
    mapper.add_argument("port", type=_port, help="the internal port (of this host)")
    mapper.add_argument("--external-port", type=_port, help="the external port (default: the same)")
    mapper.add_argument("--internal-host", help="the internal address (default: this host's LAN address)")
    mapper.add_argument("--lease-seconds", type=int, default=0,
                        help="lease; 0 asks for a permanent mapping, which the gateway may cap (default: 0)")
    mapper.add_argument("--description", default="txrendezvous", help="the mapping's description")
    actions.add_parser("list", help="list every mapping on the gateway")
    unmapper = actions.add_parser("unmap", help="delete a mapping")
    unmapper.add_argument("port", type=_port, help="the external port")
    unmapper.add_argument("--nonce", type=_nonce, help="PCP: the mapping's nonce (hex, printed by map)")
    unmapper.add_argument("--internal-port", type=_port, help="PCP/NAT-PMP: the internal port (default: PORT)")
    for sub in (mapper, unmapper):
        sub.add_argument("--protocol", type=str.upper, choices=("UDP", "TCP"), default="UDP",
                         help="UDP or TCP (default: %(default)s)")


async def _act(reactor, args: argparse.Namespace) -> list[str]:
    from upnp_helper import PcpGateway, discover_gateway

    gateway = await discover_gateway(reactor, timeout_seconds=args.timeout_seconds, method=args.method)
    try:
        if args.action == "status":
            external = await gateway.external_address()
            return [f"gateway\t{gateway.control_url}", f"lan_address\t{gateway.lan_address}",
                    f"external_address\t{external}"]
        if args.action == "map":
            external = await gateway.external_address()
            mapping = await gateway.add_mapping(args.external_port or args.port, args.protocol, args.port,
                                                internal_host=args.internal_host, description=args.description,
                                                lease_seconds=args.lease_seconds)
            lease = "permanent" if not mapping.lease_seconds else f"lease {mapping.lease_seconds} s"
            line = (f"mapped {mapping.protocol} {external}:{mapping.external_port} -> "
                    f"{mapping.internal_host}:{mapping.internal_port} ({lease})")
            if isinstance(gateway, PcpGateway):
                line += f" nonce {gateway.nonce_of[(mapping.protocol, mapping.external_port)][0].hex()}"
            return [line]
        if args.action == "unmap":
            if isinstance(gateway, PcpGateway):
                if args.nonce is None:
                    raise ValueError("PCP unmap needs --nonce (printed by map)")
                await gateway.delete_mapping(args.port, args.protocol, nonce=args.nonce,
                                             internal_port=args.internal_port)
            elif args.internal_port is not None:
                await gateway.delete_mapping(args.internal_port, args.protocol)
            else:
                await gateway.delete_mapping(args.port, args.protocol)
            return [f"unmapped {args.protocol} {args.port}"]
        lines = []
        for m in await gateway.list_mappings():
            lines.append(f"{m.protocol}\t{m.external_port}\t{m.internal_host}:{m.internal_port}\t"
                         f"{m.lease_seconds}\t{m.description}")
        return lines
    finally:
        gateway.close()


def run_command(args: argparse.Namespace) -> int:
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    from upnp_helper import MappingRefused, NoGateway, UpnpError

    if getattr(args, "lease_seconds", 0) < 0:
        print(f"{PROG}: --lease-seconds must be >= 0", file=sys.stderr)
        return EXIT_ERROR
    outcome: dict = {}

    async def main(reactor) -> None:
        try:
            outcome["lines"] = await _act(reactor, args)
        except (UpnpError, ValueError) as e:
            outcome["error"] = e

    try:
        task.react(lambda r: Deferred.fromCoroutine(main(r)))
    except SystemExit as e:  # react always exits; an unexpected failure has been logged
        if not outcome:
            return int(e.code or EXIT_ERROR)
    error = outcome.get("error")
    if isinstance(error, NoGateway):
        print(f"{PROG}: {error} (is UPnP enabled on the router?)", file=sys.stderr)
        return EXIT_NO_GATEWAY
    if isinstance(error, MappingRefused):
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    if error is not None:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_ERROR
    for line in outcome["lines"]:
        print(line)
    return 0

