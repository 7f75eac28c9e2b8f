#!/usr/bin/env python3
"""Benchmark: STUN Binding requests per second answered, loss and latency, ours vs coturn.

Not a test. Starts each server on 127.0.0.1 with free ports, runs a bounded
load against it, stops it by its process id, and prints one markdown table
row per server, then the response size of each server for a minimal 20-byte
Binding request (the UDP reflection ratio).

Servers:

* ``rendezvous``: ``twistd -n rendezvous --ip 127.0.0.1 --port P --tls-port 0``
  from this interpreter's environment, PYTHONPATH = the repository root, no
  alternate address (so no RFC 5780 attributes).
* ``coturn``: ``turnserver -n --stun-only`` on one listening IP, no TLS/DTLS,
  no CLI, its database and log in a temporary directory (one listening IP,
  so no RFC 5780 attributes either).

Load: ``--clients`` processes (default 1), each with ``--sockets`` connected
UDP sockets, keeps at most ``--window`` requests outstanding, matches answers
by transaction id and counts a request lost after ``--timeout`` seconds.
Each process stops by itself after ``--warmup`` + ``--seconds`` seconds or
``--max-requests`` requests, whichever comes first, then waits at most
``--timeout`` for the stragglers. Only requests sent after the warm-up count.

Pinning: with two or more CPUs the server runs under ``taskset -c 0`` and the
load processes (and this script) on the other CPUs, so generator and server
never share a core; on one CPU nothing is pinned. ``--no-pin`` turns it off.
"Server CPU %" is the server process's user+system time over the measured
seconds (100 = one core busy); "client CPU %" is the load processes' own
CPU time per process. A client near 100 % means the generator, not the
server, set the pace: add ``--clients`` (on more cores) before trusting the
row.

Run from the repository root::

    /tmp/venv0/bin/python bench/stun_binding.py --seconds 5 --clients 1 --window 64
"""

import argparse
import multiprocessing
import os
import platform
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import coturn_version, cpu_model, cpu_seconds, exchange, free_port, stop

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
ALT_LOOPBACK = "127.0.0.2"
HEADER = b"\x00\x01\x00\x00\x21\x12\xa4\x42"  # Binding request, length 0, magic cookie
SUCCESS = b"\x01\x01"
START_TIMEOUT_SECONDS = 20
STOP_TIMEOUT_SECONDS = 10
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


# -- servers ---------------------------------------------------------------------


@dataclass
class Server:
    """A server process we started, and where it answers."""

    name: str
    version: str
    process: subprocess.Popen
    address: tuple[str, int]
    log_path: Path
    command: list[str] = field(default_factory=list)

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_path.read_text(errors='replace')}")
            if exchange(self.address, HEADER + os.urandom(12)):
                return
        self.stop()
        raise RuntimeError(f"{self.name} did not answer in {START_TIMEOUT_SECONDS} s")

    def stop(self) -> None:
        """End the process we started, by its id."""
        stop(self.process)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        return cpu_seconds(self.process.pid)


def pin_prefix(pin: bool) -> list[str]:
    return ["taskset", "-c", "0"] if pin else []


