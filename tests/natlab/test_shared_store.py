"""Super nodes on different hosts sharing one PostgreSQL and one Redis, and what users see when parts fail.

Each host is a network namespace on the lab's public segment: a database
host (PostgreSQL and Redis), two super node hosts, and users behind NATs.
Figures measured here (failover time) are printed for docs/DEPLOY.md; the
assertions hold the issue's goals.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rendezvous.node.accounts import AccountStore
from tests.postgres_server import PostgresServer, missing_reason

from .lab import ENV, ROOT, Lab, LabError, run, tcp_accepts, udp_answers, unavailable_reason

pytestmark = pytest.mark.natlab

DB_IP, NODE_A_IP, NODE_B_IP = "198.18.0.100", "198.18.0.101", "198.18.0.102"
NODE_PORT = 3478
REDIS_PORT = 6379
WAIT_SECONDS = 20
FAILOVER_GOAL_SECONDS = 5


class Hosts:
    """The lab, its database host and the two super nodes (restartable)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lab = Lab(workdir)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.redis: subprocess.Popen | None = None

    def build(self) -> None:
        self.lab.build_public()
        self.db_ns = self.lab.add_host("db", DB_IP)
        self.postgres = PostgresServer(host=DB_IP, netns=self.db_ns)
        self.postgres.start()
        self.start_redis()
        self.node_ns = {"node-a": self.lab.add_host("na", NODE_A_IP), "node-b": self.lab.add_host("nb", NODE_B_IP)}
        self.node_ip = {"node-a": NODE_A_IP, "node-b": NODE_B_IP}
        for name in self.node_ns:
            self.start_node(name)
        self.sites = [self.lab.add_site("eim-eif"), self.lab.add_site("eim-eif")]

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{DB_IP}:{self.postgres.port}/accounts"

    def local_store(self) -> AccountStore:
        """The shared store, reached from this (the test's) host over PostgreSQL's unix socket."""
        return AccountStore(f"postgresql://postgres@/accounts?host={self.postgres.directory}"
                            f"&port={self.postgres.port}")

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["ip", "netns", "exec", self.db_ns, "redis-server", "--bind", DB_IP, "--port", str(REDIS_PORT),
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_SECONDS
        while not tcp_accepts(self.db_ns, DB_IP, REDIS_PORT):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def kill_redis(self) -> None:
        self.redis.send_signal(signal.SIGKILL)
        self.redis.wait(10)

    def start_node(self, name: str) -> None:
        ns, ip = self.node_ns[name], self.node_ip[name]
        other = "node-b" if name == "node-a" else "node-a"
        log_path = self.workdir / f"{name}.log"
        argv = ["ip", "netns", "exec", ns, str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=",
                "rendezvous", "--ip", ip, "--port", str(NODE_PORT), "--tls-port", "0", "--metrics", "off",
                "--no-relay", "--open-registration", "--node-name", name, "--state-dir", str(self.workdir / name),
                "--database", self.database_url, "--redis", f"redis://{DB_IP}:{REDIS_PORT}/0",
                "--peer-node", f"{self.node_ip[other]}:{NODE_PORT}"]
        with open(log_path, "ab") as log:
            self.nodes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                                env=ENV)
        deadline = time.monotonic() + WAIT_SECONDS
        while not (udp_answers(ns, ip, NODE_PORT) and tcp_accepts(ns, ip, NODE_PORT)):
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{name} did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)

    def node_log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for process in [*self.nodes.values(), self.redis]:
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
        if getattr(self, "postgres", None) is not None:
            self.postgres.remove()
        self.lab.close()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """A database host, two node hosts and two NAT sites, with buddies alice+bob and carol+dan."""
    reason = unavailable_reason() or missing_reason()
    if reason:
        pytest.skip(reason)
    built = Hosts(tmp_path_factory.mktemp("shared"))
    try:
        built.build()
        store = built.local_store()
        for name in ("alice", "bob", "carol", "dan"):
            store.add(name, f"{name}-password", "txrendezvous")
        for a, b in (("alice", "bob"), ("carol", "dan")):
            store.request_buddy(a, b)
            store.accept_buddy(b, a)
        store.close()
        yield built
    except LabError as e:
        pytest.fail(f"the lab could not be built: {e}")
    finally:
        built.close()


def client(site, *args: str, stdin: bool = False) -> subprocess.Popen:
    """tests/natlab/presence_client.py in the site's namespace; its stderr (and log) in a file beside."""
    errors = tempfile.NamedTemporaryFile("w+", prefix=f"presence-{args[1]}-", suffix=".err", delete=False)
    process = subprocess.Popen(site.exec_argv(sys.executable, "-m", "tests.natlab.presence_client", *args),
                               stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=errors, cwd=ROOT, env={**ENV, "NATLAB_CLIENT_LOG": "1"})
    process.errors_path = errors.name
    return process


