"""Benchmark: authenticated allocations per second on one core, our relay beside coturn (issue 16, goal 3).

    sudo .venv/bin/python bench/allocation_rate.py [--seconds 20] [--lanes 32] [--rate 300] [--rounds 1]
        [--base-root DIR] [--cpu-quota PERCENT]

Not a test. Each server runs pinned to core 0 (``taskset``), the generator on
core 1. A *cycle* is one client's whole allocation life on a fresh UDP socket
bound to a rotating loopback address (as clients come from many hosts):
Allocate without credentials (401, RFC 8656 §7.2 / RFC 8489 §9.2), Allocate
with the long-term credential, CreatePermission (§10), ChannelBind (§12), and
Refresh with LIFETIME 0 (§8), each answered with success. ``--lanes`` cycles
run side by side; each lane starts its next cycle as soon as one ends.

Two measurements per server, and a third with ``--cpu-quota``:
- capacity: lanes run flat out for ``--seconds``; cycles/s, and the server's
  and the generator's CPU (a generator at 100 % makes the figure a floor);
- cost: cycles paced at ``--rate`` per second (one that both servers keep up
  with), and the server's CPU milliseconds per cycle; with ``--rounds N``
  the servers take turns N times, ``--seconds / N`` each, so that load from
  other work on the machine, which moves the figure by tens of percent at
  this rate, falls on all of them alike (each round begins with the next
  server, so none keeps the first or last place; the ratio of each round is
  given);
- quota: lanes flat out again with the server held to ``--cpu-quota``
  percent of its core (a cgroup's CFS bandwidth, ``common.CpuQuota``), so
  the server, not the generator, is the limit: cycles/s, and that scaled to
  a whole core.
With ``--base-root`` (an unpacked older checkout, its C extensions built)
that relay is measured too, as ``base``, between ours and coturn. The
servers are all started first (an idle one costs next to nothing), each
with its own slice of the relay ports, and every quota unlimited. Bounded:
every phase has a deadline, every request a timeout; servers are stopped by
their process handles.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CpuQuota, coturn_version, cpu_model, free_port, stop, tree_cpu_split
from relay_throughput import IP, PASSWORD, REALM, USER, server_command

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rendezvous.stun import Attr, Class, Message, Method  # noqa: E402
from rendezvous.stun.attributes import encode_requested_transport, encode_uint32  # noqa: E402
from rendezvous.stun.integrity import long_term_key  # noqa: E402

RELAY_PORTS = (40000, 60000)
REQUEST_TIMEOUT_SECONDS = 2.0
KEY = long_term_key(USER, REALM, PASSWORD)
PEER = (IP, 9)
CHANNEL = 0x4000


def source_ip(number: int) -> str:
    """127.0.1.1 ... 127.0.200.250 in turn: one loopback 'host' per cycle, as per-source limits expect."""
    return f"127.0.{1 + (number // 250) % 200}.{1 + number % 250}"


class Lane:
    """One client after another, each walking the five requests of a cycle."""

    STEPS = ("challenge", "allocate", "permission", "channel", "release")

    def __init__(self, server: tuple[str, int], selector: selectors.BaseSelector, numbers) -> None:
        self.server, self.selector, self.numbers = server, selector, numbers
        self.sock: socket.socket | None = None
        self.step = 0
        self.nonce = b""
        self.transaction = b""
        self.sent_at = 0.0
        self.cycles = self.failures = 0

    def start(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source_ip(next(self.numbers)), 0))
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, self)
        self.step = 0
        self.send()

    def request(self) -> bytes:
        name = self.STEPS[self.step]
        if name == "challenge":
            return Message(Method.ALLOCATE, Class.REQUEST).add(
                Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)).encode()
        method = {"allocate": Method.ALLOCATE, "permission": Method.CREATE_PERMISSION,
                  "channel": Method.CHANNEL_BIND, "release": Method.REFRESH}[name]
        message = Message(method, Class.REQUEST)
        if name == "allocate":
            message.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
        elif name == "permission":
            message.add_address(Attr.XOR_PEER_ADDRESS, PEER)
        elif name == "channel":
            message.add(Attr.CHANNEL_NUMBER, encode_uint32(CHANNEL << 16)).add_address(Attr.XOR_PEER_ADDRESS, PEER)
        else:
            message.add(Attr.LIFETIME, encode_uint32(0))
        message.add(Attr.USERNAME, USER.encode()).add(Attr.REALM, REALM.encode()).add(Attr.NONCE, self.nonce)
        return message.encode(integrity_key=KEY)

    def send(self) -> None:
        data = self.request()
        self.transaction = data[8:20]
        self.sent_at = time.monotonic()
        self.sock.sendto(data, self.server)

    def readable(self, now: float) -> bool:
        """Take an answer; True when the cycle is over (the lane is then idle)."""
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return False
        if data[8:20] != self.transaction:
            return False
        answer = Message.decode(data)
        expected = Class.ERROR if self.step == 0 else Class.SUCCESS
        if answer.cls != expected:
            return self.fail()
        if self.step == 0:
            self.nonce = answer.get(Attr.NONCE)
        self.step += 1
        if self.step == len(self.STEPS):
            self.cycles += 1
            self.close()
            return True
        self.send()
        return False

    def late(self, now: float) -> bool:
        return self.sock is not None and now - self.sent_at > REQUEST_TIMEOUT_SECONDS and self.fail()

    def fail(self) -> bool:
        self.failures += 1
        self.close()
        return True

    def close(self) -> None:
        self.selector.unregister(self.sock)
        self.sock.close()
        self.sock = None


def drive(server: tuple[str, int], lanes: int, seconds: float, rate: float | None, first: int) -> dict:
    """Run lanes for seconds; with rate, start at most rate cycles a second. Cycles, failures, generator CPU."""
    selector = selectors.DefaultSelector()
    numbers = iter(range(first, first + 10**7))
    pool = [Lane(server, selector, numbers) for _ in range(lanes)]
    idle = list(pool)
    started = time.monotonic()
    cpu_started = time.process_time()
    begun = 0
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            break
        while idle and (rate is None or begun < rate * (now - started)):
            idle.pop().start()
            begun += 1
        for key, _ in selector.select(0.002):
            lane = key.data
            if lane.readable(now):
                idle.append(lane)
        for lane in pool:
            if lane.late(now):
                idle.append(lane)
    busy = [lane for lane in pool if lane.sock is not None]
    for lane in busy:
        lane.close()
    elapsed = time.monotonic() - started
    return {"cycles": sum(lane.cycles for lane in pool), "failures": sum(lane.failures for lane in pool),
            "abandoned_in_flight": len(busy), "seconds": round(elapsed, 2),
            "generator_cpu_percent": round(100 * (time.process_time() - cpu_started) / elapsed, 1)}


def server_cpu(pid: int) -> float:
    """CPU seconds of the server and any workers it started."""
    return sum(tree_cpu_split(pid))


def answering(server: tuple[str, int], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(Message(Method.BINDING, Class.REQUEST).encode(), server)
            try:
                s.recv(2048)
                return True
            except OSError:
                continue
    return False


class Running:
    """One server, started for the whole run (with --cpu-quota, in a control group of its own)."""

    def __init__(self, kind: str, args, workdir: Path, ports: tuple[int, int]) -> None:
        root = args.base_root if kind == "base" else ROOT
        (workdir / "state").mkdir(parents=True)
        port = free_port()
        self.kind = kind
        self.quota = CpuQuota(None) if args.cpu_quota else None
        command = server_command(kind, workdir, port, ports)
        self.process = subprocess.Popen(self.quota.wrap(command) if self.quota else command,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
                                        env=dict(os.environ, PYTHONPATH=str(root)))
        self.server = (IP, port)
        self.first = 0  # the next cycle's number: each cycle comes from a host of its own (source_ip)

    def cpu(self) -> float:
        return server_cpu(self.process.pid)

    def drive(self, lanes: int, seconds: float, rate: float | None) -> dict:
        """drive() against this server; cycles numbered on from the last call."""
        figures = drive(self.server, lanes, seconds, rate, self.first)
        self.first += 10**6
        return figures

    def stop(self) -> None:
        stop(self.process)
        if self.quota:
            self.quota.remove()


def capacity(running: Running, args) -> dict:
    """Lanes flat out: cycles/s and the server's CPU."""
    before = running.cpu()
    figures = running.drive(args.lanes, args.seconds, None)
    figures["server_cpu_percent"] = round(100 * (running.cpu() - before) / figures["seconds"], 1)
    figures["cycles_per_second"] = round(figures["cycles"] / figures["seconds"])
    return figures


