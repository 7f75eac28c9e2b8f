"""The NAT traversal success matrix: every pair of NAT-lab kinds x each technique alone (root).

    sudo .venv/bin/python bench/traversal_matrix.py [--kinds K1,K2,...] [--techniques udp,tcp,relay,auto]
                                                    [--with K1,K2,...]

Builds one NAT lab (tests/natlab/lab.py: two sites per kind, a super node
with TURN and the firewall ports) and, for each unordered pair of kinds,
runs a listener behind the second and a connector behind the first
(tests/natlab/connect_client.py) once per technique:

    udp    direct UDP only (host, srflx, UPnP, predicted, birthday)
    tcp    TCP hole punching only (full-TTL simultaneous open)
    relay  TURN only (UDP, then TCP, then TLS on 443)
    auto   everything, as connect() does by default: the path that wins

Prints a Markdown table: the path each try took and the connector's time
from the start instant to selection (ms), or "-" when it failed. The IPv6
kinds (IPV6_KINDS: a dual-stack home behind an IPv6 stateful firewall or
NPTv6, DS-Lite, an IPv6-only access with NAT64, with or without a CLAT; the
node then runs dual-stack) are not in the default list;
``--with`` keeps only the pairs that have one of the kinds it names.

With ``--times`` it runs each pair with everything on (sessions, relay
first) and prints issue 13's times instead (lab machines share one clock):

    (a)  connect() on a client logged in SETTLE_SECONDS before -> the first application byte at the peer
    (b)  the connecting process started (Python, imports, login, then connect at once) -> that first byte
         (a second run of the pair)
    (c)  that first byte -> the session runs direct ("-": it stays on the relay, 0: it began direct)

with the path the session began on and the one it ended on.
"""

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.natlab.connect_client import add_buddies, run_pair, user  # noqa: E402
from tests.natlab.lab import Lab, unavailable_reason  # noqa: E402
from tests.natlab.transition import SERVER_ALT_IP6, SERVER_IP6  # noqa: E402

KINDS = ("eim-eif", "eim-adf", "eim-apdf", "apdm-random", "udp-blocked", "tcp-web-only", "eim-apdf+upnp")
IPV6_KINDS = ("eim-apdf+ipv6-firewall", "eim-apdf+ipv6-nptv6", "ds-lite", "464xlat", "nat64")
SETTLE_SECONDS = 2.0  # --times: the connector is logged in this long before it connects
TECHNIQUES = {
    "udp": ("direct=udp", "relay="),
    "tcp": ("direct=tcp", "relay="),
    "relay": ("direct=", "relay=udp,tcp,tls"),
    "auto": (),
}


def outcome(mine: dict) -> str:
    """ "path ms" for a success (the selected attempt's time, the pong received), else "-"."""
    if "error" in mine or not mine.get("pong"):
        return "-"
    selected = [a for a in mine.get("attempts", []) if a[2] == "selected"]
    return f"{mine['path']} {selected[-1][1]:.0f}" if selected else mine["path"]


def times(settled: tuple[dict, dict], cold: tuple[dict, dict]) -> str:
    """The first and final path and (a), (c) from the settled run, (b) from the cold one, in ms."""
    (mine, theirs), (cold_mine, cold_theirs) = settled, cold
    if "error" in mine or not mine.get("pong") or "pinged_at" not in theirs:
        return "- | - | - | - | -"
    first_byte = theirs["pinged_at"]
    a = f"{(first_byte - mine['connect_at']) * 1000:.0f}"
    b = "-"
    if cold_mine.get("pong") and "pinged_at" in cold_theirs:
        b = f"{(cold_theirs['pinged_at'] - cold_mine['started_at']) * 1000:.0f}"
    if mine["first_path"] == mine["path"] or not mine.get("direct_at"):
        c = "0" if not mine["first_path"].startswith("turn-") else "-"
    else:
        c = f"{max(0.0, mine['direct_at'] - first_byte) * 1000:.0f}"
    return f"{mine['first_path']} | {mine['path']} | {a} | {b} | {c}"


def add_site(lab: Lab, kind: str):
    """A site of a kind of KINDS (but +upnp) or IPV6_KINDS."""
    if "+ipv6-" in kind:
        return lab.add_site(kind.split("+")[0], ipv6=kind.split("+ipv6-")[1])
    return lab.add_site(kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    parser.add_argument("--times", action="store_true", help="issue 13's times (a), (b), (c) per pair instead")
    parser.add_argument("--with", dest="with_kinds", default="", help="only pairs with one of these kinds")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    with_kinds = {k for k in args.with_kinds.split(",") if k}
    techniques = [t for t in args.techniques.split(",") if t]
    known = KINDS + IPV6_KINDS
    unknown = [k for k in kinds + sorted(with_kinds) if k not in known] + [t for t in techniques if t not in TECHNIQUES]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    lab = Lab(Path(tempfile.mkdtemp(prefix="traversal-matrix-")))
    try:
        lab.build_public()
        ipv6 = bool(set(kinds) & set(IPV6_KINDS))
        if ipv6:
            lab.start_dns_root()  # ipv4only.arpa, for the NAT64 sites' DNS64
        plain = [k for k in kinds if not k.endswith("+upnp")]
        sites = {kind: (add_site(lab, kind), add_site(lab, kind)) for kind in plain}
        upnp = [k for k in kinds if k.endswith("+upnp")]
        names = [user(site) for pair in sites.values() for site in pair]
        names += [f"{k}-{i}".replace("+", "-") for k in upnp for i in (1, 2)]
        add_buddies(lab, names)
        # With IPv6 kinds the node is dual-stack (RFC 5780 and dual relay allocations in both families).
        lab.start_server(*(("--ip", SERVER_IP6, "--alt-ip", SERVER_ALT_IP6, "--allow-peer", "2001:db8::/32")
                           if ipv6 else ()), relay=True, web_ports=True)
        for kind in upnp:  # miniupnpd asks the node for its address: after start_server
            pair = tuple(lab.add_site(kind.split("+")[0], upnp=True) for _ in range(2))
            for i, site in enumerate(pair, 1):
                site.name = f"{kind}-{i}"
            sites[kind] = pair
        if args.times:
            print("| caller | callee | began on | ended on | (a) ms | (b) ms | (c) ms |")
            print("|---|---|---|---|---|---|---|")
        else:
            print(f"| caller | callee | {' | '.join(techniques)} |")
            print("|---|---|" + "---|" * len(techniques))
        started = time.monotonic()
        pairs = [(a, b) for a, b in itertools.combinations_with_replacement(kinds, 2)
                 if not with_kinds or {a, b} & with_kinds]
        for a, b in pairs:
            if args.times:
                cells = [times(run_pair(sites[a][0], sites[b][1], f"settle={SETTLE_SECONDS:g}"),
                               run_pair(sites[a][0], sites[b][1]))]
            else:
                cells = [outcome(run_pair(sites[a][0], sites[b][1], *TECHNIQUES[t])[0]) for t in techniques]
            print(f"| {a} | {b} | {' | '.join(cells)} |", flush=True)
        print(f"\n{time.monotonic() - started:.0f} s for {len(pairs)} pairs x "
              f"{len(techniques)} techniques")
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
