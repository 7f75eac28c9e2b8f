"""``twistd relay --workers 2``: two processes share the ports, each owns half the relay ports;
the first answers metrics, health and the admin API for both."""

import json
import os
import signal
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relay.handoff import HandoffFactory
from relay.relay_ports import RESERVATION_SECONDS, RelayPorts
from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_even_port, encode_uint32
from tests.conftest import (
    PRIMARY_IP,
    TURN_PASSWORD,
    TURN_REALM,
    TURN_USER,
    binding_request,
    free_port,
    start_relay,
    stop_node,
)
from tests.integration.test_metrics import scrape
from tests.turn_helpers import TcpTurnClient, UdpTurnClient, code, permit

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


def wait_for_second_worker(node) -> int:
    """The second worker's pid, once it listens."""
    deadline = time.monotonic() + 30
    middle = LOW + (HIGH - LOW + 1) // 2
    marker = f"ports {middle}-{HIGH}"  # the second worker's start-up line
    while marker not in node.log() or f"starting on {node.port}" not in node.log().split(marker)[1]:
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    return children(node.process.pid)[0]


def udp_client(node, clients: list, user: str = TURN_USER, password: str = TURN_PASSWORD) -> UdpTurnClient:
    """A TURN client on its own UDP socket (a fresh 4-tuple, so either worker may get it), kept in clients."""
    client = UdpTurnClient((node.ip, node.port), user, password, TURN_REALM)
    client.sock.bind((PRIMARY_IP, 0))
    clients.append(client)
    return client


def admin(node, metrics: int, path: str, method: str = "GET") -> dict:
    token = (node.state_dir / "admin.token").read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{metrics}/admin/{path}", method=method,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_two_workers_share_the_load(tmp_path):
    """Allocations from many clients land on both workers, each in its own port slice, and all relay;
    one scrape, one health check and one admin listing cover both workers."""
    metrics = free_port(ips=(PRIMARY_IP,))
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}",
                       "--metrics", f"127.0.0.1:{metrics}")
    clients = []
    try:
        middle = LOW + (HIGH - LOW + 1) // 2
        worker = wait_for_second_worker(node)
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
        m = scrape(metrics)
        assert m["txr_workers_answering"] == 2
        assert m["txr_turn_allocations"] == CLIENTS and m["txr_turn_permissions"] == CLIENTS
        assert m['txr_relayed_packets_total{direction="to_peer"}'] == CLIENTS
        assert m["txr_turn_allocations_created_total"] == CLIENTS
        for health in ("healthz", "readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/{health}", timeout=5) as r:
                assert r.read() == b"ok\n"
        listed = admin(node, metrics, "allocations?limit=1000")
        assert listed["total"] == CLIENTS == len(listed["items"]) and listed["workers_answering"] == 2
        ids = [item["id"] for item in listed["items"]]
        assert len(set(ids)) == CLIENTS and {i.split("-")[0] for i in ids} == {"0", "1"}
        assert [i["id"] for i in admin(node, metrics, f"allocations?offset={CLIENTS - 3}&limit=7")["items"]] == ids[-3:]
        on_second = next(item for item in listed["items"] if item["id"].startswith("1-"))
        assert int(on_second["relayed"][0].rsplit(":", 1)[1]) >= middle
        assert admin(node, metrics, f"allocations/{on_second['id']}", "DELETE")["id"] == on_second["id"]
        assert admin(node, metrics, "allocations?limit=0")["total"] == CLIENTS - 1
        owner = next(c for c in clients if "%s:%d" % c.sock.getsockname() == on_second["client"])
        assert code(owner.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(600)))) == 437
    finally:
        for client in clients:
            client.close()
        stop_node(node)
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.1)


def test_udp_clients_stay_on_their_worker_while_workers_start(tmp_path):
    """Allocations made while the second worker is still starting answer Refresh after it is up:
    every worker's socket is in the SO_REUSEPORT group from the start, so no client moves."""
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}")
    clients = []
    try:
        for _ in range(CLIENTS):
            client = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM, timeout=20)
            client.sock.bind((PRIMARY_IP, 0))
            clients.append(client)
            assert client.allocate().cls == Class.SUCCESS
        wait_for_second_worker(node)
        for client in clients:
            assert client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(600))).cls == Class.SUCCESS
    finally:
        for client in clients:
            client.close()
        stop_node(node)