def start_rendezvous(workdir: Path, pin: bool, alternate: bool = False, wrap=lambda command: command,
                     root: Path = ROOT, extra: list[str] = ()) -> Server:
    """``twistd rendezvous`` of the checkout at root on free ports, with extra options; wrap(command) may run it
    in a CpuQuota."""
    port = free_port((LOOPBACK, ALT_LOOPBACK) if alternate else (LOOPBACK,))
    twistd = str(Path(sys.executable).with_name("twistd"))
    command = pin_prefix(pin) + [
        twistd, "-n", "--pidfile=", "rendezvous",
        "--ip", LOOPBACK, "--port", str(port), "--tls-port", "0", "--metrics", "off",
        "--state-dir", str(workdir / "state"), *extra,
    ]
    if alternate:
        alt_port = free_port((LOOPBACK, ALT_LOOPBACK))
        command += ["--alt-ip", ALT_LOOPBACK, "--alt-port", str(alt_port)]
    log_path = workdir / "twistd.log"
    env = dict(os.environ, PYTHONPATH=str(root))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(wrap(command), stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    import twisted

    server = Server("txrendezvous", f"twisted {twisted.__version__}", process, (LOOPBACK, port), log_path, command)
    server.wait_until_answering()
    return server


def start_coturn(workdir: Path, pin: bool, wrap=lambda command: command) -> Server:
    """``turnserver --stun-only`` on a free port; wrap(command) may run it in a CpuQuota."""
    port = free_port()
    command = pin_prefix(pin) + [
        "turnserver", "-n", "--stun-only",
        "--listening-ip", LOOPBACK, "--listening-port", str(port),
        "--no-tls", "--no-dtls", "--no-cli",
        "--userdb", str(workdir / "turndb"),
        "--pidfile", str(workdir / "turnserver.pid"),
        "--log-file", str(workdir / "turnserver.log"), "--simple-log",
    ]
    log_path = workdir / "turnserver.out"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(wrap(command), stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server("coturn", coturn_version(), process, (LOOPBACK, port), log_path, command)
    server.wait_until_answering()
    return server


# -- load ------------------------------------------------------------------------


@dataclass
class Load:
    seconds: float
    warmup: float
    window: int
    sockets: int
    timeout: float
    max_requests: int
    client_cpus: set[int] | None


def load_process(index: int, server: tuple[str, int], load: Load, ready, go, results) -> None:
    """One load process: bounded in time and count; puts its counts and latencies on results."""
    if load.client_cpus:
        os.sched_setaffinity(0, load.client_cpus)
    sockets = []
    for _ in range(load.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        s.bind((LOOPBACK, 0))
        s.connect(server)
        s.setblocking(False)
        sockets.append(s)
    by_fd = {s.fileno(): s for s in sockets}
    poller = select.epoll()
    for s in sockets:
        poller.register(s.fileno(), select.EPOLLIN)

    tag = struct.pack("!I", (os.getpid() << 8 | index) & 0xFFFFFFFF)
    outstanding: dict[bytes, float] = {}  # transaction id -> send time, oldest first
    counts = {"sent": 0, "answered": 0, "lost": 0, "late_or_unknown": 0, "errors": 0, "malformed": 0}
    latencies: list[float] = []
    counter = 0
    clock = time.perf_counter

    ready.set()
    go.wait()
    start = clock()
    measure_from = start + load.warmup
    stop_sending = measure_from + load.seconds
    cpu_start = None
    last_expiry = start

    def receive(now: float) -> None:
        for fd, _ in poller.poll(0.01):
            s = by_fd[fd]
            for _ in range(256):  # bounded drain per wake-up
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                except OSError:
                    counts["errors"] += 1
                    break
                sent_at = outstanding.pop(data[8:20], None)
                if sent_at is None:
                    counts["late_or_unknown"] += 1
                    continue
                if data[:2] != SUCCESS:
                    counts["malformed"] += 1
                    continue
                if sent_at >= measure_from:
                    counts["answered"] += 1
                    latencies.append(clock() - sent_at)

    def expire(now: float) -> None:
        limit = now - load.timeout
        while outstanding:
            tid, sent_at = next(iter(outstanding.items()))
            if sent_at > limit:
                break
            del outstanding[tid]
            if sent_at >= measure_from:
                counts["lost"] += 1

    total_sent = 0
    while True:
        now = clock()
        if now >= stop_sending or total_sent >= load.max_requests:
            break
        if cpu_start is None and now >= measure_from:
            cpu_start = time.process_time()
        while len(outstanding) < load.window and total_sent < load.max_requests:
            counter += 1
            tid = tag + counter.to_bytes(8, "big")
            try:
                sockets[counter % load.sockets].send(HEADER + tid)
            except BlockingIOError:
                break
            except OSError:
                counts["errors"] += 1
                break
            sent_at = clock()
            outstanding[tid] = sent_at
            total_sent += 1
            if sent_at >= measure_from:
                counts["sent"] += 1
        receive(now)
        if now - last_expiry > 0.05:
            expire(now)
            last_expiry = now
    measured_seconds = clock() - measure_from
    cpu_seconds = time.process_time() - (cpu_start if cpu_start is not None else time.process_time())

    drain_until = clock() + load.timeout
    while outstanding and clock() < drain_until:
        receive(clock())
    for sent_at in outstanding.values():
        if sent_at >= measure_from:
            counts["lost"] += 1
    poller.close()
    for s in sockets:
        s.close()
    results.put((counts, measured_seconds, cpu_seconds, latencies))


def run_load(server: Server, load: Load, clients: int) -> dict:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    go = context.Event()
    readies = [context.Event() for _ in range(clients)]
    processes = [
        context.Process(target=load_process, args=(i, server.address, load, readies[i], go, results), daemon=True)
        for i in range(clients)
    ]
    for p in processes:
        p.start()
    for ready in readies:
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("a load process did not start")
    go.set()
    time.sleep(load.warmup)
    cpu_before, wall_before = server.cpu_seconds(), time.perf_counter()
    time.sleep(load.seconds)
    server_cpu = (server.cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
    budget = load.warmup + load.seconds + load.timeout + START_TIMEOUT_SECONDS
    collected = [results.get(timeout=budget) for _ in processes]
    for p in processes:
        p.join(STOP_TIMEOUT_SECONDS)
    totals: dict[str, int] = {}
    latencies: list[float] = []
    seconds = []
    client_cpu = []
    for counts, measured_seconds, process_cpu, lat in collected:
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        latencies.extend(lat)
        seconds.append(measured_seconds)
        client_cpu.append(process_cpu / measured_seconds if measured_seconds else 0.0)
    latencies.sort()
    seconds_measured = max(seconds)
    return {
        **totals,
        "rate": totals["answered"] / seconds_measured,
        "loss": 100.0 * totals["lost"] / totals["sent"] if totals["sent"] else 0.0,
        "p50_us": 1e6 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_us": 1e6 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        "server_cpu": 100.0 * server_cpu,
        "client_cpu": 100.0 * statistics.mean(client_cpu),
    }


# -- report ----------------------------------------------------------------------


def machine_facts() -> list[str]:
    model = cpu_model()
    try:
        dpkg = subprocess.run(["dpkg-query", "-W", "coturn"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dpkg = "not installed"
    return [
        f"- nproc: {os.cpu_count()}",
        f"- CPU: {model}",
        f"- kernel: {platform.release()}",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- coturn: turnserver --version = {coturn_version()}; dpkg: {dpkg or 'not installed'}",
    ]


def response_sizes(workdir: Path) -> list[str]:
    """Response length for one minimal 20-byte Binding request, per server configuration."""
    rows = []
    configs = [
        ("txrendezvous, no --alt-ip", lambda d: start_rendezvous(d, pin=False)),
        ("txrendezvous, --alt-ip 127.0.0.2", lambda d: start_rendezvous(d, pin=False, alternate=True)),
    ]
    if shutil.which("turnserver"):
        configs.append(("coturn --stun-only, one listening IP", lambda d: start_coturn(d, pin=False)))
    for n, (label, start) in enumerate(configs):
        sub = workdir / f"size{n}"
        sub.mkdir()
        server = start(sub)
        try:
            request = HEADER + os.urandom(12)
            answer = exchange(server.address, request, timeout=2.0)
            classic = exchange(server.address, b"\x00\x01\x00\x00" + os.urandom(16), timeout=2.0)
        finally:
            server.stop()
        size = len(answer) if answer else 0
        classic_size = len(classic) if classic else 0
        rows.append(
            f"| {label} | {len(request)} | {size} | {size / len(request):.2f} | {classic_size} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    parser.add_argument("--clients", type=int, default=1, help="load processes (default 1)")
    parser.add_argument("--sockets", type=int, default=4, help="UDP sockets per load process (default 4)")
    parser.add_argument("--window", type=int, default=64, help="outstanding requests per load process (default 64)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a request counts as lost (default 1)")
    parser.add_argument("--max-requests", type=int, default=20_000_000, help="requests per load process at most")
    parser.add_argument("--servers", default="rendezvous,coturn", help="comma list: rendezvous, coturn")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients to CPUs")
    parser.add_argument("--no-sizes", action="store_true", help="skip the response size measurement")
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    pin = not args.no_pin and cpus >= 2 and shutil.which("taskset") is not None
    client_cpus = set(range(1, cpus)) if pin else None
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    load = Load(args.seconds, args.warmup, args.window, args.sockets, args.timeout, args.max_requests, client_cpus)

    print("## Machine\n")
    print("\n".join(machine_facts()))
    print(f"\nCommand: `{' '.join([sys.executable] + sys.argv)}`")
    print(
        f"Load: {args.clients} process(es) x {args.sockets} sockets, window {args.window}, "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s measured, loss after {args.timeout:g} s; "
        + (f"server pinned to CPU 0, load to CPU(s) {sorted(client_cpus)}" if pin else "no CPU pinning")
    )
    print("\n| server | version | answered req/s | loss % | p50 µs | p99 µs | server CPU % | client CPU % | sent |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    starters = {"rendezvous": start_rendezvous, "coturn": start_coturn}
    with tempfile.TemporaryDirectory(prefix="stun-bench-") as tmp:
        for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
            if name == "coturn" and not shutil.which("turnserver"):
                print("| coturn | not installed | | | | | | | |")
                continue
            workdir = Path(tmp) / name
            workdir.mkdir()
            server = starters[name](workdir, pin)
            try:
                r = run_load(server, load, args.clients)
            finally:
                server.stop()
            print(
                f"| {server.name} | {server.version} | {r['rate']:,.0f} | {r['loss']:.2f} | {r['p50_us']:,.0f} | "
                f"{r['p99_us']:,.0f} | {r['server_cpu']:.0f} | {r['client_cpu']:.0f} | {r['sent']:,} |",
                flush=True,
            )
        if not args.no_sizes:
            print("\n## Response size for a minimal Binding request\n")
            print("| server | request bytes | response bytes | ratio | response to a 20-byte RFC 3489 request |")
            print("| --- | ---: | ---: | ---: | ---: |")
            sizes = Path(tmp) / "sizes"
            sizes.mkdir()
            print("\n".join(response_sizes(sizes)))


if __name__ == "__main__":
    main()