def paced(servers: list[Running], args) -> dict:
    """Cycles at --rate, the servers taking turns for --rounds rounds of --seconds / --rounds each, so that
    each round finds the machine (other work on its cores) about the same for all: CPU ms per cycle."""
    totals = {s.kind: {"cycles": 0, "failures": 0, "abandoned_in_flight": 0, "seconds": 0.0, "cpu": 0.0,
                       "per_round_ms": []} for s in servers}
    for number in range(args.rounds):
        turn = number % len(servers)  # each round begins with the next server: no place in the order is kept
        for running in servers[turn:] + servers[:turn]:
            time.sleep(1.0)
            before = running.cpu()
            figures = running.drive(args.lanes, args.seconds / args.rounds, args.rate)
            used = running.cpu() - before
            total = totals[running.kind]
            for key in ("cycles", "failures", "abandoned_in_flight", "seconds"):
                total[key] += figures[key]
            total["cpu"] += used
            total["per_round_ms"].append(round(1000 * used / max(figures["cycles"], 1), 3))
    results = {}
    for kind, total in totals.items():
        cpu = total.pop("cpu")
        total["seconds"] = round(total["seconds"], 2)
        total["server_cpu_ms_per_cycle"] = round(1000 * cpu / max(total["cycles"], 1), 3)
        total["cycles_per_second"] = round(total["cycles"] / total["seconds"])
        if args.rounds == 1:
            del total["per_round_ms"]
        results[kind] = total
    return results