def test_quotas_hold_across_workers(tmp_path):
    """--user-quota and --total-quota count the allocations of both workers together: with three
    on each worker a user's seventh gets 486 on either, and one deleted makes room again."""
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}", "--user", "bob:builder",
                       "--user-quota", "6", "--total-quota", "8")
    middle = LOW + (HIGH - LOW + 1) // 2
    kept = {0: [], 1: []}
    clients = []

    def new_client(user=TURN_USER, password=TURN_PASSWORD):
        return udp_client(node, clients, user, password)

    try:
        wait_for_second_worker(node)
        for _ in range(200):  # until each worker holds three of alice's allocations
            if min(len(k) for k in kept.values()) == 3:
                break
            client = new_client()
            response = client.allocate()
            assert response.cls == Class.SUCCESS, response
            worker = int(response.address(Attr.XOR_RELAYED_ADDRESS)[1] >= middle)
            if len(kept[worker]) < 3:
                kept[worker].append(client)
            else:  # this worker has its three: delete it again
                assert client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
        assert len(kept[0]) == len(kept[1]) == 3
        refused = [code(new_client().allocate()) for _ in range(6)]
        assert refused == [486] * 6  # whichever worker each landed on
        assert kept[1][0].request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS
        results = [new_client().allocate() for _ in range(3)]
        assert [r.cls == Class.SUCCESS for r in results] == [True, False, False]
        bob = [new_client("bob", "builder").allocate() for _ in range(4)]
        assert [r.cls == Class.SUCCESS for r in bob] == [True, True, False, False]
        assert {code(r) for r in bob[2:]} == {508}
    finally:
        for client in clients:
            client.close()
        stop_node(node)
    assert list((node.state_dir / "run").glob("*.quota")) == []  # the first process removed its file


def test_drain_reaches_every_worker(tmp_path):
    """SIGUSR1 to the first process drains the second too, and the relay exits once both are done."""
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}", "--drain-timeout", "30")
    try:
        worker = wait_for_second_worker(node)
        node.process.send_signal(signal.SIGUSR1)
        node.process.wait(15)
        assert "relay worker 1 ended while draining" in node.log()
        assert not alive(worker)
    finally:
        stop_node(node)


class TlsTurnClient(TcpTurnClient):
    """A TURN client over a real TLS connection to the node's self-signed certificate."""

    def __init__(self, node) -> None:
        super().__init__((node.ip, node.tls_port), TURN_USER, TURN_PASSWORD, TURN_REALM)
        context = ssl.create_default_context(cafile=str(node.state_dir / "tls" / "self-signed.pem"))
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_rfc6062_across_workers(tmp_path, transport):
    """RFC 6062 Connect + ConnectionBind succeed for many clients, whichever worker each connection reaches."""
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}")

    def connect():
        if transport == "tls":
            return TlsTurnClient(node)
        return TcpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)

    owners = []
    try:
        wait_for_second_worker(node)
        with socket.create_server((PRIMARY_IP, 0)) as listener:
            listener.settimeout(5)
            for n in range(CLIENTS):
                control = connect()
                allocated = control.allocate_tcp()
                assert allocated.cls == Class.SUCCESS, allocated
                msg = Message(Method.CONNECT, Class.REQUEST)
                msg.add_address(Attr.XOR_PEER_ADDRESS, listener.getsockname())
                response = control.request(Method.CONNECT, *msg.attributes, tid=msg.transaction_id)
                assert response.cls == Class.SUCCESS, response
                connection_id = response.get(Attr.CONNECTION_ID)
                owners.append(connection_id[0])
                peer, source = listener.accept()
                assert source == allocated.address(Attr.XOR_RELAYED_ADDRESS)
                data = connect()
                bound = data.request(Method.CONNECTION_BIND, (Attr.CONNECTION_ID, connection_id))
                assert bound.cls == Class.SUCCESS, bound
                data.sock.sendall(b"to peer %d" % n)
                peer.settimeout(5)
                assert peer.recv(100) == b"to peer %d" % n
                peer.sendall(b"to client %d" % n)
                assert data.sock.recv(100) == b"to client %d" % n
                peer.close()
                assert data.sock.recv(100) == b""  # the peer's close reaches the client
                for s in (data.sock, control.sock):
                    s.close()
        assert set(owners) == {0, 1}  # CONNECTION-IDs name both workers
        assert "took over a ConnectionBind connection from another worker" in node.log()
    finally:
        stop_node(node)


