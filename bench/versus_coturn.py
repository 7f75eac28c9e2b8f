#!/usr/bin/env python3
"""Benchmark: every goal of issue 16 beside coturn, in one run, as one table of ratios.

    sudo .venv/bin/python bench/versus_coturn.py [--rounds 3] [--json-out FILE]

Not a test. It runs, one after the other, the benchmarks that measure each
goal (each starts its servers itself, pins them to core 0 and its generator
to core 1, and measures ours and coturn side by side), then prints each
goal's figures and ratio:

1. STUN Binding (``stun_capacity.py --quota 25``): answered requests/s with
   both servers held to a quarter of a core, CPU per answer at 20,000
   requests/s, and loss at 80 % of the capacity just measured;
2. the relay (``relay_throughput.py``, coturn ``--relay-threads 1``): CPU per
   relayed packet at 25,000 round trips/s (10 clients × 2,500 pkt/s),
   channels and Send indications, 100 B and 1000 B; and relayed packets/s
   with both held to 40 % of a core, offered 50,000 round trips/s;
3. allocations (``allocation_rate.py``): CPU per Allocate + CreatePermission
   + ChannelBind + Refresh cycle at 200 cycles/s, CPU per cycle flat out,
   and cycles/s with both held to 20 % of a core.

A ratio above 1 means ours does better (more answered or relayed, less CPU
spent). Every step is bounded by the benchmark's own limits and by a
timeout here; needs root (CPU quotas), coturn and two CPUs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP_TIMEOUT_SECONDS = 1800
LIGHT_RATE = 2500  # pkt/s per client, 10 clients: 25,000 round trips/s
QUOTA_RATE = 5000  # 50,000 round trips/s offered, more than either relays under 40 %
SIZES = (100, 1000)


def run(argv: list[str], log: list[str]) -> str:
    """Run one benchmark (bounded); its standard output. The command goes to log."""
    command = [sys.executable, str(HERE / argv[0]), *argv[1:]]
    shown = ["FILE.json" if arg.endswith(".json") else arg for arg in argv[1:]]  # a temporary file of ours
    log.append(shlex.join(["python", f"bench/{argv[0]}", *shown]))
    print(f"running: {log[-1]}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=STEP_TIMEOUT_SECONDS, cwd=HERE)
    if done.returncode != 0:
        sys.exit(f"{log[-1]} failed with status {done.returncode}")
    return done.stdout


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def stun(rounds: int, tmp: Path, log: list[str]) -> list[tuple]:
    out = tmp / "stun.json"
    run(["stun_capacity.py", "--rounds", str(rounds), "--quota", "25", "--json-out", str(out)], log)
    figures = json.loads(out.read_text())["rounds"]
    ours, theirs = figures["txrendezvous"], figures["coturn"]
    capacity = [a["capacity"]["answered_per_second"] / b["capacity"]["answered_per_second"]
                for a, b in zip(ours, theirs)]
    cpu = [b["fixed"]["cpu_us_per_answer"] / a["fixed"]["cpu_us_per_answer"] for a, b in zip(ours, theirs)]

    def loss(runs):
        return max(r["below"]["loss_percent"] for r in runs)

    return [
        ("1", "STUN capacity, 25 % quota (req/s, median)", median([r["capacity"]["answered_per_second"] for r in ours]),
         median([r["capacity"]["answered_per_second"] for r in theirs]), capacity, 1.5),
        ("1", "STUN CPU per answer at 20,000/s (µs, median)", median([r["fixed"]["cpu_us_per_answer"] for r in ours]),
         median([r["fixed"]["cpu_us_per_answer"] for r in theirs]), cpu, 1.5),
        ("1", "STUN worst loss at 80 % of capacity (%)", loss(ours), loss(theirs), [], None),
    ]


def relay_runs(path: Path) -> dict:
    return {(r["server"], r["size"], r["rate"]): r for r in json.loads(path.read_text()) if r.get("report")}


def relay(tmp: Path, log: list[str]) -> list[tuple]:
    rows = []
    sizes = ",".join(map(str, SIZES))
    for mode in ("channel", "send"):
        out = tmp / f"light-{mode}.json"
        run(["relay_throughput.py", "--servers", "ours,coturn1", "--mode", mode, "--sizes", sizes,
             "--rates", str(LIGHT_RATE), "--quiet-wait", "15", "--json-out", str(out)], log)
        runs = relay_runs(out)
        for size in SIZES:
            ours, theirs = (runs[(server, size, LIGHT_RATE)] for server in ("ours", "coturn1"))
            cost = [r["server_user_us"] + r["server_system_us"] for r in (ours, theirs)]
            rows.append(("2", f"relay CPU per packet, {mode}, {size} B, 25k round trips/s (µs)", cost[0], cost[1],
                         [cost[1] / cost[0]], 1.0))
    out = tmp / "quota.json"
    run(["relay_throughput.py", "--servers", "ours,coturn1", "--server-cpu-quota", "40", "--sizes", sizes,
         "--rates", str(QUOTA_RATE), "--quiet-wait", "15", "--json-out", str(out)], log)
    runs = relay_runs(out)
    for size in SIZES:
        ours, theirs = (runs[(server, size, QUOTA_RATE)]["report"]["relayed_pps"] for server in ("ours", "coturn1"))
        rows.append(("2", f"relayed pkt/s, 40 % quota, {size} B channels", ours, theirs, [ours / theirs], 1.2))
    return rows


def allocations(log: list[str]) -> list[tuple]:
    output = run(["allocation_rate.py", "--seconds", "10", "--rate", "200", "--cpu-quota", "20"], log)
    figures = json.loads(output[output.index("{"):])
    ours, theirs = figures["ours"], figures["coturn"]
    paced = [s["paced"]["server_cpu_ms_per_cycle"] for s in (ours, theirs)]
    rows = [("3", "CPU per cycle at 200 cycles/s (ms)", paced[0], paced[1], [paced[1] / paced[0]], 1.0)]
    flat = [10 * s["capacity"]["server_cpu_percent"] / s["capacity"]["cycles_per_second"] for s in (ours, theirs)]
    quota = [s["quota"]["cycles_per_second"] for s in (ours, theirs)]
    return rows + [("3", "CPU per cycle flat out (ms)", flat[0], flat[1], [flat[1] / flat[0]], 1.0),
                   ("3", "cycles/s, 20 % quota", quota[0], quota[1], [quota[0] / quota[1]], 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="STUN rounds (1-10, default 3)")
    parser.add_argument("--json-out", type=Path, help="also write the table's rows to this JSON file")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be within 1 and 10")
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="versus-coturn-") as tmp:
        loads = [open("/proc/loadavg").read().split()[0]]
        rows = stun(args.rounds, Path(tmp), log) + relay(Path(tmp), log) + allocations(log)
        loads.append(open("/proc/loadavg").read().split()[0])
    print(f"Benchmark: `{shlex.join(['python', 'bench/versus_coturn.py', *sys.argv[1:]])}`, "
          f"load average {loads[0]} at the start, {loads[1]} at the end\n")
    print("| goal | figure | ours | coturn | ratio (above 1: ours better) | per round | target | met |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | --- |")
    for goal, figure, ours, theirs, ratios, target in rows:
        ratio = median(ratios) if ratios else None
        rounds = ", ".join(f"{r:.2f}" for r in ratios) if len(ratios) > 1 else ""
        met = "" if target is None else ("yes" if ratio >= target else "no")
        print(f"| {goal} | {figure} | {ours:,.2f} | {theirs:,.2f} | {'' if ratio is None else f'{ratio:.2f}'} | "
              f"{rounds} | {'' if target is None else f'≥ {target:g}'} | {met} |")
    print("\nSteps:\n" + "\n".join(f"- `{command}`" for command in log))
    if args.json_out:
        args.json_out.write_text(json.dumps([dict(zip(("goal", "figure", "ours", "coturn", "ratios", "target"), row))
                                             for row in rows], indent=1))


if __name__ == "__main__":
    main()