def held(running: Running, args) -> dict:
    """Lanes flat out with the server held to --cpu-quota percent of its core."""
    running.quota.set_percent(args.cpu_quota)
    before = running.cpu()
    figures = running.drive(args.lanes, args.seconds, None)
    figures["server_cpu_percent"] = round(100 * (running.cpu() - before) / figures["seconds"], 1)
    figures["cycles_per_second"] = round(figures["cycles"] / figures["seconds"])
    figures["cycles_per_second_per_core"] = round(figures["cycles_per_second"] * 100 / args.cpu_quota)
    running.quota.set_percent(None)
    return figures


def measure(kinds: list[str], args) -> dict:
    """Every server started at once (idle ones cost next to nothing), then each phase server by server."""
    figures: dict = {kind: {} for kind in kinds}
    servers: list[Running] = []
    with tempfile.TemporaryDirectory(prefix="txr-alloc-") as tmp:
        try:
            low, high = RELAY_PORTS
            span = (high - low + 1) // len(kinds)
            for index, kind in enumerate(kinds):
                ports = (low + index * span, low + (index + 1) * span - 1)
                servers.append(Running(kind, args, Path(tmp) / kind, ports))
            for running in servers:
                if not answering(running.server):
                    raise SystemExit(f"{running.kind} did not answer")
            time.sleep(1.0)
            for running in servers:
                figures[running.kind]["capacity"] = capacity(running, args)
                time.sleep(2.0)
            for kind, result in paced(servers, args).items():
                figures[kind]["paced"] = result
            if args.cpu_quota:
                for running in servers:
                    time.sleep(2.0)
                    figures[running.kind]["quota"] = held(running, args)
        finally:
            for running in servers:
                running.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (at most 300)")
    parser.add_argument("--lanes", type=int, default=32, help="cycles in flight at once (at most 256)")
    parser.add_argument("--rate", type=float, default=300.0, help="paced cycles per second (at most 5000)")
    parser.add_argument("--rounds", type=int, default=1, help="paced rounds, the servers taking turns, each "
                        "--seconds / --rounds long (at most 20)")
    parser.add_argument("--base-root", type=Path, help="also measure the relay of this older checkout, as base")
    parser.add_argument("--cpu-quota", type=float, help="also measure capacity with each server held to this "
                        "percent of its core (needs root and a cgroup cpu controller)")
    args = parser.parse_args()
    if (not 0 < args.seconds <= 300 or not 0 < args.lanes <= 256 or not 0 < args.rate <= 5000
            or not 1 <= args.rounds <= 20):
        parser.error("--seconds in (0, 300], --lanes in (0, 256], --rate in (0, 5000], --rounds in [1, 20]")
    if args.cpu_quota is not None and not 1 <= args.cpu_quota <= 100:
        parser.error("--cpu-quota in [1, 100]")
    os.sched_setaffinity(0, {1})
    kinds = ["ours"] + (["base"] if args.base_root else []) + (["coturn"] if shutil.which("turnserver") else [])
    figures = {"cpu": cpu_model(), "coturn_version": coturn_version(), "lanes": args.lanes, "paced_rate": args.rate,
               "paced_rounds": args.rounds, "load_average_before": round(os.getloadavg()[0], 2)}
    figures.update(measure(kinds, args))
    figures["load_average_after"] = round(os.getloadavg()[0], 2)
    if "base" in figures:
        figures["base_over_ours_cpu_per_cycle"] = round(
            figures["base"]["paced"]["server_cpu_ms_per_cycle"] / figures["ours"]["paced"]["server_cpu_ms_per_cycle"], 2)
    if "coturn" in figures:
        figures["ours_over_coturn_capacity"] = round(
            figures["ours"]["capacity"]["cycles_per_second"] / figures["coturn"]["capacity"]["cycles_per_second"], 2)
        figures["coturn_over_ours_cpu_per_cycle"] = round(
            figures["coturn"]["paced"]["server_cpu_ms_per_cycle"] / figures["ours"]["paced"]["server_cpu_ms_per_cycle"],
            2)
        if args.rounds > 1:
            ratios = sorted(c / o for c, o in zip(figures["coturn"]["paced"]["per_round_ms"],
                                                  figures["ours"]["paced"]["per_round_ms"]))
            figures["coturn_over_ours_per_round"] = {"median": round(statistics.median(ratios), 2),
                                                     "min": round(ratios[0], 2), "max": round(ratios[-1], 2)}
        if args.cpu_quota:
            figures["ours_over_coturn_under_quota"] = round(
                figures["ours"]["quota"]["cycles_per_second"] / figures["coturn"]["quota"]["cycles_per_second"], 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
