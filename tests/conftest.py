"""Shared fixtures: free ports and a real ``twistd rendezvous`` process on loopback."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import common

ROOT = Path(__file__).resolve().parent.parent
PRIMARY_IP = "127.0.0.1"
ALT_IP = "127.0.0.2"


# Every port free_port has handed out in this run: two picks made before either is bound (a
# metrics port, then the node's own ports) must not get the same port from the kernel.
_HANDED_OUT: set[int] = set()


def free_port(ips=(PRIMARY_IP, ALT_IP), exclude=()) -> int:
    """A port free for UDP and TCP on 127.0.0.1 and 127.0.0.2 (or the given ips), never one handed out before."""
    port = common.free_port(ips, _HANDED_OUT | set(exclude))
    _HANDED_OUT.add(port)
    return port


def binding_request() -> bytes:
    """A minimal RFC 8489 Binding request, built by hand (no codec)."""
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)


@dataclass
class Node:
    """A running ``twistd -n rendezvous`` and where it listens."""

    process: subprocess.Popen
    ip: str
    port: int
    alt_ip: str | None
    alt_port: int | None
    tls_port: int
    state_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def twistd() -> str:
    return str(Path(sys.executable).with_name("twistd"))


def start_node(tmp_path: Path, *extra: str, alternate: bool = True, wait: bool = True,
               command: str = "rendezvous", launcher: list[str] | None = None,
               ips: tuple[str, ...] | None = (PRIMARY_IP,)) -> Node:
    """Start ``twistd -n rendezvous`` (or ``relay``) on free loopback ports and wait until it answers;
    ``launcher`` replaces the twistd executable (e.g. a script that patches the node first). Each of ips is
    an --ip; None gives none, so the node listens on its dual-stack default (every IPv4 and IPv6 address)."""
    probe = ("0.0.0.0", "::") if ips is None else (*ips, *([ALT_IP] if alternate else []))
    port = free_port(probe)
    alt_port = free_port(probe, exclude={port}) if alternate else None
    tls_port = free_port(probe, exclude={port, alt_port})
    args = [
        *(launcher or [twistd()]), "-n", "--pidfile=", command,
        *(arg for ip in ips or () for arg in ("--ip", ip)), "--port", str(port), "--tls-port", str(tls_port),
        "--state-dir", str(tmp_path / "state"), "--metrics", "off",
    ]
    if alternate:
        args += ["--alt-ip", ALT_IP, "--alt-port", str(alt_port)]
    args += list(extra)
    log_path = tmp_path / "twistd.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    node = Node(process, ips[0] if ips else PRIMARY_IP, port, ALT_IP if alternate else None, alt_port, tls_port,
                tmp_path / "state", log_path)
    if wait:
        _wait_until_answering(node)
    return node


def _wait_until_answering(node: Node, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET6 if ":" in node.ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"twistd exited early:\n{node.log()}")
            s.sendto(binding_request(), (node.ip, node.port))
            try:
                s.recvfrom(2048)
            except OSError:
                continue
            try:
                socket.create_connection((node.ip, node.tls_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
    stop_node(node)
    raise RuntimeError(f"twistd did not answer in {seconds} s:\n{node.log()}")


def stop_process(process: subprocess.Popen) -> None:
    """End a process we started, by its handle: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def stop_node(node: Node) -> None:
    """End the twistd we started."""
    stop_process(node.process)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One ``twistd rendezvous`` with 127.0.0.2 as the RFC 5780 alternate IP."""
    started = start_node(tmp_path_factory.mktemp("node"))
    yield started
    stop_node(started)


TURN_USER, TURN_PASSWORD, TURN_REALM = "alice", "wonderland-secret", "example.org"
TURN_SECRET = "rest-api-secret"


def start_relay(tmp_path: Path, *extra: str, ips: tuple[str, ...] | None = (PRIMARY_IP,)) -> Node:
    """``twistd relay`` on loopback (or its dual-stack default, ips None) with a static user and a REST
    secret, loopback peers allowed."""
    return start_node(
        tmp_path, "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM,
        "--auth-secret", TURN_SECRET, "--allow-peer", "127.0.0.0/8", "--allow-peer", "::1/128",
        *extra, alternate=False, command="relay", ips=ips,
    )


@pytest.fixture(scope="module")
def relay_node(tmp_path_factory):
    """One ``twistd relay`` whose peers may be on loopback (for tests only)."""
    started = start_relay(tmp_path_factory.mktemp("relay"))
    yield started
    stop_node(started)


@pytest.fixture(scope="module")
def dual_relay(tmp_path_factory):
    """One ``twistd relay`` on its dual-stack default (no --ip), relayed addresses on loopback in both families."""
    started = start_relay(tmp_path_factory.mktemp("dual-relay"), "--relay-ip", "127.0.0.1", "--relay-ip", "::1",
                          "--workers", "1", ips=None)
    yield started
    stop_node(started)


@pytest.fixture(scope="module")
def plain_node(tmp_path_factory):
    """One ``twistd rendezvous`` without an alternate address."""
    started = start_node(tmp_path_factory.mktemp("plain"), alternate=False)
    yield started
    stop_node(started)


def add_buddies(state_dir: Path, pairs) -> None:
    """Accounts NAME with password NAME-pw for everyone in pairs, each pair made buddies, in a node's store."""
    from rendezvous.node.accounts import AccountStore

    store = AccountStore(state_dir / "accounts.sqlite")
    for name in dict.fromkeys(name for pair in pairs for name in pair):
        store.add(name, f"{name}-pw", "txrendezvous")
    for a, b in pairs:
        store.request_buddy(a, b)
        store.accept_buddy(b, a)
    store.close()


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server of our own on loopback for the session (skips where PostgreSQL is missing)."""
    from tests.postgres_server import PostgresServer, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """An empty account database, in each back end: an SQLite path or the URL of a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "accounts.sqlite")
    server = request.getfixturevalue("postgres_server")
    server.sql("DROP SCHEMA public CASCADE")
    server.sql("CREATE SCHEMA public")
    return server.url
