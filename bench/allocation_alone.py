"""Benchmark: two relay checkouts' CPU per paced allocation cycle, one server at a time in the same slot.

    sudo .venv/bin/python bench/allocation_alone.py {--base-root DIR | --coturn} [--root DIR] [--pairs 6]
        [--seconds 8] [--rate 200]

Not a test. ``allocation_rate.py`` runs its servers side by side, each with
its own slice of the relay ports, and the one started first is measured
about a tenth cheaper whatever its code (docs/PERFORMANCE.md, *Sixth
round*). Here each server is started alone, fresh, with the same relay
ports, pinned to core 0 (the generator on core 1), paced at ``--rate``
cycles/s for ``--seconds`` and stopped; the two checkouts take turns
(``--base-root`` first in even pairs, ``--root`` first in odd ones), and
each pair's ratio is given. With ``--coturn``, coturn takes the older
checkout's place, for goal 3's ratio free of that bias. Bounded as ``allocation_rate.py``: every phase
has a deadline, every request a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from allocation_rate import ROOT, Running, answering

RELAY_PORTS = (40000, 50000)


def measure(root: Path | None, args) -> float:
    """CPU ms per cycle of the relay of root (None: coturn), started alone and paced."""
    with tempfile.TemporaryDirectory(prefix="txr-alone-") as tmp:
        running = Running("base" if root else "coturn", argparse.Namespace(base_root=root, cpu_quota=None),
                          Path(tmp) / "relay", RELAY_PORTS)
        try:
            if not answering(running.server):
                raise SystemExit(f"the relay of {root or 'coturn'} did not answer")
            time.sleep(1.0)
            before = running.cpu()
            figures = running.drive(32, args.seconds, args.rate)
            used = running.cpu() - before
        finally:
            running.stop()
    if figures["failures"]:
        raise SystemExit(f"the relay of {root or 'coturn'} failed {figures['failures']} cycles")
    return round(1000 * used / max(figures["cycles"], 1), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    against = parser.add_mutually_exclusive_group(required=True)
    against.add_argument("--base-root", type=Path, help="the older checkout (its C extensions built)")
    against.add_argument("--coturn", action="store_true", help="coturn (turnserver) in place of an older checkout")
    parser.add_argument("--root", type=Path, default=ROOT, help="the newer checkout (default: this one)")
    parser.add_argument("--pairs", type=int, default=6, help="turns of both (at most 20)")
    parser.add_argument("--seconds", type=float, default=8.0, help="paced seconds per turn (at most 60)")
    parser.add_argument("--rate", type=float, default=200.0, help="paced cycles per second (at most 1000)")
    args = parser.parse_args()
    if not 1 <= args.pairs <= 20 or not 0 < args.seconds <= 60 or not 0 < args.rate <= 1000:
        parser.error("--pairs in [1, 20], --seconds in (0, 60], --rate in (0, 1000]")
    os.sched_setaffinity(0, {1})
    load = round(os.getloadavg()[0], 2)
    ms = {"base": [], "ours": []}
    for number in range(args.pairs):
        order = (("base", None if args.coturn else args.base_root.resolve()), ("ours", args.root.resolve()))
        for kind, root in order if number % 2 == 0 else order[::-1]:
            ms[kind].append(measure(root, args))
            time.sleep(1.0)
    print(json.dumps({"base": "coturn" if args.coturn else str(args.base_root), "paced_rate": args.rate, "seconds": args.seconds, "load_average_before": load,
                      "load_average_after": round(os.getloadavg()[0], 2), "server_cpu_ms_per_cycle": ms,
                      "base_over_ours_per_pair": [round(b / o, 2) for b, o in zip(ms["base"], ms["ours"])],
                      "median_ms": {kind: statistics.median(values) for kind, values in ms.items()}}, indent=2))


if __name__ == "__main__":
    main()
