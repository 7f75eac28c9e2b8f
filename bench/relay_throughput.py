#!/usr/bin/env python3
"""Benchmark: TURN relay throughput, loss and RTT, our relay vs coturn, one core each.

Not a test. In one run, for each server in ``--servers`` (default: ours,
coturn with ``--relay-threads 1``, coturn with its default threads), and for
each payload size in ``--sizes`` and each per-client rate in ``--rates``:

1. start the server under ``taskset -c 0`` on a free loopback port, and wait
   until it answers a STUN Binding request;
2. run ``python -m rendezvous.cli.main load-test ... --mode channel --json`` under
   ``taskset -c 1`` against it (``--clients`` allocations, each sending
   ``--size`` bytes at ``--rate`` pkt/s for ``--seconds``);
3. while packets flow, at each of the generator's once-a-second progress
   lines, read the server's and the generator's user+system CPU time from
   ``/proc/PID/stat`` (all threads), ``/proc/stat`` for both cores, the CPU
   time of every other process (background load), and the receive-buffer
   drops of the server's and the generator's UDP sockets
   (``/proc/net/udp``); the measured window runs from the first progress
   line (1 s into sending) to the last;
4. stop the server by its process id (SIGTERM, then SIGKILL).

Our relay gets ``--metrics off`` when it has that option: its HTTP listener
has a fixed default port (127.0.0.1:9641), which any other relay on the
machine would already hold, and it is not on the data path.

Each combination gets a freshly started server; before each, the script
waits (at most ``--quiet-wait`` seconds) for a second in which the whole
machine is under ``--quiet-percent`` busy. Rows are interleaved (for
one size and rate, every server in turn), so background load drifting over
the run hits every server alike. At the end it prints the machine facts,
the exact commands and one markdown table per payload size.

With ``--server-cpu-quota PERCENT`` each server runs in a control group
the script makes (and removes) that grants it that share of one core in
every 10 ms: the server then runs out of CPU before the generator does,
and the relayed pkt/s where loss begins is its capacity with that much
CPU (the generator alone cannot saturate a whole core's worth of relay on
a 2-core machine). Needs root.

Every load-test run is bounded by ``--seconds`` (and the generator's own
setup, drain and teardown bounds) and by a subprocess timeout. Loopback only.

    /tmp/venv0/bin/python bench/relay_throughput.py
    /tmp/venv0/bin/python bench/relay_throughput.py --seconds 8 --sizes 100,1000 --rates 2000,4000,6000 --clients 10
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    CpuQuota,
    coturn_version,
    cpu_model,
    cpu_seconds,
    exchange,
    free_port,
    process_tree,
    stop,
    tree_cpu_split,
)

ROOT = Path(__file__).resolve().parent.parent
IP = "127.0.0.1"
USER, PASSWORD, REALM = "bench", "bench-pw", "example.org"
BINDING = b"\x00\x01\x00\x00\x21\x12\xa4\x42"  # Binding request header, length 0, magic cookie
START_TIMEOUT_SECONDS = 20
STOP_TIMEOUT_SECONDS = 10
SERVER_CPU, LOAD_CPU = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVER_LABELS = {
    "ours": "ours (twistd relay)",
    "base": "ours at --base-root",
    "coturn1": "coturn --relay-threads 1",
    "coturn": "coturn default threads",
}


# -- servers -----------------------------------------------------------------------


def answers_binding(address: tuple[str, int], timeout: float = 0.3) -> bool:
    answer = exchange(address, BINDING + os.urandom(12), timeout)
    return answer is not None and answer[:2] == b"\x01\x01"


def other_cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every other process on the machine (background load), by pid.

    A process that starts and ends between two readings is missed; the core
    busy figures from /proc/stat catch it.
    """
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, ValueError, IndexError):
                continue
    return out


def machine_busy_percent(seconds: float = 1.0) -> float:
    """How busy all CPUs together were over the next `seconds` (100 = one core), from /proc/stat."""
    before = per_cpu_ticks()
    time.sleep(seconds)
    after = per_cpu_ticks()
    busy = sum(after[c][0] - before[c][0] for c in after if c in before)
    total = sum(after[c][1] - before[c][1] for c in after if c in before)
    return 100 * len(after) * busy / max(1, total)


