"""Capacity of a super node: online users, memory per user, logins/s, presence fan-out. Not a test.

    python bench/node_capacity.py [--users 10000] [--buddies 200] [--in-flight 100] [--fanout-runs 10]

1. Online users on one core: an SQLite store with ``--users`` accounts in a
   ring, each with ``--buddies`` accepted buddies, and one ``twistd
   rendezvous`` pinned to CPU 0 (``--no-relay``). This process (on CPU 1)
   logs every user in over its own TCP connection, ``--in-flight`` logins at
   a time, answers the node's pings and reads every presence push (each login
   tells the buddies already online). The accounts carry a cheap scrypt
   (N=2), so logins/s is the node's own work; the cost of the real hash
   (N=2^14, r=8) is measured apart and shown beside it. Memory per user is
   the node's RSS growth over the logins divided by the users.
2. Presence fan-out across two nodes: a user with ``--buddies`` buddies (who
   are not each other's), half of them on node A (with the user) and half on
   node B, both on one Redis, both nodes on CPU 0; the time from the user's
   presence change to the last buddy's push, ``--fanout-runs`` times.

Bounded: every phase has a deadline (``--seconds``). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, free_port, stop  # noqa: E402
from relay.credentials import Keys  # noqa: E402
from rendezvous.node.accounts import SCRYPT_N, SCRYPT_P, SCRYPT_R, AccountStore  # noqa: E402
from rendezvous.wire.frames import FrameReader, encode  # noqa: E402

REALM = "txrendezvous"
CHEAP_SCRYPT = (2, 1, 1)
NODE_CPU, CLIENT_CPU = 0, 1
SETTLE_SECONDS = 2


def raise_file_limit() -> None:
    """As many descriptors as the hard limit allows (10,000 users are 10,000 sockets on each side)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def name(number: int) -> str:
    return f"u{number:06d}"


def ring(users: int, buddies: int):
    """Buddy pairs: each user with the buddies // 2 users on either side of it."""
    half = min(buddies // 2, (users - 1) // 2)
    return ((i, (i + d) % users) for i in range(users) for d in range(1, half + 1))


def make_store(path: Path, users: int, pairs) -> float:
    """users accounts (password NAME-pw, cheap scrypt), each pair (a, b) accepted buddies; seconds taken."""
    started = time.monotonic()
    store = AccountStore(path)
    salt = b"\0" * 16
    rows = []
    for i in range(users):
        user = name(i)
        keys = Keys.from_password(user, REALM, f"{user}-pw")
        digest = hashlib.scrypt(f"{user}-pw".encode(), salt=salt, n=CHEAP_SCRYPT[0], r=CHEAP_SCRYPT[1],
                                p=CHEAP_SCRYPT[2], dklen=32)
        rows.append((user, digest, salt, *CHEAP_SCRYPT, REALM, keys.md5, keys.sha256, 0.0))
    with store.db.transaction() as cursor:
        cursor.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        cursor.executemany("INSERT INTO buddies VALUES (?, ?, 'accepted', 0)",
                           ((name(x), name(y)) for a, b in pairs for x, y in ((a, b), (b, a))))
    store.close()
    return time.monotonic() - started


def start_node(tmp: Path, label: str, database: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """twistd rendezvous on 127.0.0.1 pinned to NODE_CPU; waits until its signaling port accepts."""
    port = free_port()
    argv = ["taskset", "-c", str(NODE_CPU), str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=",
            "rendezvous", "--ip", "127.0.0.1", "--port", str(port), "--tls-port", "0", "--no-relay", "--metrics", "off",
            "--state-dir", str(tmp / label), "--database", str(database), "--node-name", label, *extra]

    log = open(tmp / f"{label}.log", "wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, preexec_fn=raise_file_limit,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / f"{label}.log").read_text(errors="replace"))
            time.sleep(0.2)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class User(Protocol):
    """One logged-in user: logs in, answers pings, counts pushes (and when a watched one came)."""

    def __init__(self, user: str, logged_in: Deferred, watch=None) -> None:
        self.user, self.logged_in, self.watch = user, logged_in, watch
        self.reader = FrameReader()
        self.pushes = 0

    def connectionMade(self) -> None:
        self.transport.write(encode({"op": "login", "id": 1, "user": self.user, "password": f"{self.user}-pw"}))

    def dataReceived(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            op = frame.get("op") if isinstance(frame, dict) else None
            if op == "ping":
                self.transport.write(encode({"op": "pong", "token": frame.get("token")}))
            elif op == "welcome":
                self.logged_in.callback(self)
            elif op == "error" and not self.logged_in.called:
                self.logged_in.errback(RuntimeError(f"{self.user}: {frame}"))
            else:
                self.pushes += 1
                if self.watch is not None:
                    self.watch(self, frame)


def source_ip(number: int) -> str:
    """A loopback address of its own for each user, as users come from many hosts (the per-source login
    bucket holds a token while a login is checked)."""
    return f"127.{1 + number // 62500 % 250}.{1 + number // 250 % 250}.{1 + number % 250}"


async def connect(reactor, port: int, number: int, watch=None) -> User:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    logged_in = Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source_ip(number), 0))
    await connectProtocol(endpoint, User(name(number), logged_in, watch))
    return await logged_in


async def online_users(reactor, args, tmp: Path) -> dict:
    database = tmp / "capacity.sqlite"
    store_seconds = make_store(database, args.users, ring(args.users, args.buddies))
    node, port = start_node(tmp, "capacity", database)
    try:
        await task.deferLater(reactor, 2, lambda: None)
        rss_before, cpu_before = rss_bytes(node.pid), cpu_seconds(node.pid)
        started = time.monotonic()
        deadline = started + args.seconds
        users: list[User] = []
        next_user = 0

        async def worker() -> None:
            nonlocal next_user
            while next_user < args.users and time.monotonic() < deadline:
                number, next_user = next_user, next_user + 1
                users.append(await connect(reactor, port, number))

        from twisted.internet.defer import gatherResults

        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(args.in_flight)])
        login_seconds = time.monotonic() - started
        cpu_login = cpu_seconds(node.pid) - cpu_before
        await task.deferLater(reactor, 5, lambda: None)  # pushes still on their way
        rss_after = rss_bytes(node.pid)
        pushes = sum(u.pushes for u in users)
        for user in users:
            user.transport.loseConnection()
        return {
            "users_online": len(users), "buddies_each": args.buddies, "store_build_seconds": round(store_seconds, 1),
            "login_seconds": round(login_seconds, 2), "logins_per_second": round(len(users) / login_seconds, 1),
            "node_cpu_seconds_per_login_ms": round(1000 * cpu_login / max(1, len(users)), 3),
            "presence_pushes_received": pushes,
            "node_rss_before_mib": round(rss_before / 2**20, 1), "node_rss_after_mib": round(rss_after / 2**20, 1),
            "rss_per_online_user_kib": round((rss_after - rss_before) / max(1, len(users)) / 1024, 2),
        }
    finally:
        stop(node)


