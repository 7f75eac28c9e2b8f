"""Soak: a relay under steady load and allocation churn for --minutes, watched for leaks. Not a test.

    .venv/bin/python bench/soak.py --minutes 30 [--servers ours,coturn] [--out DIR]
    .venv/bin/python bench/soak.py --minutes 10 --trace DIR --trace-at 2,10     (where memory goes)

For each server (ours: ``twistd relay``; coturn: ``turnserver``), started
by this script on 127.0.0.1 with a short allocation lifetime:

- the load generator runs in a loop (``txrendezvous load-test``, each run
  ``--load-seconds`` long, its clients allocating at the start and
  deleting at the end) at ``--load-rate`` packets/s per client, its ceiling
  on this machine by default;
- bench/soak_churn.py makes and releases allocations at ``--churn-rate``
  a second (allocate, permission, channel, a little data, release; one in
  ``--abandon-every`` is left to expire);
- every ``--interval`` seconds the script records the relay's RSS and open
  file descriptors (/proc/PID/status and /proc/PID/fd over its processes),
  its relay sockets (UDP sockets it holds in the relay port range, from
  /proc/net/udp), and for ours allocations, permissions and channels (its
  /metrics), into a CSV.

After the load stops it waits for the abandoned allocations to expire, then
checks that nothing leaked: allocations, permissions, channels and relay
sockets back to 0, file descriptors back to the idle count (within
``--fd-tolerance``) and RSS flat (end of run within ``--rss-tolerance``
percent of the end of warm-up). It prints the verdict and draws an SVG
(matplotlib). Traffic stays on loopback; every loop is bounded by the
deadline. With ``--trace DIR`` our relay runs under tracemalloc
(bench/soak_trace.py; ``--trace-frames 0``: without it, at full speed, for
the heap figures), each of its processes dumps what it holds at the
``--trace-at`` minutes, and the script prints what grew between the first
and last dump of each.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import coturn_version, cpu_model, free_port, process_tree
from relay_memory import rss_kib
from relay_throughput import Server, server_inodes
from soak_trace import DIR_ENV, FRAMES_ENV, compare

ROOT = Path(__file__).resolve().parent.parent
IP = "127.0.0.1"
USER, PASSWORD, REALM = "soak", "soak-pw", "example.org"
RELAY_PORTS = (21000, 22999)  # below the ephemeral range, so only relay sockets sit there
LIFETIME_SECONDS = 60  # the servers' longest allocation lifetime: abandoned allocations expire after it
COLUMNS = ("minute", "phase", "rss_kib", "fds", "relay_sockets", "allocations", "permissions", "channels",
           "load_runs", "load_pps")


@dataclass
class Soak:
    """One server's soak: its process, what the load loops report, and the samples."""

    kind: str
    server: Server
    metrics_port: int | None
    rows: list[dict] = field(default_factory=list)
    load_pps: list[float] = field(default_factory=list)
    load_errors: list[str] = field(default_factory=list)
    churn: dict = field(default_factory=dict)


def start(kind: str, directory: Path, trace: Path | None = None, frames: int = 10) -> tuple[Server, int | None]:
    """Our relay or coturn on 127.0.0.1, loopback peers allowed, allocations living LIFETIME_SECONDS;
    with trace, ours under bench/soak_trace.py dumping into that folder."""
    directory.mkdir(parents=True)
    port = free_port((IP,))
    low, high = RELAY_PORTS
    metrics_port = None
    if kind == "ours":
        metrics_port = free_port((IP,), exclude={port})
        command = [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "relay",
                   "--ip", IP, "--port", str(port), "--tls-port", "0", "--user", f"{USER}:{PASSWORD}",
                   "--realm", REALM, "--allow-peer", "127.0.0.0/8", "--relay-ports", f"{low}-{high}",
                   "--default-lifetime", str(LIFETIME_SECONDS // 2), "--max-lifetime", str(LIFETIME_SECONDS),
                   "--state-dir", str(directory / "state"), "--metrics", f"{IP}:{metrics_port}"]
        if trace is not None:
            command[:1] = [sys.executable, str(ROOT / "bench" / "soak_trace.py")]
    else:
        command = ["turnserver", "-n", "--listening-ip", IP, "--listening-port", str(port), "--relay-ip", IP,
                   "--min-port", str(low), "--max-port", str(high), "--realm", REALM,
                   "--user", f"{USER}:{PASSWORD}", "--lt-cred-mech", "--no-tls", "--no-dtls", "--no-cli",
                   "--allow-loopback-peers", "--max-allocate-lifetime", str(LIFETIME_SECONDS),
                   "--userdb", str(directory / "turndb"), "--pidfile", str(directory / "turn.pid"),
                   "--log-file", str(directory / "turn.log"), "--simple-log", "--no-stdout-log"]
    log_path = directory / "server.out"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=directory, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                           **({DIR_ENV: str(trace), FRAMES_ENV: str(frames)}
                                                              if trace else {})))
    server = Server(kind, command, process, (IP, port), log_path)
    server.wait_until_answering()
    print("server: " + " ".join(command), flush=True)
    return server, metrics_port


