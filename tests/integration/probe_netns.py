"""Run a relay and ``txrendezvous probe-relay`` against it inside a network namespace with only loopback.

    unshare --net -- python -m tests.integration.probe_netns ours|coturn [SERVER OPTION ...] -- [PROBE OPTION ...]

A permissive relay asked for 10.0.0.1 or 169.254.169.254 tries to reach it
(RFC 6062 Connect opens a TCP connection); in a namespace whose only
interface is loopback that finds no route, so nothing leaves the machine.
Prints one JSON object: the probe's exit status, its JSON report, its
stderr, and (for our relay) the allocations the relay still holds after it.
Ends the server it started.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, binding_request, free_port, start_node, stop_process

USER, PASSWORD, REALM = "alice", "wonderland-secret", "example.org"
METRICS_PORT = 9641  # free: the namespace is new
PROBE_TIMEOUT_SECONDS = 120


def start_ours(directory: Path, extra: list[str]):
    """``twistd relay`` on 127.0.0.1 with relayed addresses in both families and metrics on 127.0.0.1:9641."""
    node = start_node(directory, "--user", f"{USER}:{PASSWORD}", "--realm", REALM, "--relay-ip", "127.0.0.1",
                      "--relay-ip", "::1", "--metrics", f"127.0.0.1:{METRICS_PORT}", *extra,
                      alternate=False, command="relay")
    return node.process, node.port, node.log


def start_coturn(directory: Path, extra: list[str]):
    """coturn's turnserver from a temp config: long-term credentials, one user, 127.0.0.1, no CLI, no TLS."""
    port = free_port(("127.0.0.1",))
    lines = [
        "listening-ip=127.0.0.1", f"listening-port={port}", "relay-ip=127.0.0.1",
        "min-port=49152", "max-port=49999", f"realm={REALM}", "lt-cred-mech", f"user={USER}:{PASSWORD}",
        "no-tls", "no-dtls", "no-cli", f"userdb={directory / 'turndb'}",
        f"pidfile={directory / 'turnserver.pid'}", f"log-file={directory / 'turnserver.log'}", "simple-log",
        "no-stdout-log",
    ] + [line.lstrip("-") for line in extra]
    config = directory / "turnserver.conf"
    config.write_text("\n".join(lines) + "\n")
    with open(directory / "stdout.log", "wb") as out:
        process = subprocess.Popen(["turnserver", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=directory)

    def log() -> str:
        path = directory / "turnserver.log"
        return path.read_text(errors="replace") if path.exists() else ""

    _wait_for_binding(process, port, log)
    return process, port, log


def _wait_for_binding(process, port: int, log, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"turnserver exited early:\n{log()}")
            s.sendto(binding_request(), ("127.0.0.1", port))
            try:
                s.recvfrom(2048)
                return
            except OSError:
                continue
    stop_process(process)
    raise RuntimeError(f"turnserver did not answer in {seconds} s:\n{log()}")


def allocations_left(seconds: float = 5.0) -> int | None:
    """txr_turn_allocations from our relay's /metrics once it is 0, or its last value after seconds."""
    deadline, value = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("txr_turn_allocations "):
                    value = int(float(line.split()[1]))
        if value == 0:
            return 0
        time.sleep(0.1)
    return value


def main(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    split = rest.index("--") if "--" in rest else len(rest)
    server_args, probe_args = rest[:split], rest[split + 1:]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        start = start_ours if kind == "ours" else start_coturn
        process, port, log = start(directory, server_args)
        try:
            probe = subprocess.run(
                [sys.executable, "-m", "rendezvous.cli.main", "probe-relay", f"127.0.0.1:{port}",
                 "--user", f"{USER}:{PASSWORD}", "--realm", REALM, "--json", *probe_args],
                capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, cwd=ROOT,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
            left = allocations_left() if kind == "ours" else None
        finally:
            stop_process(process)
        report = json.loads(probe.stdout) if probe.stdout.strip() else None
        json.dump({"exit": probe.returncode, "report": report, "stderr": probe.stderr,
                   "allocations_left": left, "server_log": log()[-4000:]}, sys.stdout)
    return 0


def netns_available() -> str | None:
    """Why a network namespace cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to make a network namespace (unshare --net)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
