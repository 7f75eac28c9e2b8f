#!/usr/bin/env python3
"""Benchmark: STUN Binding per core, ours beside coturn in the same run, with a C load generator.

Not a test. Compiles ``bench/stun_load.c`` (sendmmsg/recvmmsg, one thread:
a generator that is not the bottleneck) and starts both servers
(``twistd rendezvous`` and ``turnserver --stun-only``, as
bench/stun_binding.py starts them, one listening IP, no RFC 5780
attributes), each pinned to CPU 0 and inside a CPU quota group of its own
(``common.CpuQuota``, cgroup CFS bandwidth; root), with the generator on
CPU 1. They run side by side, each idle while the other is measured. For
``--rounds`` rounds, each phase measures one server and then the other, in
an order that alternates from round to round. Per server and round:

* **capacity**: under a quota of ``--quota`` percent of one core, a closed
  loop keeping ``--window`` requests outstanding over ``--sockets`` sockets:
  answered requests/s, loss, the server's CPU share;
* **CPU per answer**: with no quota, an open loop of ``--rate`` requests/s
  (default 20,000): the server's user+system CPU time over the requests it
  answered, in µs, and loss;
* **loss below capacity**: under the quota again, an open loop at
  ``--below`` (default 80 %) of the server's capacity, the median of its
  rounds (every round's capacity is measured first): loss, how many of
  those datagrams the kernel dropped at the server's socket (its receive
  buffer full), p99, and the quota periods in which the server was
  throttled, its main thread's involuntary context switches (preempted
  or throttled) and voluntary ones (it slept).

Round-trip percentiles come from 1 µs buckets up to 200 ms: a p99 of
200,000 µs means 200 ms or more.

Every phase lasts ``--warmup`` + ``--seconds``; the generator stops by
itself (time and count bounds) and each server is stopped by its process
id. Other work on the machine shows up as spread between rounds, so the
summary gives min, median and max of each figure and of the per-round
ratios (ours over coturn for capacity, coturn's CPU per answer over ours).

Run from the repository root, as root::

    .venv/bin/python bench/stun_capacity.py --rounds 3 [--base-root OLDER_CHECKOUT]
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CpuQuota, context_switches, coturn_version, cpu_model, cpu_seconds
from stun_binding import start_coturn, start_rendezvous

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_SOURCE = Path(__file__).with_name("stun_load.c")
SERVER_CPU, GENERATOR_CPU = "0", "1"


def build_generator(directory: Path) -> Path:
    binary = directory / "stun_load"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(GENERATOR_SOURCE)], check=True)
    return binary


def receive_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP sockets bound to 127.0.0.1:port (full receive buffers)."""
    local = f"0100007F:{port:04X}"
    drops = 0
    with open("/proc/net/udp") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 12 and fields[1] == local:
                drops += int(fields[12])
    return drops


def load(generator: Path, server, quota: CpuQuota, seconds: float, warmup: float, **options) -> dict:
    """Run the generator once against server; its key=value line, with the server's CPU, context switches and
    throttled quota periods over it."""
    argv = ["taskset", "-c", GENERATOR_CPU, str(generator), *map(str, server.address),
            "--seconds", str(seconds), "--warmup", str(warmup)]
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    drops_before = receive_drops(server.address[1])
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup)
    cpu_before, wall_before = cpu_seconds(server.process.pid), time.monotonic()
    switches_before, throttled_before = context_switches(server.process.pid), quota.throttled()
    output, _ = process.communicate(timeout=warmup + seconds + 30)
    # The generator measured [warmup, warmup + seconds]; the server's CPU is read over about the same span.
    cpu = cpu_seconds(server.process.pid) - cpu_before
    wall = time.monotonic() - wall_before
    switches = context_switches(server.process.pid)
    values = {key: float(value) for key, value in (item.split("=") for item in output.split())}
    values["server_cpu_percent"] = 100 * cpu / wall
    values["answered_per_second"] = values["answered"] / values["seconds"]
    values["loss_percent"] = 100 * values["lost"] / values["sent"] if values["sent"] else 0.0
    values["server_cpu_seconds"] = cpu
    values["server_drops"] = receive_drops(server.address[1]) - drops_before
    values["server_switches"] = switches[0] - switches_before[0]
    values["server_preempted"] = switches[1] - switches_before[1]
    values["throttled_periods"] = quota.throttled() - throttled_before
    if not values["answered"]:
        print(f"{server.name} answered nothing: {stalled(server.process.pid, quota)}", file=sys.stderr)
    return values