# -- readings ---------------------------------------------------------------------------


def metric_values(port: int) -> dict[str, float]:
    """txr_turn_allocations, _permissions and _channels from our relay's /metrics."""
    with urllib.request.urlopen(f"http://{IP}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("txr_turn_allocations", "txr_turn_permissions", "txr_turn_channels"):
            values[name[9:]] = float(value)
    return values


def relay_sockets(pid: int) -> int:
    """UDP sockets the server's processes hold on a port of RELAY_PORTS (/proc/net/udp and udp6)."""
    inodes = server_inodes(pid)
    low, high = RELAY_PORTS
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes and low <= int(fields[1].rsplit(":", 1)[1], 16) <= high:
                    count += 1
    return count


def sample(soak: Soak, started: float, phase: str) -> dict:
    """One row: the server's RSS, fds and relay sockets over its processes, and (ours) its gauges."""
    pid = soak.server.process.pid
    members = process_tree(pid)
    row = {"minute": round((time.monotonic() - started) / 60, 3), "phase": phase,
           "rss_kib": sum(_or_zero(rss_kib, m) for m in members),
           "fds": sum(_or_zero(lambda p: len(os.listdir(f"/proc/{p}/fd")), m) for m in members),
           "relay_sockets": relay_sockets(pid), "load_runs": len(soak.load_pps),
           "load_pps": round(soak.load_pps[-1]) if soak.load_pps else ""}
    gauges = metric_values(soak.metrics_port) if soak.metrics_port else {}
    for name in ("allocations", "permissions", "channels"):
        row[name] = int(gauges[name]) if name in gauges else ""
    soak.rows.append(row)
    return row


def _or_zero(read, pid: int) -> int:
    try:
        return read(pid)
    except (OSError, RuntimeError):
        return 0  # the process ended between the listing and the reading


# -- load and churn -----------------------------------------------------------------------


def load_loop(soak: Soak, args: argparse.Namespace, until: float, stop: threading.Event) -> None:
    """``txrendezvous load-test`` runs back to back until ``until``; records each run's pkt/s."""
    while not stop.is_set() and time.monotonic() + 5 < until:
        seconds = min(args.load_seconds, until - time.monotonic() - 3)
        command = [sys.executable, "-m", "rendezvous.cli.main", "load-test", "--server", f"{IP}:{soak.server.address[1]}",
                   "--user", f"{USER}:{PASSWORD}", "--realm", REALM, "--clients", str(args.load_clients),
                   "--rate", str(args.load_rate), "--size", "100", "--seconds", f"{seconds:.1f}",
                   "--peer-ip", IP, "--json"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            report = json.loads(done.stdout) if done.stdout.strip() else {}
        except (subprocess.TimeoutExpired, ValueError) as e:
            soak.load_errors.append(str(e))
            continue
        rate = report.get("relayed_pps")
        if rate is None:
            soak.load_errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no report")
        else:
            soak.load_pps.append(float(rate))


def start_churn(soak: Soak, args: argparse.Namespace, seconds: float) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "bench" / "soak_churn.py"), "--server", f"{IP}:{soak.server.address[1]}",
               "--user", f"{USER}:{PASSWORD}", "--realm", REALM, "--rate", str(args.churn_rate),
               "--seconds", f"{seconds:.1f}", "--abandon-every", str(args.abandon_every),
               "--lifetime", str(LIFETIME_SECONDS)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


# -- one server ---------------------------------------------------------------------------


def soak_one(kind: str, args: argparse.Namespace, directory: Path) -> Soak:
    trace = args.trace if kind == "ours" else None
    server, metrics_port = start(kind, directory, trace, args.trace_frames)
    soak = Soak(kind, server, metrics_port)
    started = time.monotonic()
    try:
        time.sleep(2)
        idle = sample(soak, started, "idle")
        until = time.monotonic() + args.minutes * 60
        stop = threading.Event()
        loader = threading.Thread(target=load_loop, args=(soak, args, until, stop), daemon=True)
        loader.start()
        churn = start_churn(soak, args, args.minutes * 60)
        dumps = sorted(args.trace_at) if trace else []
        while time.monotonic() < until:
            time.sleep(min(args.interval, max(0.0, until - time.monotonic())))
            row = sample(soak, started, "load")
            print(_line(kind, row), flush=True)
            if dumps and row["minute"] >= dumps[0] - 0.01:
                dumps.pop(0)
                for pid in process_tree(server.process.pid):
                    os.kill(pid, signal.SIGUSR2)
        stop.set()
        out, err = churn.communicate(timeout=120)
        soak.churn = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-500:]}
        loader.join(timeout=120)
        # Drain: abandoned allocations expire within their lifetime (and a sweep).
        deadline = time.monotonic() + LIFETIME_SECONDS + args.interval + 30
        while time.monotonic() < deadline:
            time.sleep(args.interval)
            row = sample(soak, started, "drain")
            print(_line(kind, row), flush=True)
            if _settled(row, idle, args) and time.monotonic() - until > LIFETIME_SECONDS:
                break
    finally:
        server.stop()
    return soak