def scrypt_ms(rounds: int = 20) -> float:
    """Milliseconds of the store's real password hash (check_password's work), on this CPU."""
    started = time.process_time()
    for _ in range(rounds):
        hashlib.scrypt(b"password", salt=b"\0" * 16, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20,
                       dklen=32)
    return 1000 * (time.process_time() - started) / rounds


async def fan_out(reactor, args, tmp: Path) -> dict:
    """A user with args.buddies buddies split over two nodes on one Redis: presence change to last push."""
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    database = tmp / "fanout.sqlite"
    make_store(database, args.buddies + 1, ((0, i) for i in range(1, args.buddies + 1)))  # u000000 and its buddies
    nodes = []
    try:
        for label in ("fan-a", "fan-b"):
            nodes.append(start_node(tmp, label, database, "--redis", f"redis://127.0.0.1:{redis_port}/0"))
        await task.deferLater(reactor, 6, lambda: None)  # both nodes registered in Redis
        arrivals: dict[str, float] = {}

        def watch(user: User, frame: dict) -> None:
            if frame.get("op") == "presence" and frame.get("user") == name(0) and frame.get("state") == "away":
                arrivals.setdefault(user.user, time.monotonic())

        hub = await connect(reactor, nodes[0][1], 0)
        buddies = [await connect(reactor, nodes[i % 2][1], i, watch) for i in range(1, args.buddies + 1)]
        await task.deferLater(reactor, SETTLE_SECONDS, lambda: None)
        times = []
        for _ in range(args.fanout_runs):
            arrivals.clear()
            sent = time.monotonic()
            hub.transport.write(encode({"op": "presence", "id": 2, "state": "away"}))
            deadline = sent + 10
            while len(arrivals) < len(buddies) and time.monotonic() < deadline:
                await task.deferLater(reactor, 0.005, lambda: None)
            times.append(((max(arrivals.values()) - sent) if len(arrivals) == len(buddies) else None,
                          len(arrivals)))
            hub.transport.write(encode({"op": "presence", "id": 3, "state": "online"}))
            await task.deferLater(reactor, 0.5, lambda: None)
        done = [t for t, _ in times if t is not None]
        for user in [hub, *buddies]:
            user.transport.loseConnection()
        return {"fanout_buddies": len(buddies), "fanout_runs": len(times),
                "fanout_complete_runs": len(done), "fanout_buddies_reached": [count for _, count in times],
                "fanout_ms_median": round(1000 * statistics.median(done), 1) if done else None,
                "fanout_ms_max": round(1000 * max(done), 1) if done else None}
    finally:
        for process, _ in nodes:
            stop(process)
        stop(redis)


async def run(reactor, args) -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})
    raise_file_limit()
    with tempfile.TemporaryDirectory(prefix="txr-capacity-") as directory:
        tmp = Path(directory)
        summary = {"command": " ".join(["python", "bench/node_capacity.py", *sys.argv[1:]])}
        summary.update(await online_users(reactor, args, tmp))
        hash_ms = scrypt_ms()
        summary["scrypt_ms_per_login"] = round(hash_ms, 1)
        summary["logins_per_second_with_hashing_one_core"] = round(
            1000 / (hash_ms + summary["node_cpu_seconds_per_login_ms"]), 1)
        summary.update(await fan_out(reactor, args, tmp))
    print(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--buddies", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=100, help="logins at once")
    parser.add_argument("--fanout-runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=600, help="bound on the login phase")
    args = parser.parse_args()
    if not 2 <= args.users <= 50000 or not 2 <= args.buddies <= 500 or not 1 <= args.in_flight <= 1000 \
            or not 1 <= args.fanout_runs <= 100 or not 0 < args.seconds <= 3600:
        parser.error("--users 2-50000, --buddies 2-500, --in-flight 1-1000, --fanout-runs 1-100, --seconds <= 3600")
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