def stalled(pid: int, quota: CpuQuota) -> str:
    """What a server that answers nothing is doing: its scheduler state, where it waits, its group's cpu.stat."""
    facts = []
    for name in ("status", "wchan"):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError as e:
            text = str(e)
        facts.append(" ".join(line for line in text.splitlines() if name == "wchan" or line.startswith("State")))
    facts.append(" ".join(f"{name}={value}" for name, value in quota.stat().items()))
    return "; ".join(facts)


def start(kind: str, workdir: Path, quota: CpuQuota, args):
    if kind == "coturn":
        return start_coturn(workdir, pin=True, wrap=quota.wrap)
    options = {"root": args.base_root} if kind == "base" else {}
    if args.wakeup_hold is not None:
        options["extra"] = ["--wakeup-hold", str(args.wakeup_hold)]
    return start_rendezvous(workdir, pin=True, wrap=quota.wrap, **options)


def measure_capacity(servers: dict, quotas: dict, order: list[str], generator: Path, args) -> dict:
    """Each server's capacity under the quota, one after the other (so each pair is measured seconds apart)."""
    results: dict[str, dict] = {}
    for kind in order:
        quotas[kind].set_percent(args.quota)
        results[kind] = load(generator, servers[kind], quotas[kind], args.seconds, args.warmup, window=args.window,
                             sockets=args.sockets)
    return results


def measure_open_loops(servers: dict, quotas: dict, order: list[str], generator: Path, args,
                       capacity: dict) -> dict:
    """CPU per answer without the quota, then loss under it at --below percent of capacity[kind] req/s."""
    results: dict[str, dict] = {kind: {} for kind in order}
    for kind in order:
        quotas[kind].set_percent(None)
        # Open loop: the server's CPU over the measured span, per request it answered in that span.
        fixed = load(generator, servers[kind], quotas[kind], args.seconds, args.warmup, rate=args.rate,
                     sockets=args.sockets)
        fixed["cpu_us_per_answer"] = 1e6 * fixed["server_cpu_seconds"] / max(1.0, fixed["answered"])
        results[kind]["fixed"] = fixed
    for kind in order:
        quotas[kind].set_percent(args.quota)
        below_rate = int(capacity[kind] * args.below / 100)
        below = load(generator, servers[kind], quotas[kind], args.seconds, args.warmup, rate=below_rate,
                     sockets=args.sockets)
        below["rate"] = below_rate
        results[kind]["below"] = below
    return results


def spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    fmt = f"{{:,.{digits}f}}"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every server (default 3)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    parser.add_argument("--quota", type=float, default=50.0,
                        help="CPU quota of each server for capacity, percent of one core (default 50)")
    parser.add_argument("--window", type=int, default=512, help="closed-loop outstanding requests (default 512)")
    parser.add_argument("--sockets", type=int, default=8, help="generator sockets (default 8)")
    parser.add_argument("--rate", type=int, default=20_000, help="open-loop rate for CPU per answer (default 20000)")
    parser.add_argument("--below", type=float, default=80.0,
                        help="loss test rate, percent of the measured capacity (default 80)")
    parser.add_argument("--servers", default="txrendezvous,coturn", help="comma list: txrendezvous, coturn")
    parser.add_argument("--wakeup-hold", type=int, metavar="US",
                        help="ours (and base) with this --wakeup-hold (default: the server's default)")
    parser.add_argument("--json-out", type=Path, help="also write every round's figures to this JSON file")
    parser.add_argument("--base-root", type=Path, help="another checkout of this repository (e.g. a `git archive` "
                        "of an older commit, its extensions built): measured too, as base")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.seconds <= 60 or not 1 <= args.quota <= 100:
        parser.error("--rounds 1-20, --seconds 0.5-60, --quota 1-100")
    if os.cpu_count() < 2:
        parser.error("needs two CPUs: the server on one, the generator on the other")
    kinds = args.servers.split(",") + (["base"] if args.base_root else [])
    if "coturn" in kinds and shutil.which("turnserver") is None:
        parser.error("coturn's turnserver is not installed (Debian package coturn)")

    print(f"Benchmark: `{shlex.join([sys.executable] + sys.argv)}`\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, generator on CPU "
          f"{GENERATOR_CPU}; coturn {coturn_version()}")
    try:
        loads = open("/proc/loadavg").read().split()[:3]
        print(f"- load average at start: {' '.join(loads)}\n")
    except OSError:
        pass
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="stun-capacity-") as tmp:
        generator = build_generator(Path(tmp))
        quotas = {kind: CpuQuota(None) for kind in kinds}
        servers = {}
        try:
            for kind in kinds:
                workdir = Path(tmp) / kind
                workdir.mkdir()
                servers[kind] = start(kind, workdir, quotas[kind], args)
            orders = [kinds if index % 2 == 0 else list(reversed(kinds)) for index in range(args.rounds)]
            for order in orders:
                measured = measure_capacity(servers, quotas, order, generator, args)
                for kind in kinds:
                    results[kind].append({"capacity": measured[kind]})
            capacity = {kind: statistics.median(r["capacity"]["answered_per_second"] for r in results[kind])
                        for kind in kinds}
            print(f"capacity measured in {args.rounds} rounds", file=sys.stderr)
            for round_index, order in enumerate(orders):
                measured = measure_open_loops(servers, quotas, order, generator, args, capacity)
                for kind in kinds:
                    results[kind][round_index].update(measured[kind])
                print(f"round {round_index + 1} done", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
            for quota in quotas.values():
                quota.remove()

    print(f"| server | round | capacity req/s ({args.quota:g} % quota) | its CPU % | loss % | "
          f"CPU µs/answer at {args.rate:,}/s | loss % | p99 µs | loss % at {args.below:g} % of median capacity "
          "(of which dropped at the server) | p99 µs | throttled periods, preempted, slept |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in kinds:
        for index, r in enumerate(results[kind]):
            c, f, b = r["capacity"], r["fixed"], r["below"]
            print(f"| {kind} | {index + 1} | {c['answered_per_second']:,.0f} | {c['server_cpu_percent']:.0f} | "
                  f"{c['loss_percent']:.2f} | {f['cpu_us_per_answer']:.2f} | {f['loss_percent']:.2f} | "
                  f"{f['p99_us']:,.0f} | {b['loss_percent']:.3f} at {b['rate']:,}/s ({b['server_drops']:,.0f}) | "
                  f"{b['p99_us']:,.0f} | {b['throttled_periods']:,}, {b['server_preempted']:,}, "
                  f"{b['server_switches']:,} |")
    print()
    for kind in kinds:
        runs = results[kind]
        print(f"- {kind}: capacity {spread([r['capacity']['answered_per_second'] for r in runs])} req/s; "
              f"CPU per answer {spread([r['fixed']['cpu_us_per_answer'] for r in runs], 2)} µs; "
              f"generator CPU {spread([r['capacity']['cpu_percent'] for r in runs])} % (capacity)")
    if {"txrendezvous", "base"} <= set(kinds):
        before = [b["fixed"]["cpu_us_per_answer"] / a["fixed"]["cpu_us_per_answer"]
                  for a, b in zip(results["txrendezvous"], results["base"])]
        print(f"- ratio base/ours, CPU per answer at {args.rate:,}/s, per round: {spread(before, 2)}")
    if {"txrendezvous", "coturn"} <= set(kinds):
        ours, theirs = results["txrendezvous"], results["coturn"]
        capacity = [a["capacity"]["answered_per_second"] / b["capacity"]["answered_per_second"]
                    for a, b in zip(ours, theirs)]
        cpu = [b["fixed"]["cpu_us_per_answer"] / a["fixed"]["cpu_us_per_answer"] for a, b in zip(ours, theirs)]
        print(f"- ratio ours/coturn, capacity under the same quota, per round: {spread(capacity, 2)}")
        print(f"- ratio coturn/ours, CPU per answer at {args.rate:,}/s, per round: {spread(cpu, 2)}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"quota": args.quota, "rate": args.rate, "below": args.below,
                                             "rounds": results}, indent=1))


if __name__ == "__main__":
    main()