def wait_until_quiet(limit_percent: float, max_wait: float) -> float:
    """Wait (at most max_wait seconds) for a second in which the machine is under limit_percent busy.

    Returns the busy percentage of the last second measured."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy_percent()
    while busy > limit_percent and time.monotonic() < deadline:
        busy = machine_busy_percent()
    return busy


def per_cpu_ticks() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per CPU line of /proc/stat ("cpu0", "cpu1", ...)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                numbers = [int(v) for v in values[:8]]
                idle = numbers[3] + numbers[4]  # idle + iowait
                out[name] = (sum(numbers) - idle, sum(numbers))
    return out


def udp_errors() -> dict[str, int]:
    """The kernel's UDP RcvbufErrors and SndbufErrors (all sockets, all processes)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    table = dict(zip(rows[0][1:], (int(v) for v in rows[1][1:])))
    return {"rcvbuf": table.get("RcvbufErrors", 0), "sndbuf": table.get("SndbufErrors", 0)}


def server_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a server's processes hold open."""
    return set().union(*(socket_inodes(member) for member in process_tree(pid)))


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def udp_socket_drops() -> dict[str, int]:
    """Datagrams each IPv4 UDP socket dropped (full receive buffer), by inode, from /proc/net/udp."""
    drops = {}
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 13:
                drops[fields[9]] = int(fields[12])
    return drops


@dataclass
class Server:
    kind: str
    command: list[str]
    process: subprocess.Popen
    address: tuple[str, int]
    log_path: Path

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log_path.read_text(errors='replace')[-2000:]}")
            if answers_binding(self.address):
                time.sleep(0.5)  # let it finish starting (coturn starts its relay threads after listening)
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer a Binding request within {START_TIMEOUT_SECONDS} s")

    def stop(self) -> None:
        """End the process we started, by its id."""
        stop(self.process)

    def threads(self) -> int:
        """Threads of all its processes."""
        count = 0
        for member in process_tree(self.process.pid):
            try:
                count += len(os.listdir(f"/proc/{member}/task"))
            except OSError:
                pass
        return count


_METRICS_OPTION: list[bool] = []


def relay_has_metrics_option() -> bool:
    """Whether `twistd relay` has --metrics (an HTTP listener on a fixed default port, 127.0.0.1:9641)."""
    if not _METRICS_OPTION:
        twistd = str(Path(sys.executable).with_name("twistd"))
        try:
            out = subprocess.run([twistd, "relay", "--help"], check=False, capture_output=True, text=True, timeout=30,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        _METRICS_OPTION.append("--metrics" in out)
    return _METRICS_OPTION[0]


def server_command(kind: str, workdir: Path, port: int, relay_ports: tuple[int, int]) -> list[str]:
    low, high = relay_ports
    if kind in ("ours", "base"):
        twistd = str(Path(sys.executable).with_name("twistd"))
        command = ["taskset", "-c", SERVER_CPU, twistd, "-n", "--pidfile=", "relay",
                   "--ip", IP, "--port", str(port), "--tls-port", "0",
                   "--user", f"{USER}:{PASSWORD}", "--realm", REALM, "--allow-peer", "127.0.0.0/8",
                   "--relay-ports", f"{low}-{high}", "--state-dir", str(workdir / "state")]
        if relay_has_metrics_option():
            # Its fixed default port would clash with any other relay on this machine; not on the data path.
            command += ["--metrics", "off"]
        return command
    command = ["taskset", "-c", SERVER_CPU, "turnserver", "-n",
               "--listening-ip", IP, "--listening-port", str(port), "--relay-ip", IP,
               "--min-port", str(low), "--max-port", str(high), "--realm", REALM,
               "--user", f"{USER}:{PASSWORD}", "--lt-cred-mech",
               "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
               "--userdb", str(workdir / "turndb"), "--pidfile", str(workdir / "turn.pid"),
               "--log-file", str(workdir / "turn.log"), "--simple-log", "--no-stdout-log"]
    if kind == "coturn1":
        command += ["--relay-threads", "1"]
    return command


def start_server(kind: str, workdir: Path, relay_ports: tuple[int, int], base_root: Path | None = None,
                 quota: CpuQuota | None = None) -> Server:
    workdir.mkdir(parents=True)
    port = free_port((IP,))
    command = server_command(kind, workdir, port, relay_ports)
    if quota is not None:
        command = quota.wrap(command)
    log_path = workdir / "server.out"
    env = dict(os.environ, PYTHONPATH=str(base_root if kind == "base" else ROOT))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=workdir, env=env)
    server = Server(kind, command, process, (IP, port), log_path)
    server.wait_until_answering()
    return server


