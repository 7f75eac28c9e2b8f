"""``txrendezvous load-test`` against our ``twistd relay`` and coturn's turnserver on loopback.

Each server is started by the test on free 127.0.0.1 ports (coturn, from
Debian's ``coturn``, with a small relay-port range and a throwaway user
database); the load generator runs as ``python -m rendezvous.cli.main`` for
about two seconds per case, the same way against both.
"""

import datetime
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, binding_request, free_port, start_node, stop_node, stop_process

pytestmark = pytest.mark.integration

IP = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "secret", "example.org"


def _self_signed(directory):
    """A throwaway certificate for localhost and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _wait_until_answering(process, port, tls_port, log_path, seconds=15.0):
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"turnserver exited early:\n{log_path.read_text(errors='replace')}")
            probe.sendto(binding_request(), (IP, port))
            try:
                probe.recvfrom(2048)
                socket.create_connection((IP, tls_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"turnserver did not answer in {seconds} s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="module", params=["ours", "coturn"])
def coturn(request, tmp_path_factory):
    """Our relay, then coturn's turnserver, on 127.0.0.1 (UDP, TCP and TLS) with loopback peers allowed."""
    if request.param == "ours":
        node = start_node(tmp_path_factory.mktemp("ours"), "--user", f"{USER}:{PASSWORD}", "--realm", REALM,
                          "--allow-peer", "127.0.0.0/8", alternate=False, command="relay")
        yield {"port": node.port, "tls_port": node.tls_port, "cert": node.state_dir / "tls" / "self-signed.pem"}
        stop_node(node)
        return
    if shutil.which("turnserver") is None:
        pytest.skip("coturn's turnserver is not installed (Debian package coturn)")
    directory = tmp_path_factory.mktemp("coturn")
    cert, key = _self_signed(directory)
    port = free_port((IP,))
    tls_port = free_port((IP,), exclude={port})
    low = random.randrange(49200, 64000, 100)
    log_path = directory / "turnserver.log"
    args = [
        "turnserver", "-n", "--listening-ip", IP, "--listening-port", str(port),
        "--tls-listening-port", str(tls_port), "--relay-ip", IP,
        "--min-port", str(low), "--max-port", str(low + 299),
        "--realm", REALM, "--user", f"{USER}:{PASSWORD}", "--lt-cred-mech",
        "--cert", str(cert), "--pkey", str(key), "--no-dtls", "--no-cli",
        "--allow-loopback-peers", "--userdb", str(directory / "turndb"),
        "--pidfile", str(directory / "turnserver.pid"), "--log-file", str(log_path), "--simple-log",
        "--no-stdout-log",
    ]
    with open(directory / "stdout.log", "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    try:
        _wait_until_answering(process, port, tls_port, log_path)
        yield {"port": port, "tls_port": tls_port, "cert": cert}
    finally:
        stop_process(process)


def load_test(port, *extra, timeout=60):
    """Run ``python -m rendezvous.cli.main load-test`` and return (exit status, JSON report or None, stderr)."""
    args = [sys.executable, "-m", "rendezvous.cli.main", "load-test", "--server", f"{IP}:{port}",
            "--user", f"{USER}:{PASSWORD}", "--realm", REALM, "--peer-ip", IP, "--json", *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    report = json.loads(done.stdout) if done.returncode == 0 else None
    return done.returncode, report, done.stderr


def assert_relayed(report, clients, rate, seconds):
    expected = clients * rate * seconds
    assert report["allocated"] == clients
    assert report["sent"] >= 0.9 * expected
    assert report["peer_received"] > 0 and report["received"] > 0
    assert report["loss_percent"] < 2.0
    assert report["rtt_ms"]["samples"] == report["received"]
    assert 0 < report["rtt_ms"]["p50"] <= report["rtt_ms"]["p99"] < 1000


def test_udp_channel_mode(coturn):
    """Two UDP clients push ChannelData through the relay and nearly all of it comes back."""
    status, report, stderr = load_test(coturn["port"], "--transport", "udp", "--mode", "channel",
                                       "--clients", "2", "--rate", "200", "--seconds", "2")
    assert status == 0, stderr
    assert_relayed(report, 2, 200, 2)
    assert "pkt/s" in stderr  # the progress lines


def test_tcp_send_mode(coturn):
    """Two TCP clients push Send indications through the relay and nearly all of it comes back."""
    status, report, stderr = load_test(coturn["port"], "--transport", "tcp", "--mode", "send",
                                       "--clients", "2", "--rate", "200", "--seconds", "2", "--size", "333")
    assert status == 0, stderr
    assert_relayed(report, 2, 200, 2)
    assert report["received_mbps"] > 0


def test_tls_with_verification_in_two_processes(coturn):
    """TLS clients that verify the relay's certificate run in two worker processes whose results merge."""
    status, report, stderr = load_test(coturn["tls_port"], "--transport", "tls", "--mode", "channel",
                                       "--clients", "2", "--processes", "2", "--rate", "100", "--seconds", "1.5",
                                       "--tls-ca", str(coturn["cert"]), "--tls-hostname", "localhost")
    assert status == 0, stderr
    assert report["processes"] == 2
    assert_relayed(report, 2, 100, 1.5)


def test_tls_refuses_an_unverified_certificate(coturn):
    """Without --tls-ca or --tls-insecure a self-signed server fails setup with a hint."""
    status, _, stderr = load_test(coturn["tls_port"], "--transport", "tls", "--seconds", "1",
                                  "--setup-timeout", "5")
    assert status == 1
    assert "no allocation succeeded" in stderr and "--tls-insecure" in stderr


def test_wrong_password_fails_clearly(coturn):
    """Bad credentials end the run with status 1 and the server's 401."""
    args = [sys.executable, "-m", "rendezvous.cli.main", "load-test", "--server", f"{IP}:{coturn['port']}",
            "--user", f"{USER}:wrong", "--seconds", "1"]
    done = subprocess.run(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "no allocation succeeded: ALLOCATE failed: 401" in done.stderr


def test_ramp_reports_the_highest_rate_that_held_and_plots_it(coturn, tmp_path):
    """--ramp climbs to --ramp-max on loopback, reports every step and the highest that held, and plots them."""
    plot = tmp_path / "ramp.svg"
    status, report, stderr = load_test(coturn["port"], "--clients", "2", "--ramp", "--ramp-start", "200",
                                       "--ramp-factor", "2", "--ramp-max", "800", "--step-seconds", "0.5",
                                       "--plot", str(plot), timeout=120)
    assert status == 0, stderr
    assert [step["offered_pps"] for step in report["steps"]] == [200, 400, 800]
    assert all(step["held"] for step in report["steps"])
    held = report["held"]["summary"]
    assert report["held"]["offered_pps"] == 800 and held["received_pps"] > 700 and held["loss_percent"] <= 1
    assert 0 < held["rtt_ms"]["p50"] <= held["rtt_ms"]["p99"] < 1000 and held["received_mbps"] > 0
    assert "--ramp-max 800" in report["stopped"]
    assert "offered pkt/s" in stderr and "held" in stderr  # each step as it finishes
    assert ET.parse(plot).getroot().tag.endswith("svg")


def test_ramp_stops_at_the_p99_bound(coturn):
    """A step whose p99 round trip passes --max-p99-ms fails, and with none held the command exits 1."""
    status, _, stderr = load_test(coturn["port"], "--clients", "1", "--ramp", "--ramp-start", "100",
                                  "--step-seconds", "0.5", "--max-p99-ms", "0.001", timeout=120)
    assert status == 1
    assert "p99 RTT" in stderr and "> 0.001 ms" in stderr
    assert "no step held (the first step failed; lower --ramp-start)" in stderr
