"""How many users one super node holds on one core, and what a login and a presence fan-out cost.

    sudo .venv/bin/python bench/node_capacity.py [--users 10000] [--buddies 200] [--fanout-buddies 200]

1. Capacity: ``twistd rendezvous`` (no relay) pinned to core 0, the clients on
   core 1. USERS accounts, each with BUDDIES accepted buddies, log in over TCP
   (at most CONCURRENT logins in flight) and stay online, each reading every
   frame the node sends (a buddy's presence) and answering its pings. Reported:
   logins/s and the node's CPU per login, the node's RSS per online user, and
   the node's CPU while they idle. Accounts are made with scrypt at N=2 so the
   node's own work is measured; the cost of a real password hash (scrypt
   N=2**14, r=8, as ``AccountStore`` uses) is measured apart, and 100 accounts
   with it log in at once: the rate with hashing, and how late the node answers
   a logged-in user's ping meanwhile.
2. Fan-out: two nodes on one Redis (started here, no persistence); a hub user
   with FANOUT_BUDDIES buddies online, half on each node, changes presence;
   reported: the time until the last buddy has the new presence (median and
   max over ROUNDS).

Every loop is bounded (a deadline per phase); only processes started here are
ended, by their handles. Needs ``ulimit -n`` room for 2 x USERS sockets: the
script raises its own limit and the nodes' (as root, or within the hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model, cpu_seconds, free_port, stop  # noqa: E402
from rendezvous.node import accounts as account_module  # noqa: E402
from rendezvous.node.accounts import AccountStore  # noqa: E402
from rendezvous.wire.frames import FrameReader, encode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REALM = "txrendezvous"
PASSWORD = "capacity-pw"
CONCURRENT = 200
PHASE_SECONDS = 600
IDLE_SECONDS = 30
ROUNDS = 20
CHEAP_SCRYPT = (2, 1, 1)
REAL_HASH_USERS = 101


def make_accounts(path: Path, users: list[str], buddies: dict[str, list[str]], real_hash: bool = False) -> None:
    """Accounts with a cheap password hash (or, with real_hash, AccountStore's own), and accepted buddy
    pairs, in one transaction each."""
    saved = account_module.SCRYPT_N, account_module.SCRYPT_R, account_module.SCRYPT_P
    if not real_hash:
        account_module.SCRYPT_N, account_module.SCRYPT_R, account_module.SCRYPT_P = CHEAP_SCRYPT
    try:
        store = AccountStore(path)
        rows = [(name, *store._row(name, PASSWORD, REALM), 0.0) for name in users]
    finally:
        account_module.SCRYPT_N, account_module.SCRYPT_R, account_module.SCRYPT_P = saved
    store.close()
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO accounts (name, password_hash, salt, scrypt_n, scrypt_r, scrypt_p, turn_realm,"
                       " turn_key_md5, turn_key_sha256, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT OR IGNORE INTO buddies (owner, buddy, state, since) VALUES (?, ?, 'accepted', 0)",
                       ((owner, buddy) for owner, names in buddies.items() for buddy in names))
    db.close()


def ring_buddies(users: list[str], count: int) -> dict[str, list[str]]:
    """Each user's count nearest neighbours on a ring (count/2 each way): symmetric, count each."""
    n, half = len(users), count // 2
    return {user: [users[(i + k) % n] for k in range(-half, half + 1) if k] for i, user in enumerate(users)}


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def start_node(state: Path, port: int, *extra: str, core: int = 0) -> subprocess.Popen:
    twistd = str(Path(sys.executable).with_name("twistd"))
    argv = ["taskset", "-c", str(core), twistd, "-n", "--pidfile=", "rendezvous", "--no-relay", "--ip", "127.0.0.1",
            "--port", str(port), "--tls-port", "0", "--metrics", "off", "--state-dir", str(state), *extra]
    log = open(state / "twistd.log", "wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=state,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"twistd exited: {(state / 'twistd.log').read_text()[-3000:]}")
        try:
            with open(f"/proc/{process.pid}/net/tcp") as f:
                if f":{port:04X} " in f.read():
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise SystemExit("twistd did not listen in 30 s")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class User:
    """One logged-in signaling connection that reads everything and answers pings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.frames = FrameReader()
        self.welcomed = asyncio.get_running_loop().create_future()
        self.presence: dict[str, tuple[str, float]] = {}  # buddy -> (state, when seen)
        self.presence_seen = 0
        self.pongs: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def login(self, port: int, source: str = "127.0.0.1") -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        self.writer.write(encode({"op": "login", "id": 1, "user": self.name, "password": PASSWORD}))
        self.task = asyncio.create_task(self.read())
        await self.welcomed

    async def read(self) -> None:
        while data := await self.reader.read(65536):
            for frame in self.frames.feed(data):
                if not isinstance(frame, dict):
                    continue
                op = frame.get("op")
                if op == "welcome" and not self.welcomed.done():
                    self.welcomed.set_result(time.monotonic())
                elif op == "error" and not self.welcomed.done():
                    self.welcomed.set_exception(RuntimeError(f"{self.name}: {frame}"))
                elif op == "ping":
                    self.writer.write(encode({"op": "pong", "token": frame.get("token")}))
                elif op == "pong":
                    self.pongs.put_nowait(frame.get("token"))
                elif op == "presence":
                    self.presence_seen += 1
                    self.presence[frame.get("user")] = (frame.get("state"), time.monotonic())
        if not self.welcomed.done():
            self.welcomed.set_exception(RuntimeError(f"{self.name}: closed before welcome"))

    def send(self, message: dict) -> None:
        self.writer.write(encode(message))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def log_in_all(names: list[str], ports: list[int]) -> tuple[list[User], float]:
    """Log every name in (round-robin over ports), CONCURRENT at a time; (users, seconds taken)."""
    users, gate = [User(name) for name in names], asyncio.Semaphore(CONCURRENT)

    async def one(i: int, user: User) -> None:
        async with gate:  # users come from many hosts (127.0.X.Y), as the node's per-address limits expect
            await user.login(ports[i % len(ports)], f"127.0.{1 + (i // 250) % 200}.{1 + i % 250}")

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(i, u) for i, u in enumerate(users))), PHASE_SECONDS)
    return users, time.monotonic() - started


def hash_seconds(rounds: int = 20) -> float:
    """Seconds of one real password check: scrypt at AccountStore's parameters."""
    started = time.perf_counter()
    for _ in range(rounds):
        hashlib.scrypt(PASSWORD.encode(), salt=b"0" * 16, n=account_module.SCRYPT_N, r=account_module.SCRYPT_R,
                       p=account_module.SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)
    return (time.perf_counter() - started) / rounds


async def capacity(work: Path, users_count: int, buddies_count: int) -> dict:
    state = work / "capacity"
    state.mkdir()
    names = [f"u{i:05d}" for i in range(users_count)]
    made = time.monotonic()
    make_accounts(state / "accounts.sqlite", names, ring_buddies(names, buddies_count))
    made = time.monotonic() - made
    port = free_port()
    node = start_node(state, port)
    try:
        await asyncio.sleep(1.0)
        rss_before, cpu_before = rss_bytes(node.pid), cpu_seconds(node.pid)
        users, seconds = await log_in_all(names, [port])
        cpu_login = cpu_seconds(node.pid) - cpu_before
        await asyncio.sleep(2.0)  # the last presence frames drain
        rss_after = rss_bytes(node.pid)
        cpu_idle_start = cpu_seconds(node.pid)
        await asyncio.sleep(IDLE_SECONDS)
        cpu_idle = cpu_seconds(node.pid) - cpu_idle_start
        presence = sum(u.presence_seen for u in users)
        online = sum(1 for u in users if u.writer is not None and not u.writer.is_closing()
                     and not u.task.done())
        for user in users:
            user.close()
    finally:
        stop(node)
    hashing = hash_seconds()
    per_login = cpu_login / users_count
    real = await real_hash_logins(work)
    return {
        "users": users_count, "buddies_each": buddies_count, "accounts_made_seconds": round(made, 1),
        "online_at_end": online,
        "login_seconds": round(seconds, 2), "logins_per_second": round(users_count / seconds),
        "node_cpu_ms_per_login": round(1000 * per_login, 3),
        "presence_frames_delivered": presence,
        "scrypt_ms_per_login": round(1000 * hashing, 1),
        "logins_per_second_with_hashing": round(1 / (per_login + hashing), 1),
        "rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_kib_per_user": round((rss_after - rss_before) / users_count / 1024, 2),
        "idle_cpu_percent": round(100 * cpu_idle / IDLE_SECONDS, 2),
        **real,
    }


async def real_hash_logins(work: Path, count: int = REAL_HASH_USERS) -> dict:
    """count accounts hashed as AccountStore makes them, logging in all at once: the rate with hashing,
    and how late the node answers a ping meanwhile (is the reactor free while it hashes?)."""
    state = work / "real-hash"
    state.mkdir()
    names = [f"r{i:04d}" for i in range(count)]
    make_accounts(state / "accounts.sqlite", names, {}, real_hash=True)
    port = free_port()
    node = start_node(state, port)
    try:
        await asyncio.sleep(1.0)
        probe = User("r0000")
        await probe.login(port)
        rest = names[1:]
        logins = asyncio.create_task(log_in_all(rest, [port]))
        delays = []
        while not logins.done():
            sent = time.monotonic()
            probe.send({"op": "ping", "id": 7, "token": "probe"})  # the node answers pong at once
            await asyncio.wait_for(probe.pongs.get(), 30)
            delays.append(time.monotonic() - sent)
            await asyncio.sleep(0.05)
        users, seconds = await logins
        for user in (*users, probe):
            user.close()
    finally:
        stop(node)
    return {"real_hash_logins": count - 1, "real_hash_logins_per_second": round((count - 1) / seconds, 1),
            "ping_answer_ms_during_real_hash_logins_max": round(1000 * max(delays), 1),
            "ping_answer_ms_during_real_hash_logins_median": round(1000 * statistics.median(delays), 1)}


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


async def fanout(work: Path, buddies_count: int) -> dict:
    shared = work / "fanout-accounts.sqlite"
    hub, names = "hub", [f"f{i:04d}" for i in range(buddies_count)]
    make_accounts(shared, [hub, *names], {hub: names, **{name: [hub] for name in names}})
    redis, url = start_redis(work)
    nodes, ports = [], []
    try:
        for n, core in (("node-a", 0), ("node-b", 1)):
            state = work / n
            state.mkdir()
            shutil.copy(shared, state / "accounts.sqlite")  # the same accounts on both "hosts"
            ports.append(free_port())
            nodes.append(start_node(state, ports[-1], "--redis", url, "--node-name", n, core=core))
        buddies, _ = await log_in_all(names, ports)
        (center,), _ = await log_in_all([hub], ports[:1])
        await asyncio.sleep(1.0)
        times = []
        for round_number in range(ROUNDS):
            state = "away" if round_number % 2 == 0 else "online"
            sent = time.monotonic()
            center.send({"op": "presence", "id": 100 + round_number, "state": state})
            deadline = sent + 10
            while time.monotonic() < deadline:
                if all(b.presence.get(hub, ("", 0))[0] == state for b in buddies):
                    break
                await asyncio.sleep(0.001)
            else:
                raise SystemExit(f"round {round_number}: not every buddy saw {state} in 10 s")
            times.append(max(b.presence[hub][1] for b in buddies) - sent)
            await asyncio.sleep(0.2)
        for user in (*buddies, center):
            user.close()
    finally:
        for node in nodes:
            stop(node)
        stop(redis)
    return {"buddies": buddies_count, "nodes": 2, "rounds": ROUNDS,
            "fanout_ms_median": round(1000 * statistics.median(times), 1),
            "fanout_ms_max": round(1000 * max(times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--buddies", type=int, default=200)
    parser.add_argument("--fanout-buddies", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (scripts/setup --test installs it)")
    raise_fd_limit(4 * args.users + 1024)
    os.sched_setaffinity(0, {1})  # the clients: the other core than the capacity node
    with tempfile.TemporaryDirectory(prefix="txr-node-capacity-") as tmp:
        work = Path(tmp)
        figures = {"cpu": cpu_model(), "capacity": asyncio.run(capacity(work, args.users, args.buddies)),
                   "fanout": asyncio.run(fanout(work, args.fanout_buddies))}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