# -- one load-test run ---------------------------------------------------------------


@dataclass
class Sample:
    """Readings taken when the generator printed a progress line."""

    at: float
    elapsed: float  # the generator's own "[ N.N s]"
    server_cpu: float
    server_user_system: tuple[float, float]
    load_cpu: float
    cpus: dict[str, tuple[int, int]]
    udp: dict[str, int]
    server_drops: int
    load_drops: int
    others: dict[int, float]


@dataclass
class Run:
    server: str
    size: int
    rate: int
    command: list[str]
    report: dict | None = None
    error: str | None = None
    server_cpu_percent: float | None = None
    server_user_us: float | None = None  # the server's user CPU time per relayed packet, µs
    server_system_us: float | None = None  # ... and its system (kernel) time
    load_cpu_percent: float | None = None  # the generator process, by /proc, same window
    core_busy: dict[str, float] = field(default_factory=dict)
    udp_errors: dict[str, int] = field(default_factory=dict)
    server_socket_drops: int | None = None  # receive-buffer drops at the server's own sockets
    load_socket_drops: int | None = None  # ... at the generator's client and peer sockets
    window_seconds: float = 0.0
    server_threads: int = 0
    other_cpu_percent: float | None = None  # every other process on the machine, same window
    busy_before_percent: float | None = None  # the whole machine, in the second before the server started


def load_command(server: Server, args: argparse.Namespace, size: int, rate: int) -> list[str]:
    return ["taskset", "-c", LOAD_CPU, sys.executable, "-m", "rendezvous.cli.main", "load-test",
            "--server", f"{server.address[0]}:{server.address[1]}", "--user", f"{USER}:{PASSWORD}",
            "--realm", REALM, "--transport", args.transport, "--clients", str(args.clients),
            "--processes", str(args.processes), "--mode", args.mode,
            "--size", str(size), "--rate", str(rate), "--seconds", f"{args.seconds:g}",
            "--peer-ip", IP, "--json"]


def run_load(server: Server, args: argparse.Namespace, size: int, rate: int, workdir: Path) -> Run:
    command = load_command(server, args, size, rate)
    run = Run(server.kind, size, rate, command, server_threads=server.threads())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    samples: list[Sample] = []
    stderr_lines: list[str] = []
    timeout = args.seconds + 60  # setup (10 s) + drain (1 s) + teardown + start-up, with room to spare
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               cwd=ROOT, env=env, text=True)

    def read_stderr() -> None:
        # Take the readings right when a progress line arrives: "[   3.0 s] sent ...".
        for line in process.stderr:
            stderr_lines.append(line)
            if line.startswith("["):
                try:
                    elapsed = float(line[1:].split("s]", 1)[0])
                    at = time.monotonic()
                    user_system = tree_cpu_split(server.process.pid)
                    server_cpu, load_cpu = sum(user_system), cpu_seconds(process.pid)
                    cpus, udp = per_cpu_ticks(), udp_errors()
                    drops = udp_socket_drops()
                    server_drops = sum(drops.get(i, 0) for i in server_inodes(server.process.pid))
                    load_drops = sum(drops.get(i, 0) for i in socket_inodes(process.pid))
                    ours = {*process_tree(server.process.pid), *process_tree(process.pid), os.getpid()}
                    others = other_cpu_seconds(ours)
                    samples.append(Sample(at, elapsed, server_cpu, user_system, load_cpu, cpus, udp, server_drops,
                                          load_drops, others))
                except (OSError, ValueError, IndexError):
                    pass

    stdout_parts: list[str] = []
    reader = threading.Thread(target=read_stderr, daemon=True)
    stdout_reader = threading.Thread(target=lambda: stdout_parts.append(process.stdout.read()), daemon=True)
    reader.start()
    stdout_reader.start()
    # Not communicate(): it would read stderr too, and take progress lines away from read_stderr.
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # the generator we started, by its handle
        process.wait(STOP_TIMEOUT_SECONDS)
        run.error = f"load test timed out after {timeout:g} s"
    reader.join(STOP_TIMEOUT_SECONDS)
    stdout_reader.join(STOP_TIMEOUT_SECONDS)
    stdout = "" if run.error else "".join(stdout_parts)
    (workdir / "load.err").write_text("".join(stderr_lines))
    if stdout.strip():
        try:
            run.report = json.loads(stdout)
        except json.JSONDecodeError:
            run.error = f"unparsable report: {stdout[:200]!r}"
    elif run.error is None:
        run.error = f"exit {process.returncode}: {''.join(stderr_lines[-3:]).strip()}"

    # The measured window: from the first progress line (1 s into sending) to
    # the last one within the sending time; the first second is a warm-up.
    window = [s for s in samples if s.elapsed <= args.seconds + 0.5]
    if len(window) >= 2:
        first, last = window[0], window[-1]
        wall = last.at - first.at
        run.window_seconds = wall
        run.server_cpu_percent = 100 * (last.server_cpu - first.server_cpu) / wall
        run.load_cpu_percent = 100 * (last.load_cpu - first.load_cpu) / wall
        if run.report and run.report.get("relayed_pps"):
            relayed = run.report["relayed_pps"] * wall  # the report's rate over the whole run, times the window
            run.server_user_us = 1e6 * (last.server_user_system[0] - first.server_user_system[0]) / relayed
            run.server_system_us = 1e6 * (last.server_user_system[1] - first.server_user_system[1]) / relayed
        for cpu, (busy, total) in last.cpus.items():
            busy0, total0 = first.cpus.get(cpu, (busy, total))
            run.core_busy[cpu] = 100 * (busy - busy0) / max(1, total - total0)
        run.udp_errors = {k: last.udp[k] - first.udp[k] for k in last.udp}
        run.server_socket_drops = last.server_drops - first.server_drops
        run.load_socket_drops = last.load_drops - first.load_drops
        run.other_cpu_percent = 100 * sum(cpu - first.others.get(pid, 0.0) for pid, cpu in last.others.items()
                                          if cpu >= first.others.get(pid, 0.0)) / wall
    return run


