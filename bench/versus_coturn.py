#!/usr/bin/env python3
"""Benchmark: every goal of issue 16 beside coturn, in one run, as one table of ratios.

    sudo .venv/bin/python bench/versus_coturn.py [--rounds 3] [--json-out FILE]

Not a test. It runs, one after the other, the benchmarks that measure each
goal (each starts its servers itself, pins them to core 0 and its generator
to core 1, and measures ours and coturn side by side), ``--rounds`` times
each, then prints each goal's medians and the ratio of every round:

1. STUN Binding (``stun_capacity.py --quota 25``): answered requests/s with
   both servers held to a quarter of a core, CPU per answer at 20,000
   requests/s, and loss at 80 % of the median capacity over the rounds;
2. the relay (``relay_throughput.py``, coturn ``--relay-threads 1``): CPU per
   relayed packet at 25,000 round trips/s (10 clients × 2,500 pkt/s),
   channels and Send indications, 100 B and 1000 B; and relayed packets/s
   with both held to 40 % of a core, offered 50,000 round trips/s; and CPU
   per relayed packet with coturn's own client (``relay_uclient.py``: four
   ``turnutils_uclient`` of 50 allocations each, about 14,000 round trips/s,
   all this machine's generator core paces with them);
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


def row(goal: str, figure: str, pairs: list[tuple[float, float]], lower_is_better: bool, target) -> tuple:
    """A table row from (ours, coturn) per round: the medians, and each round's ratio (above 1: ours better)."""
    ratios = [b / a if lower_is_better else a / b for a, b in pairs]
    return (goal, figure, median([a for a, _ in pairs]), median([b for _, b in pairs]), ratios, target)


def stun(rounds: int, tmp: Path, log: list[str]) -> list[tuple]:
    out = tmp / "stun.json"
    run(["stun_capacity.py", "--rounds", str(rounds), "--quota", "25", "--json-out", str(out)], log)
    figures = json.loads(out.read_text())["rounds"]
    both = list(zip(figures["txrendezvous"], figures["coturn"]))
    return [
        row("1", "STUN capacity, 25 % quota (req/s, median)",
            [(a["capacity"]["answered_per_second"], b["capacity"]["answered_per_second"]) for a, b in both], False, 1.5),
        row("1", "STUN CPU per answer at 20,000/s (µs, median)",
            [(a["fixed"]["cpu_us_per_answer"], b["fixed"]["cpu_us_per_answer"]) for a, b in both], True, 1.5),
        ("1", "STUN worst loss at 80 % of median capacity (%)", max(a["below"]["loss_percent"] for a, _ in both),
         max(b["below"]["loss_percent"] for _, b in both), [], None),
    ]


def relay_runs(path: Path) -> dict:
    return {(r["server"], r["size"], r["rate"]): r for r in json.loads(path.read_text()) if r.get("report")}


def relay(rounds: int, tmp: Path, log: list[str]) -> list[tuple]:
    light: dict[tuple, list] = {}
    quota: dict[int, list] = {}
    sizes = ",".join(map(str, SIZES))
    for _ in range(rounds):
        for mode in ("channel", "send"):
            out = tmp / f"light-{mode}.json"
            run(["relay_throughput.py", "--servers", "ours,coturn1", "--mode", mode, "--sizes", sizes,
                 "--rates", str(LIGHT_RATE), "--quiet-wait", "15", "--json-out", str(out)], log)
            runs = relay_runs(out)
            for size in SIZES:
                cost = [runs[(server, size, LIGHT_RATE)] for server in ("ours", "coturn1")]
                light.setdefault((mode, size), []).append(
                    tuple(r["server_user_us"] + r["server_system_us"] for r in cost))
        out = tmp / "quota.json"
        run(["relay_throughput.py", "--servers", "ours,coturn1", "--server-cpu-quota", "40", "--sizes", sizes,
             "--rates", str(QUOTA_RATE), "--quiet-wait", "15", "--json-out", str(out)], log)
        runs = relay_runs(out)
        for size in SIZES:
            quota.setdefault(size, []).append(
                tuple(runs[(server, size, QUOTA_RATE)]["report"]["relayed_pps"] for server in ("ours", "coturn1")))
    rows = [row("2", f"relay CPU per packet, {mode}, {size} B, 25k round trips/s (µs, median)", pairs, True, 1.0)
            for (mode, size), pairs in light.items()]
    return rows + [row("2", f"relayed pkt/s, 40 % quota, {size} B channels (median)", pairs, False, 1.2)
                   for size, pairs in quota.items()]


def uclient(rounds: int, tmp: Path, log: list[str]) -> list[tuple]:
    out = tmp / "uclient.json"
    run(["relay_uclient.py", "--rounds", str(rounds), "--json-out", str(out)], log)
    cost: dict[tuple, dict] = {}
    for r in json.loads(out.read_text()):
        if "error" not in r:
            cost.setdefault((r["mode"], r["size"], r["round"]), {})[r["server"]] = r["server_us_per_packet"]
    pairs: dict[tuple, list] = {}
    for (mode, size, _), servers in cost.items():
        if {"ours", "coturn1"} <= servers.keys():
            pairs.setdefault((mode, size), []).append((servers["ours"], servers["coturn1"]))
    return [row("2", f"relay CPU per packet with turnutils_uclient, {mode}, {size} B, ~14k round trips/s "
                     "(µs, median)", found, True, 1.0) for (mode, size), found in pairs.items()]


def allocations(rounds: int, log: list[str]) -> list[tuple]:
    paced, flat, quota = [], [], []
    for _ in range(rounds):
        output = run(["allocation_rate.py", "--seconds", "10", "--rate", "200", "--cpu-quota", "20"], log)
        figures = json.loads(output[output.index("{"):])
        both = (figures["ours"], figures["coturn"])
        paced.append(tuple(s["paced"]["server_cpu_ms_per_cycle"] for s in both))
        flat.append(tuple(10 * s["capacity"]["server_cpu_percent"] / s["capacity"]["cycles_per_second"] for s in both))
        quota.append(tuple(s["quota"]["cycles_per_second"] for s in both))
    return [row("3", "CPU per cycle at 200 cycles/s (ms, median)", paced, True, 1.0),
            row("3", "CPU per cycle flat out (ms, median)", flat, True, 1.0),
            row("3", "cycles/s, 20 % quota (median)", quota, False, 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every step, ours and coturn side by side in each (1-10, default 3)")
    parser.add_argument("--json-out", type=Path, help="also write the table's rows to this JSON file")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be within 1 and 10")
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="versus-coturn-") as tmp:
        loads = [open("/proc/loadavg").read().split()[0]]
        rows = (stun(args.rounds, Path(tmp), log) + relay(args.rounds, Path(tmp), log)
                + uclient(args.rounds, Path(tmp), log) + allocations(args.rounds, log))
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
    print("\nSteps (each relay and allocation step once per round):\n"
          + "\n".join(f"- `{command}`" for command in dict.fromkeys(log)))
    if args.json_out:
        args.json_out.write_text(json.dumps([dict(zip(("goal", "figure", "ours", "coturn", "ratios", "target"), row))
                                             for row in rows], indent=1))


if __name__ == "__main__":
    main()