def once(site, *args: str) -> dict:
    """The last line a one-shot presence_client prints."""
    process = client(site, "once", *args)
    out, _ = process.communicate(timeout=60)
    assert out.strip(), Path(process.errors_path).read_text()
    return json.loads(out.decode().strip().splitlines()[-1])


def until(process: subprocess.Popen, wanted, seconds: float = WAIT_SECONDS) -> dict:
    """The first line process prints for which wanted(event) holds; fails after seconds.

    Lines are split here from raw reads of the pipe: a buffered readline
    after select would leave a second line that came in the same read in
    the file object's buffer, where select cannot see it.
    """
    deadline = time.monotonic() + seconds
    seen = []
    pending = getattr(process, "pending", b"")
    try:
        while True:
            if b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                event = json.loads(line)
                seen.append(event)
                if wanted(event):
                    return event
                continue
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                break
            pending += chunk
    finally:
        process.pending = pending
    errors = Path(process.errors_path).read_text(errors="replace")[-3000:]
    raise AssertionError(f"no such event in {seconds} s; saw {seen}; its log ends:\n{errors}")


def request(process: subprocess.Popen, **fields) -> dict:
    process.stdin.write(json.dumps(fields).encode() + b"\n")
    process.stdin.flush()
    return until(process, lambda e: e["event"] == "reply")


def stop(*processes) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(10)


def test_a_user_added_on_one_host_logs_in_on_the_other(hosts):
    """An account registered over signaling on node A's host, and one added with `txrendezvous accounts`
    on node B's host, each log in on the other host's node: both nodes use the one PostgreSQL."""
    site = hosts.sites[0]
    assert once(site, "erin", "erin-password", f"{NODE_A_IP}:{NODE_PORT}", "register")["node"] == "node-a"
    assert once(site, "erin", "erin-password", f"{NODE_B_IP}:{NODE_PORT}")["node"] == "node-b"
    added = subprocess.run(
        ["ip", "netns", "exec", hosts.node_ns["node-b"], sys.executable, "-m", "rendezvous.cli.main", "accounts",
         "--db", hosts.database_url, "--password-stdin", "add", "frank"],
        input="frank-password\n", capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV)
    assert added.returncode == 0, added.stderr
    assert once(site, "frank", "frank-password", f"{NODE_A_IP}:{NODE_PORT}")["node"] == "node-a"
    refused = once(site, "frank", "wrong-password", f"{NODE_A_IP}:{NODE_PORT}")
    assert (refused["event"], refused["code"]) == ("refused", "unauthenticated")


def stream_client(site, mode: str, user: str, *extra: str) -> subprocess.Popen:
    """tests/natlab/stream_client.py in the site's namespace, through node A."""
    argv = site.exec_argv(sys.executable, "-m", "tests.natlab.stream_client", mode, NODE_A_IP, str(NODE_PORT),
                          "tcp", user, f"{user}-password", *extra)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)


def figure(hosts, name: str, seconds: float) -> None:
    """Keep a measured figure (printed, and in figures.json beside the lab's logs)."""
    path = hosts.workdir / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = round(seconds, 3)
    path.write_text(json.dumps(figures, indent=1))
    print(f"figure {name}: {seconds:.3f} s")