def print_trace(directory: Path) -> None:
    """What grew in each traced process between its first and its last dump."""
    for pid in sorted({p.name.split("-")[0] for p in directory.glob("*.pickle")}):
        dumps = sorted(directory.glob(f"{pid}-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
        if len(dumps) >= 2:
            print("\n".join(compare(dumps[0], dumps[-1])), flush=True)


def _line(kind: str, row: dict) -> str:
    return (f"[{kind} {row['minute']:6.2f} min {row['phase']:5}] RSS {row['rss_kib'] / 1024:7.1f} MiB  "
            f"fds {row['fds']:5}  relay sockets {row['relay_sockets']:5}  allocations {row['allocations']!s:>5}  "
            f"permissions {row['permissions']!s:>5}  load runs {row['load_runs']}")


def _settled(row: dict, idle: dict, args: argparse.Namespace) -> bool:
    gauges = [row[name] for name in ("allocations", "permissions", "channels") if row[name] != ""]
    return row["relay_sockets"] == 0 and not any(gauges) and row["fds"] <= idle["fds"] + args.fd_tolerance


def rss_slope(rows: list[dict], warmup_minutes: float) -> tuple[float, float]:
    """(MiB a minute, KiB per hour) of RSS under load after warm-up: the least-squares line's slope."""
    points = [(r["minute"], r["rss_kib"]) for r in rows if r["phase"] == "load" and r["minute"] > warmup_minutes]
    if len(points) < 2:
        return 0.0, 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))  # KiB a minute
    return slope / 1024, slope * 60


def slope_line(rows: list[dict], minutes: float, fraction: float) -> str:
    mib_per_minute, kib_per_hour = rss_slope(rows, max(1.0, minutes * fraction))
    return (f"RSS slope under load after warm-up (least squares over the samples): {mib_per_minute:+.4f} MiB a "
            f"minute ({kib_per_hour:+,.0f} KiB an hour)")