NOTES = """\
{clients} clients over {transport}, {mode} mode, {seconds:g} s of sending per run.

- Server CPU %: the server's user+system time (all threads) over the window from the generator's
  first progress line (1 s into sending) to its last; 100 = one core.
- Server CPU µs per relayed pkt: the server's CPU time over that window divided by the packets it
  relayed in the window (the report's relayed pkt/s times the window); user µs and system µs
  split it (system: the kernel's work in the server's socket calls).
- Generator CPU %: from the load-test report (CPU-bound = at least 90 %).
- Core busy %: /proc/stat for the whole core over the same window (the server or the generator,
  plus softirq and anything else running there).
- Drops: datagrams the kernel dropped because a socket's receive buffer was full
  (/proc/net/udp), same window, at the server's sockets and at the generator's sockets.
- Other processes CPU %: every other process on the machine (background load, kernel threads
  such as ksoftirqd), same window. It should be near 0. Processes that start and end between
  two readings are missed; core busy % well above the server's (or generator's) CPU % shows them.
- Machine busy before %: all CPUs in the second before the server was started; each run first
  waits (bounded by --quiet-wait) for such a second below --quiet-percent.
"""


# -- report ----------------------------------------------------------------------------


def machine_facts() -> list[str]:
    model = cpu_model()
    try:
        import twisted

        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = "not importable"
    try:
        dpkg = subprocess.run(["dpkg-query", "-W", "coturn"], check=False, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dpkg = ""

    def sysctl(name: str) -> str:
        try:
            return Path("/proc/sys/net/core", name).read_text().strip()
        except OSError:
            return "?"

    return [
        f"- nproc: {os.cpu_count()}",
        f"- CPU: {model}",
        f"- kernel: {platform.release()}",
        f"- Python: {platform.python_version()} ({sys.executable}), Twisted {twisted_version}",
        f"- coturn: turnserver --version = {coturn_version()}; dpkg: {dpkg or 'not installed'}",
        (f"- net.core.rmem_default = {sysctl('rmem_default')}, rmem_max = {sysctl('rmem_max')}, "
         f"wmem_max = {sysctl('wmem_max')}"),
    ]


def fmt(value, spec: str = ",.0f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def table(runs: list[Run], size: int, mode: str) -> list[str]:
    columns = ["server", "offered pkt/s", "relayed pkt/s (both ways)", "back pkt/s", "loss fwd %", "loss ret %",
               "loss %", "RTT p50 ms", "p90 ms", "p99 ms", "server CPU %", "server CPU µs per relayed pkt",
               "user µs", "system µs", "threads", "generator CPU %",
               "generator kept up", "machine busy before %", "other processes CPU %", "core0 busy %",
               "core1 busy %", "drops at server sockets", "drops at generator sockets"]
    lines = [
        f"### Payload {size} B, {mode} mode\n",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" if c in ("server", "generator kept up") else "---:" for c in columns) + " |",
    ]
    for run in runs:
        if run.size != size:
            continue
        label = SERVER_LABELS.get(run.server, run.server)
        r = run.report
        if r is None:
            lines.append(f"| {label} | {run.rate}/client | failed: {run.error} |" + " |" * (len(columns) - 3))
            continue
        rtt = r["rtt_ms"]
        per_packet = None if run.server_user_us is None else run.server_user_us + run.server_system_us
        bound = " (CPU-bound)" if r["generator_cpu_bound"] else ""
        lines.append(
            f"| {label} | {fmt(r['offered_pps'])} | {fmt(r['relayed_pps'])} | {fmt(r['received_pps'])} "
            f"| {fmt(r['loss_forward_percent'], '.2f')} | {fmt(r['loss_return_percent'], '.2f')} "
            f"| {fmt(r['loss_percent'], '.2f')} | {fmt(rtt['p50'], '.3f')} | {fmt(rtt['p90'], '.3f')} "
            f"| {fmt(rtt['p99'], '.3f')} | {fmt(run.server_cpu_percent)} "
            f"| {fmt(per_packet, '.2f')} | {fmt(run.server_user_us, '.2f')} | {fmt(run.server_system_us, '.2f')} "
            f"| {run.server_threads} "
            f"| {fmt(r['generator_cpu_percent'])}{bound} | {'yes' if r['generator_kept_up'] else 'no'} "
            f"| {fmt(run.busy_before_percent)} | {fmt(run.other_cpu_percent)} "
            f"| {fmt(run.core_busy.get('cpu' + SERVER_CPU))} | {fmt(run.core_busy.get('cpu' + LOAD_CPU))} "
            f"| {fmt(run.server_socket_drops, ',d')} | {fmt(run.load_socket_drops, ',d')} |"
        )
    return lines


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_range(text: str) -> tuple[int, int]:
    low, high = (int(p) for p in text.split("-", 1))
    if not 1024 <= low <= high <= 65535:
        raise argparse.ArgumentTypeError("expected LOW-HIGH within 1024-65535")
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="sending seconds per run, 3 to 120 (default 8)")
    parser.add_argument("--sizes", type=parse_ints, default=[100, 1000], help="payload bytes, comma list (100,1000)")
    parser.add_argument("--rates", type=parse_ints, default=[2000, 4000, 6000],
                        help="pkt/s per client, comma list (2000,4000,6000)")
    parser.add_argument("--clients", type=int, default=10, help="allocations per run (default 10)")
    parser.add_argument("--processes", type=int, default=1,
                        help="generator processes, all on the generator's CPU (default 1)")
    parser.add_argument("--mode", choices=("channel", "send"), default="channel", help="default channel")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                        help="the clients' transport to the relay (default udp; ChannelData framed on TCP)")
    parser.add_argument("--servers", default="ours,coturn1,coturn",
                        help="comma list of ours, base (ours from --base-root), coturn1 (--relay-threads 1), "
                             "coturn (default threads)")
    parser.add_argument("--base-root", type=Path,
                        help="another checkout of this repository (e.g. a `git archive` of an older commit): "
                             "server 'base' runs its relay, for before/after figures in one run")
    parser.add_argument("--relay-ports", type=parse_range, default=(46000, 46999),
                        help="relayed port range for every server (default 46000-46999)")
    parser.add_argument("--quiet-percent", type=float, default=10.0,
                        help="before each run, wait for a second with the machine below this busy %% (default 10)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="wait at most this many seconds for that quiet second (default 60; 0 = no wait)")
    parser.add_argument("--all-cores", action="store_true",
                        help="server and generator may both use every CPU (ours: one worker per core; "
                             "coturn: its default threads); server CPU sums all its processes")
    parser.add_argument("--server-cpu-quota", type=float, metavar="PERCENT",
                        help="cap each server at PERCENT of one core (a cgroup we make; root): finds the relayed "
                             "pkt/s a server sustains when it, not the generator, runs out of CPU")
    parser.add_argument("--json-out", type=Path, help="also write every run's data to this JSON file")
    args = parser.parse_args()
    if not 3 <= args.seconds <= 120:
        parser.error("--seconds must be within 3 and 120 (the CPU window needs two progress lines)")
    if not 1 <= args.clients <= args.relay_ports[1] - args.relay_ports[0] + 1:
        parser.error("--clients must be between 1 and the size of --relay-ports")
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        sys.exit("needs 2 CPUs and taskset: the server runs on CPU 0, the generator on CPU 1")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for kind in servers:
        if kind not in SERVER_LABELS:
            parser.error(f"unknown server {kind!r}")
    if "base" in servers and (args.base_root is None or not (args.base_root / "relay").is_dir()):
        parser.error("server 'base' needs --base-root, a checkout with a relay/ folder")
    if shutil.which("turnserver") is None:
        servers = [s for s in servers if s in ("ours", "base")]
    global SERVER_CPU, LOAD_CPU
    if args.all_cores:
        SERVER_CPU = LOAD_CPU = f"0-{os.cpu_count() - 1}"
    else:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # this script's own sampling stays off the server's core

    if args.server_cpu_quota is not None:
        if not 1 <= args.server_cpu_quota <= 100:
            parser.error("--server-cpu-quota must be within 1 and 100")
        try:
            quota = CpuQuota(args.server_cpu_quota)
        except OSError as e:
            sys.exit(f"--server-cpu-quota needs a writable cgroup cpu controller (root): {e}")
    else:
        quota = None

    runs: list[Run] = []
    server_commands: dict[str, list[str]] = {}
    total = len(servers) * len(args.sizes) * len(args.rates)
    try:
        with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
            for size in args.sizes:
                for rate in args.rates:
                    for kind in servers:  # interleaved: drifting background load hits every server alike
                        busy_before = wait_until_quiet(args.quiet_percent, args.quiet_wait)
                        workdir = Path(tmp) / f"{len(runs) + 1:02d}-{kind}-{size}-{rate}"
                        try:
                            server = start_server(kind, workdir, args.relay_ports, args.base_root, quota)
                        except RuntimeError as e:  # it exited early or never answered: a failed row, go on
                            runs.append(Run(kind, size, rate, [], error=str(e).splitlines()[0]))
                            print(f"[{len(runs)}/{total}] {kind}: {e}", file=sys.stderr, flush=True)
                            continue
                        try:
                            run = run_load(server, args, size, rate, workdir)
                        finally:
                            server.stop()
                        run.busy_before_percent = busy_before
                        runs.append(run)
                        server_commands.setdefault(kind, server.command)
                        r = run.report or {}
                        print(f"[{len(runs)}/{total}] {kind:8} {size:5} B {args.clients} x {rate} pkt/s: "
                              f"relayed {fmt(r.get('relayed_pps'))} pkt/s, "
                              f"loss {fmt(r.get('loss_percent'), '.2f')} %, "
                              f"server CPU {fmt(run.server_cpu_percent)} %, generator CPU "
                              f"{fmt(r.get('generator_cpu_percent'))} %{'  ' + run.error if run.error else ''}",
                              file=sys.stderr, flush=True)
    finally:
        if quota is not None:
            quota.remove()
    print("## Machine\n")
    print("\n".join(machine_facts()))
    print("\n## Commands\n")
    print(f"Benchmark: `{shlex.join([sys.executable] + sys.argv)}`\n")
    print("Servers (each run gets a fresh one; the port and temporary directory vary; 'base' is the same "
          f"command with PYTHONPATH={args.base_root}):\n")
    print("```")
    for kind, command in server_commands.items():
        print(shlex.join(command))
    print("```\n")
    print("Generator (one example; --size and --rate vary):\n")
    print("```")
    example = next((run.command for run in runs if run.command), None)
    if example:
        print(shlex.join(example))
    print("```\n")
    print(NOTES.format(clients=args.clients, transport=args.transport.upper(), mode=args.mode,
                       seconds=args.seconds))
    if quota is not None:
        print(f"Each server was capped at {args.server_cpu_quota:g} % of one core ({quota.path}, "
              f"{CpuQuota.PERIOD_US // 1000} ms periods): where loss appears, the relayed pkt/s is what the "
              "server sustains with that much CPU.\n")
    for size in args.sizes:
        print("\n".join(table(runs, size, args.mode)))
        print()
    if args.json_out:
        args.json_out.write_text(json.dumps([run.__dict__ for run in runs], indent=2, default=str))


if __name__ == "__main__":
    main()
