"""What the benchmark scripts share: ports, processes, CPU time, versions.

Benchmarks are scripts, not tests; they run as ``python bench/NAME.py`` from
the repository root, which puts this folder on the import path.
"""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT_SECONDS = 10


def free_port(ips=("127.0.0.1",), exclude=()) -> int:
    """A port that is free for UDP and TCP on every one of ips (IPv4 or IPv6), not in exclude (bounded search)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET6 if ":" in ips[0] else socket.AF_INET) as probe:
            probe.bind((ips[0], 0))
            port = probe.getsockname()[1]
        if port in exclude:
            continue
        held = []
        try:
            for ip in ips:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind)
                    held.append(s)
                    if ":" in ip:  # as the servers bind it (relay.listening), beside an IPv4 socket
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port found")


def exchange(address: tuple[str, int], request: bytes, timeout: float = 0.3) -> bytes | None:
    """Send one datagram and return the answer, or None if none came in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(request, address)
        try:
            return s.recvfrom(65536)[0]
        except OSError:
            return None


def stop(process: subprocess.Popen) -> None:
    """End a process we started, by its handle: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_SECONDS)


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def context_switches(pid: int) -> tuple[int, int]:
    """The voluntary and involuntary context switches of a process's main thread so far."""
    counts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            counts[name] = value.strip()
    return int(counts["voluntary_ctxt_switches"]), int(counts["nonvoluntary_ctxt_switches"])


def process_tree(pid: int) -> list[int]:
    """pid and every process descended from it (a relay's workers)."""
    tree, index = [pid], 0
    while index < len(tree):
        try:
            with open(f"/proc/{tree[index]}/task/{tree[index]}/children") as f:
                tree.extend(int(child) for child in f.read().split())
        except OSError:
            pass
        index += 1
    return tree


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of pid and its descendants (all threads) so far, in seconds."""
    user = system = 0.0
    for member in process_tree(pid):
        try:
            u, s = cpu_split(member)
        except OSError:
            continue  # it ended between the listing and the reading
        user, system = user + u, system + s
    return user, system


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    return sum(cpu_split(pid))


def coturn_version() -> str:
    try:
        out = subprocess.run(["turnserver", "--version"], check=False, capture_output=True, text=True,
                             timeout=10).stdout
        return out.strip().splitlines()[-1]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class CpuQuota:
    """A control group we make, capping the CPU time of the servers started in it (CFS bandwidth).

    ``percent`` of one core in every 10 ms period: cgroup v2's ``cpu.max``
    where the v2 hierarchy has the cpu controller, else v1's
    ``cpu.cfs_quota_us``. Needs root. ``remove`` deletes the group once
    its processes have ended.
    """

    PERIOD_US = 10_000

    def __init__(self, percent: float | None) -> None:
        name = f"txr-bench-{os.getpid()}-{id(self):x}"
        unified, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        if "cpu" in self._read(unified / "cgroup.controllers").split():
            (unified / "cgroup.subtree_control").write_text("+cpu")
            self.path = unified / name
            self.path.mkdir()
        elif (v1 / "cpu.cfs_quota_us").exists():
            self.path = v1 / name
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
        else:
            raise OSError("no cgroup cpu controller at /sys/fs/cgroup (v2) or /sys/fs/cgroup/cpu (v1)")
        self.set_percent(percent)

    def set_percent(self, percent: float | None) -> None:
        """Cap the group at percent of one core from now on; None lifts the cap."""
        quota = -1 if percent is None else int(self.PERIOD_US * percent / 100)
        if self.path.parent.name == "cpu":
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {self.PERIOD_US}")

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError:
            return ""

    def wrap(self, command: list[str]) -> list[str]:
        """command, started inside the group (so every process and thread it makes is in it)."""
        return ["sh", "-c", f'echo $$ > {shlex.quote(str(self.path / "cgroup.procs"))} && exec "$@"', "sh",
                *command]

    def stat(self) -> dict[str, int]:
        """The group's cpu.stat as numbers (nr_periods, nr_throttled and the others)."""
        pairs = (line.split() for line in self._read(self.path / "cpu.stat").splitlines())
        return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2}

    def throttled(self) -> int:
        """Periods so far in which the group used up its quota and was stopped (nr_throttled)."""
        return self.stat().get("nr_throttled", 0)

    def remove(self) -> None:
        for _ in range(50):  # the last process may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"could not remove {self.path}", file=sys.stderr)
