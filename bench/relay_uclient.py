#!/usr/bin/env python3
"""Benchmark: the relay's CPU per relayed packet with coturn's own client, ours beside coturn.

Not a test. The issue asks that the relay be measured with coturn's
``turnutils_uclient`` too, not only with our load generator
(``relay_throughput.py``). For ``--rounds`` rounds, each payload size in
``--sizes`` and each mode in ``--modes`` (``channel``: ChannelData,
``send``: Send and Data indications, uclient's ``-s``), every server in
``--servers`` (default ours and coturn ``--relay-threads 1``, in an order
that alternates from round to round) is started fresh under
``taskset -c 0``, with ``turnutils_peer`` (the echo peer) and
``turnutils_uclient`` under ``taskset -c 1``:

    turnutils_uclient -n MESSAGES -m CLIENTS -l SIZE -z INTERVAL -c [-s] -e 127.0.0.1 -r PEER_PORT ...

``--processes`` such clients run at once (one uclient paces at most about
6,500 messages/s here, whatever its ``-z``). Each of their ``--clients``
allocations sends ``--messages`` messages, one every ``--interval`` ms at
most, and the peer echoes each back: every message is relayed twice. The server's user+system CPU time (``/proc/PID/stat``, all threads)
over the client's run, divided by the relayed packets (twice the messages
uclient got back), is its CPU per relayed packet. The setup of the
allocations is inside that window: a few milliseconds of a run of several
seconds. uclient's and the peer's CPU shares are printed, to show they are
not the limit.

Every run is bounded by uclient's message count and a timeout; each
process started here is stopped by its id. Loopback only. Needs coturn's
client tools (Debian package coturn).

    .venv/bin/python bench/relay_uclient.py --rounds 3
"""

import argparse
import json
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import coturn_version, cpu_seconds, free_port, stop, tree_cpu_split
from relay_throughput import IP, LOAD_CPU, PASSWORD, SERVER_LABELS, USER, start_server

TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.M)
LOST = re.compile(r"Total lost packets (\d+)")
RTT = re.compile(r"Average round trip delay ([\d.]+) ms")


