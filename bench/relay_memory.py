#!/usr/bin/env python3
"""Benchmark: resident memory per TURN allocation, our relay vs coturn.

Not a test. Starts each relay on 127.0.0.1 (free ports, one user, loopback
peers allowed), reads its RSS from /proc, makes ``--allocations`` UDP
allocations from as many client sockets (each with a permission), reads the
RSS again, and prints the delta per allocation as a markdown table row. Each
server is stopped by its process id. Loopback only; the loop is bounded by
the allocation count and a deadline.

    python bench/relay_memory.py --allocations 1000
"""

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rendezvous.stun import Attr, Class, Message, Method  # noqa: E402
from rendezvous.stun.attributes import encode_requested_transport  # noqa: E402
from rendezvous.stun.integrity import long_term_key  # noqa: E402

IP = "127.0.0.1"
USER, PASSWORD, REALM = "bench", "bench-pw", "example.org"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def ask(sock: socket.socket, server, msg: Message) -> Message:
    sock.sendto(msg.raw or msg.encode(), server)
    while True:
        response = Message.decode(sock.recvfrom(4096)[0])
        if response.transaction_id == msg.transaction_id:
            return response


def allocate(sock: socket.socket, server) -> None:
    request = Message(Method.ALLOCATE, Class.REQUEST).add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
    challenge = ask(sock, server, request)
    nonce = challenge.get(Attr.NONCE)
    key = long_term_key(USER, REALM, PASSWORD)
    for method, extra in ((Method.ALLOCATE, None), (Method.CREATE_PERMISSION, (IP, 9))):
        msg = Message(method, Class.REQUEST)
        if extra is None:
            msg.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(17))
        else:
            msg.add_address(Attr.XOR_PEER_ADDRESS, extra)
        msg.add(Attr.USERNAME, USER.encode()).add(Attr.REALM, REALM.encode()).add(Attr.NONCE, nonce)
        response = ask(sock, server, Message.decode(msg.encode(integrity_key=key)))
        if response.cls != Class.SUCCESS:
            raise RuntimeError(f"{method!r} failed: {response}")


def start(kind: str, directory: Path, port: int) -> subprocess.Popen:
    if kind == "ours":
        args = [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "relay", "--ip", IP,
                "--port", str(port), "--tls-port", "0", "--user", f"{USER}:{PASSWORD}", "--realm", REALM,
                "--allow-peer", "127.0.0.0/8", "--relay-ports", "40000-45000", "--state-dir", str(directory),
                "--metrics", "off"]
    else:
        args = ["turnserver", "-n", "--listening-ip", IP, "--listening-port", str(port), "--relay-ip", IP,
                "--min-port", "40000", "--max-port", "45000", "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
                "--lt-cred-mech", "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
                "--userdb", str(directory / "turndb"), "--pidfile", str(directory / "turn.pid"),
                "--log-file", str(directory / "turn.log"), "--simple-log", "--no-stdout-log"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=directory)


def measure(kind: str, count: int, deadline_seconds: float) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        process = start(kind, Path(tmp), port)
        sockets = []
        try:
            server = (IP, port)
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.settimeout(0.2)
            for _ in range(100):
                try:
                    ask(probe, server, Message(Method.BINDING, Class.REQUEST))
                    break
                except OSError:
                    time.sleep(0.1)
            probe.close()
            time.sleep(1.0)
            before = rss_kib(process.pid)
            stop_at = time.monotonic() + deadline_seconds
            for i in range(count):
                if time.monotonic() > stop_at:
                    raise RuntimeError("deadline passed")
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                # One loopback address per client, as clients would come from
                # many hosts: our relay limits 401 answers per source address.
                sock.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
                sock.settimeout(3)
                sockets.append(sock)
                allocate(sock, server)
            time.sleep(1.0)
            return before, rss_kib(process.pid)
        finally:
            for sock in sockets:
                sock.close()
            stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocations", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds allowed per server")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.allocations + 1024)), hard))
    print("| server | RSS before (KiB) | RSS after (KiB) | per allocation (KiB) |")
    print("|---|---|---|---|")
    for kind in ("ours", "coturn"):
        if kind == "coturn" and shutil.which("turnserver") is None:
            continue
        before, after = measure(kind, args.allocations, args.deadline)
        print(f"| {kind} | {before} | {after} | {(after - before) / args.allocations:.2f} |")


if __name__ == "__main__":
    main()