def test_reservation_tokens_across_workers(tmp_path):
    """Second Allocates with RESERVATION-TOKEN get port+1 whichever worker they reach (RFC 8656 §7.2);
    a token used once, or naming no worker, gets 508."""
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}")
    clients = []

    def client():
        return udp_client(node, clients)

    try:
        wait_for_second_worker(node)
        for _ in range(CLIENTS // 2):
            first = client().allocate((Attr.EVEN_PORT, encode_even_port(True)))
            assert first.cls == Class.SUCCESS, first
            token = first.get(Attr.RESERVATION_TOKEN)
            second = client().allocate((Attr.RESERVATION_TOKEN, token))
            assert second.cls == Class.SUCCESS, second
            even = first.address(Attr.XOR_RELAYED_ADDRESS)[1]
            assert even % 2 == 0 and second.address(Attr.XOR_RELAYED_ADDRESS)[1] == even + 1
            assert code(client().allocate((Attr.RESERVATION_TOKEN, token))) == 508
        assert code(client().allocate((Attr.RESERVATION_TOKEN, b"\x07" + os.urandom(7)))) == 508
        assert "gave reserved relay port" in node.log()  # some crossed workers
    finally:
        for made in clients:
            made.close()
        stop_node(node)


class _Peer:
    """Stands in for an allocation: records what reaches a relay socket."""

    def __init__(self) -> None:
        self.received = Deferred()

    def from_peer(self, data, addr) -> None:
        if not self.received.called:
            self.received.callback(data)


@pytest_twisted.ensureDeferred
async def test_reserved_socket_moves_between_processes_ports(tmp_path):
    """A worker gives the socket held for its token to the worker asking and forgets it; the socket
    then delivers to the asker; an expired token or an owner that is gone gives None."""
    owner_clock = Clock()
    owner = RelayPorts(reactor, {4: PRIMARY_IP}, LOW, HIGH, clock=owner_clock)
    asker = RelayPorts(reactor, {4: PRIMARY_IP}, LOW, HIGH)
    path = tmp_path / "owner.fd.sock"
    listening = reactor.listenUNIX(str(path), HandoffFactory(reactor, {}, owner))
    asker.worker_index, asker.handoff_paths = 1, {0: path, 2: tmp_path / "gone.fd.sock"}
    try:
        even, token = owner.open(4, even=True, reserve_next=True)
        assert token[0] == 0
        relay = await asker.take_reserved(token)
        assert relay.address == (PRIMARY_IP, even.address[1] + 1)
        assert token not in owner.reservations and owner.open_count == 1 and asker.open_count == 1
        peer = _Peer()
        relay.allocation = peer
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"to the asker", relay.address)
        assert await peer.received == b"to the asker"
        assert await asker.take_reserved(token) is None  # once
        _, expiring = owner.open(4, even=True, reserve_next=True)
        owner_clock.advance(RESERVATION_SECONDS)
        assert await asker.take_reserved(expiring) is None
        assert await asker.take_reserved(b"\x02" + os.urandom(7)) is None  # its owner is gone
        relay.close()
        even.close()
    finally:
        owner.stop()
        asker.stop()
        await listening.stopListening()


def worker_metrics(node, index: int) -> dict[str, float]:
    """One worker's own /metrics, from its private unix socket (the public port sums them all)."""
    import http.client

    from rendezvous.node.worker_view import socket_path

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(str(socket_path(node.state_dir, node.process.pid, index)))

    connection = UnixConnection("localhost")
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_every_worker_answers_stun_binding(tmp_path):
    """With --workers 2 both processes answer Binding requests on the shared UDP port (the C fast path
    counts them as the core does); one scrape counts them all."""
    metrics = free_port(ips=(PRIMARY_IP,))
    node = start_relay(tmp_path, "--workers", "2", "--relay-ports", f"{LOW}-{HIGH}",
                       "--metrics", f"127.0.0.1:{metrics}")
    try:
        wait_for_second_worker(node)
        total, second = scrape(metrics)["txr_stun_answered_total"], worker_metrics(node, 1)["txr_stun_answered_total"]
        for _ in range(CLIENTS):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind((PRIMARY_IP, 0))
                client.settimeout(3)
                request = binding_request()
                client.sendto(request, (node.ip, node.port))
                response = Message.decode(client.recvfrom(2048)[0])
                assert response.cls == Class.SUCCESS and response.transaction_id == request[8:20]
                assert response.address(Attr.XOR_MAPPED_ADDRESS) == client.getsockname()
        assert scrape(metrics)["txr_stun_answered_total"] == total + CLIENTS
        assert 0 < worker_metrics(node, 1)["txr_stun_answered_total"] - second < CLIENTS
    finally:
        stop_node(node)
