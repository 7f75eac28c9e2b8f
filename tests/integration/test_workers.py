"""``twistd relay --workers 2``: two processes share the ports, each owns half the relay ports."""

import os
import socket
import time
from pathlib import Path

import pytest

from rendezvous.stun import Attr, Class, Message, Method
from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_REALM, TURN_USER, start_relay, stop_node
from tests.turn_helpers import UdpTurnClient, permit

pytestmark = pytest.mark.integration
LOW, HIGH = 50000, 50999
CLIENTS = 40


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_two_workers_share_the_load(tmp_path):
    """Allocations from many clients land on both workers, each in its own port slice, and all relay."""
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}")
    clients = []
    try:
        deadline = time.monotonic() + 30
        middle = LOW + (HIGH - LOW + 1) // 2
        marker = f"ports {middle}-{HIGH}"  # the second worker's start-up line
        while marker not in node.log() or f"starting on {node.port}" not in node.log().split(marker)[1]:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.1)
        worker = children(node.process.pid)[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((PRIMARY_IP, 0))
            peer.settimeout(3)
            ports = []
            for _ in range(CLIENTS):
                client = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
                client.sock.bind((PRIMARY_IP, 0))
                clients.append(client)
                response = client.allocate()
                assert response.cls == Class.SUCCESS, response
                relayed = response.address(Attr.XOR_RELAYED_ADDRESS)
                ports.append(relayed[1])
                assert permit(client, peer.getsockname()).cls == Class.SUCCESS
                send = Message(Method.SEND, Class.INDICATION)
                send.add_address(Attr.XOR_PEER_ADDRESS, peer.getsockname()).add(Attr.DATA, b"x")
                client.sock.sendto(send.encode(), client.server)
                data, source = peer.recvfrom(100)
                assert (data, source) == (b"x", relayed)
            assert all(LOW <= p <= HIGH for p in ports)
            assert any(p < middle for p in ports) and any(p >= middle for p in ports)
    finally:
        for client in clients:
            client.close()
        stop_node(node)
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.1)
