"""upnp_helper and ``txrendezvous upnp`` against a real miniupnpd gateway in the
NAT lab (root; Debian package miniupnpd-nftables), and without one."""

import json
import os
import subprocess
import sys
import time

import pytest

from .lab import ENV, MINIUPNPD, ROOT, SERVER_IP

pytestmark = [
    pytest.mark.natlab,
    pytest.mark.skipif(not os.path.exists(MINIUPNPD),
                       reason=f"no {MINIUPNPD} (apt-get install miniupnpd-nftables)"),
]


@pytest.fixture(scope="module")
def gateway_site(natlab):
    """A client behind a masquerading router that runs miniupnpd."""
    return natlab("eim-apdf", upnp=True)


def upnp(site, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``txrendezvous upnp ARGS`` run in the site's client namespace."""
    argv = site.exec_argv(sys.executable, "-m", "rendezvous.cli.main", "upnp", *args)
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, cwd=ROOT, env=ENV)


# Receives one datagram on argv[1]:argv[2] within argv[3] s; prints the sender or "timeout".
_RECEIVE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.settimeout(float(sys.argv[3])); print('ready', flush=True)\n"
    "try:\n"
    "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n"
    "except OSError:\n"
    "    print('timeout', flush=True)\n"
)

# Sends argv[3] to argv[1]:argv[2] five times, 0.1 s apart, from one fresh port.
_SEND = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(5):\n"
    "    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2]))); time.sleep(0.1)\n"
)


def packet_arrives(natlab, site, port: int, wait_seconds: float) -> str:
    """Sends from the public super node host to WAN:port; what the client's socket on port got."""
    receiver = subprocess.Popen(site.exec_argv(sys.executable, "-c", _RECEIVE, site.client_ip, str(port),
                                               str(wait_seconds)), stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", natlab.lab.server_ns, sys.executable, "-c", _SEND, site.wan_ip,
                        str(port), "hello"], check=True, timeout=10)
        out, _ = receiver.communicate(timeout=wait_seconds + 10)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(5)
    return out.strip()


def test_discovery_finds_the_gateway_and_its_external_address(gateway_site):
    """From the client, discovery finds miniupnpd and reports the router's WAN address."""
    done = upnp(gateway_site, "status")
    assert done.returncode == 0, done.stderr
    status = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    assert status["external_address"] == gateway_site.wan_ip
    assert status["lan_address"] == gateway_site.client_ip
    assert status["gateway"].startswith("http://192.168.")


def test_udp_mapping_lets_a_public_packet_in_until_unmapped(natlab, gateway_site):
    """A UDP mapping delivers an unsolicited public packet to the client's socket; after unmap it is listed no more and nothing arrives."""
    assert packet_arrives(natlab, gateway_site, 40000, 1.0) == "timeout"  # the NAT filters it first
    done = upnp(gateway_site, "map", "40000", "--lease-seconds", "600")
    assert done.returncode == 0, done.stderr
    assert f"{gateway_site.wan_ip}:40000 -> {gateway_site.client_ip}:40000" in done.stdout
    assert packet_arrives(natlab, gateway_site, 40000, 5.0) == f"hello {SERVER_IP}"
    listed = upnp(gateway_site, "list")
    assert f"UDP\t40000\t{gateway_site.client_ip}:40000" in listed.stdout, listed.stderr
    done = upnp(gateway_site, "unmap", "40000")
    assert done.returncode == 0, done.stderr
    assert "40000" not in upnp(gateway_site, "list").stdout
    assert packet_arrives(natlab, gateway_site, 40000, 1.0) == "timeout"


def test_tcp_mapping_is_listed_and_deleted(gateway_site):
    """A TCP mapping to another internal port is listed with it and deleted."""
    assert upnp(gateway_site, "map", "5000", "--external-port", "45000", "--protocol", "tcp").returncode == 0
    assert f"TCP\t45000\t{gateway_site.client_ip}:5000" in upnp(gateway_site, "list").stdout
    assert upnp(gateway_site, "unmap", "45000", "--protocol", "tcp").returncode == 0
    assert "45000" not in upnp(gateway_site, "list").stdout


def test_gateway_refusal_is_reported_with_its_code(gateway_site):
    """A port the gateway's rules forbid exits 3 with the UPnP error code and text."""
    done = upnp(gateway_site, "map", "80")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the gateway refused (UPnP error 606 Action not authorized)" in done.stderr


# Maps UDP 40002 with PortMappingService, checks it through a second Gateway, stops, checks again.
_SERVICE = """
import json
from twisted.internet import task
from twisted.internet.defer import Deferred
from upnp_helper import MappingRequest, PortMappingService, discover

async def main(reactor):
    svc = PortMappingService(reactor, [MappingRequest(40002)], lease_seconds=600)
    svc.startService()
    mappings = await svc.when_ready()
    gw = await discover(reactor)
    during = await gw.get_mapping(40002, "UDP")
    listed = [m.external_port for m in await gw.list_mappings()]
    await svc.stopService()
    after = await gw.get_mapping(40002, "UDP")
    gw.close()
    print(json.dumps({"made": [[m.external_port, m.lease_seconds] for m in mappings],
                      "external": svc.external_address or None, "during": during and during.internal_host,
                      "listed": listed, "after": after and after.internal_host}))

task.react(lambda r: Deferred.fromCoroutine(main(r)))
"""