def verdict(soak: Soak, args: argparse.Namespace) -> list[str]:
    """What leaked, if anything: one line per quantity, each ending in ok or LEAK."""
    idle, end = soak.rows[0], soak.rows[-1]
    load = [r for r in soak.rows if r["phase"] == "load"]
    warm = [r for r in load if r["minute"] <= max(1.0, args.minutes * args.warmup_fraction)] or load[:1]
    lines = []
    for name in ("allocations", "permissions", "channels", "relay_sockets"):
        if end[name] == "":
            continue
        peak = max(r[name] for r in load) if load else 0
        lines.append(f"{name}: peak {peak} under load, {end[name]} at the end: {'ok' if end[name] == 0 else 'LEAK'}")
    grown = end["fds"] - idle["fds"]
    lines.append(f"fds: {idle['fds']} idle, {end['fds']} at the end ({grown:+d}; tolerance +{args.fd_tolerance}): "
                 f"{'ok' if grown <= args.fd_tolerance else 'LEAK'}")
    warm_rss = max(r["rss_kib"] for r in warm)
    end_load = load[-1]["rss_kib"] if load else end["rss_kib"]
    growth = 100.0 * (end_load - warm_rss) / warm_rss
    lines.append(f"RSS: {warm_rss / 1024:.1f} MiB at the end of warm-up (first {args.warmup_fraction:.0%} of the run), "
                 f"{end_load / 1024:.1f} MiB at the end of the load ({growth:+.1f} %), {end['rss_kib'] / 1024:.1f} MiB "
                 f"after the drain; tolerance {args.rss_tolerance:g} %: {'ok' if growth <= args.rss_tolerance else 'LEAK'}")
    lines.append(slope_line(soak.rows, args.minutes, args.warmup_fraction))
    return lines


# -- output ---------------------------------------------------------------------------------


def write_csv(soaks: list[Soak], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("server",) + COLUMNS)
        writer.writeheader()
        for soak in soaks:
            for row in soak.rows:
                writer.writerow({"server": soak.kind, **row})


def read_csv(path: Path) -> dict[str, list[dict]]:
    """A soak.csv back into rows per server (numbers as numbers, blanks kept blank)."""
    runs: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            kind = row.pop("server")
            runs.setdefault(kind, []).append(
                {k: v if k == "phase" or v == "" else float(v) for k, v in row.items()})
    return runs


