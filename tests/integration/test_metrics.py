"""/metrics, /healthz and /readyz of a real relay after real traffic."""

import socket
import time
import urllib.error
import urllib.request

import pytest

from rendezvous.stun import Attr, Class, Message, Method
from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_REALM, TURN_USER, free_port, start_relay, stop_node
from tests.turn_helpers import UdpTurnClient, permit

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    """Parse the Prometheus text format into {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def test_metrics_after_traffic(tmp_path):
    """Counters and gauges reflect a Binding, a 401, an allocation, a permission and relayed packets."""
    port = free_port(ips=(PRIMARY_IP,))
    node = start_relay(tmp_path, "--metrics", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 10
        while True:  # /healthz is 503 until every worker (one per core) answers on its socket
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    assert r.read() == b"ok\n"
                break
            except urllib.error.HTTPError as starting:
                assert starting.code == 503 and time.monotonic() < deadline, node.log()
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert r.status == 200
        before = scrape(port)  # the start-up probe already sent a Binding
        client = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
        client.sock.bind((PRIMARY_IP, 0))
        client.ask(Message(Method.BINDING, Class.REQUEST))
        client.allocate()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PRIMARY_IP, 0))
            peer.settimeout(3)
            permit(client, peer.getsockname())
            send = Message(Method.SEND, Class.INDICATION)
            send.add_address(Attr.XOR_PEER_ADDRESS, peer.getsockname()).add(Attr.DATA, b"12345")
            client.sock.sendto(send.encode(), client.server)
            peer.recvfrom(100)
        m = scrape(port)
        assert m["txr_stun_requests_total"] - before["txr_stun_requests_total"] == 1
        assert m["txr_stun_answered_total"] - before["txr_stun_answered_total"] == 1
        assert m["txr_turn_unauthorized_total"] >= 1
        assert m["txr_udp_receive_drops_total"] == 0  # present; nothing overflowed
        assert m["txr_turn_allocations"] == 1 and m["txr_turn_permissions"] == 1
        assert m['txr_relayed_packets_total{direction="to_peer"}'] == 1
        assert m['txr_relayed_bytes_total{direction="to_peer"}'] == 5
        assert not any("alice" in name or "127.0.0.1" in name for name in m)  # no per-user or per-address labels
        client.close()
    finally:
        stop_node(node)