def test_service_maps_on_start_and_unmaps_on_stop(gateway_site):
    """PortMappingService makes its mapping on start (seen by get and list) and removes it on stop."""
    done = subprocess.run(gateway_site.exec_argv(sys.executable, "-c", _SERVICE), capture_output=True, text=True,
                          check=False, timeout=60, cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["made"] == [[40002, 600]]
    assert seen["during"] == gateway_site.client_ip and 40002 in seen["listed"]
    assert seen["after"] is None


# Maps UDP argv[2] through the gateway by method argv[1] with PortMappingService,
# prints the mapping, waits for a line on stdin, stops, and says so.
_HOLD = """
import sys
from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from upnp_helper import MappingRequest, PortMappingService

async def main(reactor):
    svc = PortMappingService(reactor, [MappingRequest(int(sys.argv[2]))], lease_seconds=120, method=sys.argv[1])
    svc.startService()
    (mapping,) = await svc.when_ready()
    print("mapped", svc.gateway.control_url, mapping.external_port, mapping.lease_seconds, flush=True)
    await threads.deferToThread(sys.stdin.readline)
    await svc.stopService()
    print("stopped", flush=True)

task.react(lambda r: Deferred.fromCoroutine(main(r)))
"""


@pytest.mark.parametrize("method, port", [("natpmp", 40020), ("pcp", 40021)])
def test_natpmp_and_pcp_mappings_let_a_public_packet_in_until_stopped(natlab, gateway_site, method, port):
    """A NAT-PMP or PCP mapping held by the service delivers an unsolicited public packet; after stop nothing arrives."""
    holder = subprocess.Popen(gateway_site.exec_argv(sys.executable, "-c", _HOLD, method, str(port)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=ENV)
    try:
        line = holder.stdout.readline().split()
        assert line[:2] == ["mapped", f"{method}://192.168.{gateway_site.client_ip.split('.')[2]}.1:5351"], (
            line, holder.stderr.read() if holder.poll() is not None else "")
        assert line[2:] == [str(port), "120"]
        assert packet_arrives(natlab, gateway_site, port, 5.0) == f"hello {SERVER_IP}"
        holder.stdin.write("stop\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "stopped"
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
    assert packet_arrives(natlab, gateway_site, port, 1.0) == "timeout"


def test_cli_maps_and_unmaps_by_pcp_with_its_nonce(gateway_site):
    """``upnp --method pcp map`` prints the nonce that ``unmap`` needs; without it unmap exits 1."""
    done = upnp(gateway_site, "--method", "pcp", "map", "40030", "--lease-seconds", "120")
    assert done.returncode == 0, done.stderr
    assert f"{gateway_site.wan_ip}:40030 -> {gateway_site.client_ip}:40030 (lease 120 s) nonce " in done.stdout
    nonce = done.stdout.split()[-1]
    refused = upnp(gateway_site, "--method", "pcp", "unmap", "40030")
    assert refused.returncode == 1 and "needs --nonce" in refused.stderr
    done = upnp(gateway_site, "--method", "pcp", "unmap", "40030", "--nonce", nonce)
    assert done.returncode == 0, done.stderr


def test_cli_auto_prefers_pcp_and_natpmp_reports_the_address(gateway_site):
    """``--method auto`` picks PCP on miniupnpd; ``--method natpmp status`` gives the WAN address."""
    done = upnp(gateway_site, "--method", "auto", "status")
    assert done.returncode == 0, done.stderr
    assert "gateway\tpcp://" in done.stdout and f"external_address\t{gateway_site.wan_ip}" in done.stdout
    done = upnp(gateway_site, "--method", "natpmp", "status")
    assert done.returncode == 0, done.stderr
    assert "gateway\tnatpmp://" in done.stdout and f"external_address\t{gateway_site.wan_ip}" in done.stdout


def test_no_gateway_fails_quickly(natlab):
    """Behind a NAT without miniupnpd, status exits 2 saying no gateway answered, within seconds, by every method."""
    site = natlab("eim-apdf")
    started = time.monotonic()
    done = upnp(site, "--timeout-seconds", "1", "status")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no UPnP gateway" in done.stderr
    assert time.monotonic() - started < 10
    done = upnp(site, "--timeout-seconds", "1", "--method", "auto", "status")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no gateway answered PCP, NAT-PMP or UPnP IGD" in done.stderr
    for method in ("natpmp", "pcp"):
        done = upnp(site, "--timeout-seconds", "1", "--method", method, "status")
        assert done.returncode == 2 and "no answer from 192.168." in done.stderr, done.stderr