def plot(runs: dict[str, list[dict]], path: Path, title: str) -> None:
    """Five panels over minutes: RSS, its growth since the first sample under load, open fds, allocations
    and permissions, relay sockets."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    for rows in runs.values():
        first = next((r["rss_kib"] for r in rows if r["phase"] == "load"), rows[0]["rss_kib"])
        for r in rows:
            r["rss_growth"] = r["rss_kib"] - first
    figure, axes = pyplot.subplots(5, 1, figsize=(9, 12), sharex=True)
    panels = [("RSS (MiB)", [("rss_kib", 1 / 1024, "")]),
              ("RSS since load began (MiB)", [("rss_growth", 1 / 1024, "")]), ("open file descriptors", [("fds", 1, "")]),
              ("allocations / permissions", [("allocations", 1, " allocations"), ("permissions", 1, " permissions")]),
              ("relay sockets", [("relay_sockets", 1, "")])]
    for axis, (label, series) in zip(axes, panels):
        for kind, rows in runs.items():
            for column, scale, suffix in series:
                points = [(r["minute"], r[column] * scale) for r in rows if r[column] != ""]
                if points:
                    axis.plot(*zip(*points), marker=".", linewidth=1, label=kind + suffix)
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        if axis.get_lines():
            axis.legend(loc="upper right", fontsize="small")
    for rows in runs.values():
        load = [r["minute"] for r in rows if r["phase"] == "load"]
        drain = [r["minute"] for r in rows if r["phase"] == "drain"]
        if load and drain:
            for axis in axes:
                axis.axvspan(load[-1], drain[-1], color="grey", alpha=0.08)
    axes[0].set_ylim(bottom=0)  # RSS from zero, so a flat line looks flat
    axes[0].set_title(title, fontsize="medium")
    axes[-1].set_xlabel("minutes (grey: load stopped, waiting for lifetimes)")
    figure.tight_layout()
    figure.savefig(path)  # the format from the suffix: .svg
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="load time per server (default 30)")
    parser.add_argument("--servers", default="ours", help="comma-separated: ours, coturn (default ours)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--load-clients", type=int, default=10, help="load-test clients per run (default 10)")
    parser.add_argument("--load-rate", type=int, default=4000,
                        help="packets/s per load-test client (default 4000: on a 2-core machine shared with the "
                             "relay, about what the generator can send; more is lost)")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="length of each load-test run (default 60)")
    parser.add_argument("--churn-rate", type=float, default=10.0, help="allocation cycles per second (default 10)")
    parser.add_argument("--abandon-every", type=int, default=10, help="every Nth churn cycle is left to expire")
    parser.add_argument("--fd-tolerance", type=int, default=10, help="fds above idle still counted as no leak")
    parser.add_argument("--rss-tolerance", type=float, default=10.0, help="RSS growth percent counted as flat")
    parser.add_argument("--warmup-fraction", type=float, default=0.2, help="share of the run that is warm-up")
    parser.add_argument("--out", type=Path, default=None, help="folder for soak.csv and soak.svg (default: a temp dir)")
    parser.add_argument("--plot-only", type=Path, metavar="CSV",
                        help="draw the SVG of an earlier run's soak.csv (beside it, titled --title) and stop")
    parser.add_argument("--title", default="soak", help="the plot's title with --plot-only")
    parser.add_argument("--trace", type=Path, metavar="DIR",
                        help="run our relay under tracemalloc (bench/soak_trace.py), its dumps in DIR (slower)")
    parser.add_argument("--trace-at", default="2,10", type=lambda text: [float(m) for m in text.split(",")],
                        help="minutes at which each relay process dumps with --trace (default 2,10)")
    parser.add_argument("--trace-frames", type=int, default=10,
                        help="tracemalloc frames with --trace (default 10; 0: no tracemalloc, the relay at full "
                             "speed, its dumps with heap figures, counts and tables only)")
    args = parser.parse_args()
    if args.plot_only:
        runs = read_csv(args.plot_only)
        for kind, rows in runs.items():
            minutes = max(r["minute"] for r in rows if r["phase"] == "load")
            print(f"{kind}: {slope_line(rows, minutes, args.warmup_fraction)}")
        plot(runs, args.plot_only.with_suffix(".svg"), args.title)
        return
    if not 0.5 <= args.minutes <= 24 * 60 or not 1 <= args.interval <= 60 or not 0 < args.churn_rate <= 50:
        parser.error("--minutes must be 0.5-1440, --interval 1-60, --churn-rate in (0, 50]")
    kinds = [k for k in args.servers.split(",") if k]
    if not set(kinds) <= {"ours", "coturn"} or ("coturn" in kinds and shutil.which("turnserver") is None):
        parser.error("--servers takes ours and coturn (coturn needs turnserver installed)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    out = args.out or Path(tempfile.mkdtemp(prefix="soak-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.trace:
        args.trace = args.trace.resolve()
        args.trace.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.minutes:g} min per server on {cpu_model()}, {os.cpu_count()} CPUs; "
          f"coturn {coturn_version() if 'coturn' in kinds else 'not run'}; output in {out}", flush=True)
    soaks = []
    with tempfile.TemporaryDirectory(prefix="soak-servers-") as tmp:
        for kind in kinds:
            soaks.append(soak_one(kind, args, Path(tmp) / kind))
    write_csv(soaks, out / "soak.csv")
    for soak in soaks:
        pps = soak.load_pps
        print(f"\n{soak.kind}: {len(pps)} load-test runs, relayed pkt/s per run: "
              f"min {min(pps, default=0):,.0f}, max {max(pps, default=0):,.0f}; errors {len(soak.load_errors)}")
        print(f"{soak.kind}: churn {json.dumps(soak.churn)}")
        for line in verdict(soak, args):
            print(f"{soak.kind}: {line}")
    if args.trace:
        print_trace(args.trace)
    plot({s.kind: s.rows for s in soaks}, out / "soak.svg", f"soak: {args.minutes:g} min, {args.load_clients} x {args.load_rate} pkt/s "
                                   f"+ {args.churn_rate:g} allocations/s churn")
    print(f"\nCSV: {out / 'soak.csv'}\nplot: {out / 'soak.svg'}")


if __name__ == "__main__":
    main()