def run_uclients(server, peer_port: int, args, size: int, mode: str) -> dict:
    """--processes uclient runs at once against server: messages sent and received, loss, RTT, and the CPU of
    the server and of the clients."""
    def command(index: int) -> list[str]:
        # Each process from an address of its own: ours limits 401 answers per source (100 at once, 20/s after).
        return ["taskset", "-c", LOAD_CPU, "turnutils_uclient", "-n", str(args.messages), "-m", str(args.clients),
                "-l", str(size), "-z", str(args.interval), "-c", *(["-s"] if mode == "send" else []),
                "-L", f"127.0.0.{2 + index}", "-e", IP, "-r", str(peer_port), "-p", str(server.address[1]),
                "-u", USER, "-w", PASSWORD, IP]
    timeout = args.messages * args.interval / 1000 * 20 + 60
    before, started = sum(tree_cpu_split(server.process.pid)), time.monotonic()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = [subprocess.Popen(command(index), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for index in range(args.processes)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, started + timeout - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            stop(process)
        return {"error": f"uclient timed out after {timeout:g} s", "command": command(0)}
    wall = time.monotonic() - started
    server_cpu = sum(tree_cpu_split(server.process.pid)) - before
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # the uclients are the children that ended meanwhile
    client_cpu = waited.ru_utime + waited.ru_stime - children.ru_utime - children.ru_stime
    sent = received = lost = 0
    rtts = []
    for process, output in zip(processes, outputs):
        totals = TOTALS.findall(output)
        if process.returncode != 0 or not totals:
            return {"error": f"uclient exit {process.returncode}: {output[-300:]!r}", "command": command(0)}
        sent, received = sent + int(totals[-1][0]), received + int(totals[-1][1])
        lost += int(LOST.search(output).group(1)) if LOST.search(output) else 0
        rtts += [float(RTT.search(output).group(1))] if RTT.search(output) else []
    return {"command": command(0), "processes": args.processes, "sent": sent, "received": received, "seconds": wall,
            "lost": lost, "rtt_ms": statistics.mean(rtts) if rtts else None, "server_cpu_seconds": server_cpu,
            "server_us_per_packet": 1e6 * server_cpu / max(1, 2 * received), "relayed_pps": 2 * received / wall,
            "client_cpu_seconds": client_cpu}


def measure(kind: str, workdir: Path, args, size: int, mode: str) -> dict:
    server = start_server(kind, workdir, args.relay_ports)
    peer_port = free_port((IP,))
    peer = subprocess.Popen(["taskset", "-c", LOAD_CPU, "turnutils_peer", "-L", IP, "-p", str(peer_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        peer_before = cpu_seconds(peer.pid)
        result = run_uclients(server, peer_port, args, size, mode)
        result["peer_cpu_seconds"] = cpu_seconds(peer.pid) - peer_before
        return result
    finally:
        stop(peer)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every server (default 3)")
    parser.add_argument("--sizes", default="100,1000", help="payload bytes, comma list (default 100,1000)")
    parser.add_argument("--modes", default="channel,send", help="channel, send or both (default both)")
    parser.add_argument("--clients", type=int, default=50, help="uclient's allocations, -m (default 50)")
    parser.add_argument("--interval", type=int, default=2, help="ms between one client's messages, -z (default 2)")
    parser.add_argument("--messages", type=int, default=600, help="messages per client, -n (default 600)")
    parser.add_argument("--processes", type=int, default=4,
                        help="uclient processes at once, each with --clients (default 4: one paces about 6,500 "
                             "messages/s at most)")
    parser.add_argument("--servers", default="ours,coturn1", help="comma list of ours, coturn1, coturn")
    parser.add_argument("--relay-ports", type=lambda text: tuple(map(int, text.split("-"))), default=(46000, 46999),
                        help="relay port range LOW-HIGH (default 46000-46999)")
    parser.add_argument("--json-out", type=Path, help="also write every run to this JSON file")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.clients <= 500 or not 1 <= args.interval <= 1000 \
            or not 1 <= args.messages <= 1_000_000 or not 1 <= args.processes <= 16:
        parser.error("--rounds 1-20, --clients 1-500, --interval 1-1000, --messages 1-1000000, --processes 1-16")
    for tool in ("turnutils_uclient", "turnutils_peer"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (Debian package coturn)")
    servers, sizes, modes = args.servers.split(","), [int(s) for s in args.sizes.split(",")], args.modes.split(",")

    print(f"Benchmark: `{shlex.join([sys.executable] + sys.argv)}`; coturn {coturn_version()}; "
          f"load average at start {' '.join(open('/proc/loadavg').read().split()[:3])}\n")
    runs = []
    with tempfile.TemporaryDirectory(prefix="relay-uclient-") as tmp:
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for mode in modes:
                for size in sizes:
                    for kind in order:
                        workdir = Path(tmp) / f"{round_index}-{mode}-{size}-{kind}"
                        result = measure(kind, workdir, args, size, mode)
                        runs.append({"round": round_index + 1, "server": kind, "mode": mode, "size": size, **result})
                        if "error" in result:
                            print(f"{kind} {mode} {size} B: {result['error']}", file=sys.stderr)
            print(f"round {round_index + 1} done", file=sys.stderr)

    print("| server | mode | size | round | relayed pkt/s | lost | RTT ms | server CPU µs/packet | "
          "uclient CPU % | peer CPU % |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        if "error" not in r:
            rtt = "" if r["rtt_ms"] is None else f"{r['rtt_ms']:.3f}"
            print(f"| {SERVER_LABELS[r['server']]} | {r['mode']} | {r['size']} | {r['round']} | "
                  f"{r['relayed_pps']:,.0f} | {r['lost']} | {rtt} | {r['server_us_per_packet']:.2f} | "
                  f"{100 * r['client_cpu_seconds'] / r['seconds']:.0f} | "
                  f"{100 * r['peer_cpu_seconds'] / r['seconds']:.0f} |")
    if {"ours", "coturn1"} <= set(servers):
        print()
        for mode in modes:
            for size in sizes:
                ratios = []
                for round_index in range(1, args.rounds + 1):
                    cost = {r["server"]: r.get("server_us_per_packet") for r in runs
                            if (r["round"], r["mode"], r["size"]) == (round_index, mode, size)}
                    if cost.get("ours") and cost.get("coturn1"):
                        ratios.append(cost["coturn1"] / cost["ours"])
                if ratios:
                    print(f"- {mode}, {size} B: coturn1/ours CPU per packet {statistics.median(ratios):.2f} "
                          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    if args.json_out:
        args.json_out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