def test_a_killed_node_s_users_come_back_on_the_other_and_sessions_stay_up(hosts):
    """After SIGKILL of node A, its user logs in again on node B from the host cache within the goal, the
    buddy on node B sees them online there, and a session streaming between two users of node A loses no
    chunk (its path never went through the node)."""
    first, second = hosts.sites
    alice = client(first, "stay", "alice", "alice-password", str(hosts.workdir / "alice-hosts.json"),
                   f"{NODE_A_IP}:{NODE_PORT}", f"{NODE_B_IP}:{NODE_PORT}", stdin=True)
    bob = client(second, "stay", "bob", "bob-password", str(hosts.workdir / "bob-hosts.json"),
                 f"{NODE_B_IP}:{NODE_PORT}", stdin=True)
    listener = connector = None
    try:
        assert until(alice, lambda e: e["event"] == "welcome")["node"] == "node-a"
        assert until(bob, lambda e: e["event"] == "welcome")["node"] == "node-b"
        listener = stream_client(first, "listen", "carol", "relay=")
        assert json.loads(listener.stdout.readline() or "{}").get("ready"), listener.stderr.read()
        connector = stream_client(second, "connect", "dan", "carol", "10", "relay=")
        up = json.loads(connector.stdout.readline() or "{}")
        assert up.get("up"), (up, connector.stderr.read())
        time.sleep(1)  # a second of chunks before the node goes
        hosts.nodes["node-a"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        hosts.nodes["node-a"].wait(10)
        until(alice, lambda e: e["event"] == "lost")
        back = until(alice, lambda e: e["event"] == "welcome")
        seen = until(bob, lambda e: e["event"] == "presence" and e["user"] == "alice" and e["state"] == "online"
                     and e["node"] == "node-b")
        figure(hosts, "relogin after SIGKILL", back["t"] - killed)
        figure(hosts, "buddy sees the user online again after SIGKILL", seen["t"] - killed)
        assert back["node"] == seen["node"] == "node-b"
        assert back["t"] - killed < FAILOVER_GOAL_SECONDS
        out, err = connector.communicate(timeout=60)
        final = json.loads(out.strip().splitlines()[-1])
        assert final.get("summary") == {"chunks": final.get("sent"), "first_bad": None}, (final, err[-2000:])
        assert final["paths"] == [up["path"]], final
    finally:
        stop(alice, bob, listener, connector)
        if hosts.nodes["node-a"].poll() is not None:
            hosts.start_node("node-a")


def redis_presence(hosts, user: str) -> dict | None:
    """user's entry in the Redis presence directory, read on the database host."""
    out = run("ip", "netns", "exec", hosts.db_ns, "redis-cli", "-h", DB_IP, "-p", str(REDIS_PORT), "--raw",
              "HGET", "txr:presence", user).strip()
    return json.loads(out) if out else None


@pytest.fixture
def carol_and_dan(hosts):
    """carol logged in on node A and her buddy dan on node B, each a staying presence_client."""
    first, second = hosts.sites
    carol = client(first, "stay", "carol", "carol-password", str(hosts.workdir / "carol-hosts.json"),
                   f"{NODE_A_IP}:{NODE_PORT}", stdin=True)
    dan = client(second, "stay", "dan", "dan-password", str(hosts.workdir / "dan-hosts.json"),
                 f"{NODE_B_IP}:{NODE_PORT}", stdin=True)
    try:
        assert until(carol, lambda e: e["event"] == "welcome")["node"] == "node-a"
        assert until(dan, lambda e: e["event"] == "welcome")["node"] == "node-b"
        # A node answers presence only after reading the user's buddies (which it then keeps in memory).
        for user in (carol, dan):
            assert request(user, op="presence", state="online")["reply"]["op"] == "presence-set"
        yield carol, dan
    finally:
        stop(carol, dan)


def messages_cross(carol, dan, text: str) -> None:
    """carol's message reaches dan on the other node (retried while carol's node has not yet heard, through
    Redis, that dan is online: presence crosses asynchronously)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (answer := request(carol, op="message", to="dan", text=text)).get("code") == "offline":
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    assert answer.get("reply", {}).get("op") == "delivered", answer
    assert until(dan, lambda e: e["event"] == "message")["text"] == text


def test_a_restarted_redis_gets_the_presence_back_without_restarting_nodes(hosts, carol_and_dan):
    """After Redis is killed and started empty, both nodes reconnect by themselves, write their users'
    presence again, and messages and presence changes cross between the nodes as before."""
    carol, dan = carol_and_dan
    messages_cross(carol, dan, "before")
    hosts.kill_redis()
    hosts.start_redis()
    restarted = time.monotonic()
    assert redis_presence(hosts, "carol") is None
    deadline = restarted + WAIT_SECONDS
    while not (redis_presence(hosts, "carol") and redis_presence(hosts, "dan")):
        assert time.monotonic() < deadline, (hosts.node_log("node-a")[-3000:], hosts.node_log("node-b")[-3000:])
        time.sleep(0.2)
    figure(hosts, "presence back in a restarted Redis", time.monotonic() - restarted)
    assert redis_presence(hosts, "carol")["node"] == "node-a" and redis_presence(hosts, "dan")["node"] == "node-b"
    messages_cross(carol, dan, "after")
    assert request(carol, op="presence", state="away")["reply"]["op"] == "presence-set"
    assert until(dan, lambda e: e["event"] == "presence" and e["user"] == "carol")["state"] == "away"
    assert "redis lost the directory" in hosts.node_log("node-a")


def test_without_the_database_logins_fail_clearly_and_logged_in_users_go_on(hosts, carol_and_dan):
    """With PostgreSQL down, a new login is refused with 'unavailable' (and the node logs why), logged-in
    buddies still message and look each other up across nodes, and logins work again once it is back."""
    carol, dan = carol_and_dan
    site = hosts.sites[0]
    hosts.postgres.kill()
    try:
        refused = once(site, "alice", "alice-password", f"{NODE_A_IP}:{NODE_PORT}")
        assert (refused["event"], refused["code"]) == ("refused", "unavailable")
        messages_cross(carol, dan, "no database")
        peer = request(carol, op="lookup", user="dan")["reply"]
        assert (peer["online"], peer["node"]) == (True, "node-b")
        assert request(carol, op="buddy-list")["code"] == "unavailable"
    finally:
        hosts.postgres.start()
    returned = time.monotonic()
    while once(site, "alice", "alice-password", f"{NODE_A_IP}:{NODE_PORT}")["event"] != "welcome":
        assert time.monotonic() < returned + WAIT_SECONDS
        time.sleep(0.2)
    figure(hosts, "first login after the database returns", time.monotonic() - returned)
    assert "account store unavailable" in hosts.node_log("node-a")
    assert request(carol, op="buddy-list")["reply"]["buddies"] == [
        {"user": "dan", "relation": "accepted", "state": "online"}]
