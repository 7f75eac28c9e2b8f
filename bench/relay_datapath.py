#!/usr/bin/env python3
"""Benchmark: CPU time per packet of the relay data path, in process, no sockets.

Not a test. It drives our relay's own Twisted objects with pre-built packets:
the client-facing ``ServerDatagramProtocol`` on a ``twisted.internet.udp.Port``
and the relay sockets (``RelaySocket``), each read through its ``doRead``
(the read pass they install) over a stand-in socket, and the TCP client leg's
``ServerStreamProtocol.dataReceived``. Stand-ins replace the two batched
calls of ``relay._mmsg``: the receiver hands out the prepared datagrams, up
to a batch, and the sender only counts. They are Python calls, so the
figures include a little of their own. With them, every packet takes the
Python data path (what runs without the extension, or for an allocation
with a bandwidth limit): the routing in C of relay/_route.c needs real
sockets and shows in ``bench/relay_throughput.py``. A TurnServer on a ``task.Clock``
holds ``--allocations`` allocations, each with a permission and a bound
channel.

Paths, each timed with ``time.process_time`` over ``--packets`` packets
(best of ``--repeat``):

- ``udp channel c->p``: ChannelData from a client to its peer;
- ``udp send c->p``: a Send indication from a client to its peer;
- ``udp channel p->c``: a datagram from a peer, to the client as ChannelData;
- ``udp data p->c``: a datagram from a peer without a channel, as a Data indication;
- ``tcp channel c->p``: ChannelData frames on a TCP connection, ``--batch`` per read;
- ``tcp channel p->c``: a datagram from a peer to a TCP client (padded ChannelData).

UDP reads hand ``--batch`` datagrams to each ``doRead`` (one wakeup), so the
per-wakeup cost (the read pass, the flush of each socket's queue) is spread
over the batch, as it is under load. The figures leave out the kernel (syscalls) and the
reactor's dispatch of a wakeup; ``bench/relay_throughput.py`` measures the
whole process. ``--profile PATH`` prints a cProfile of one path instead.

    .venv/bin/python bench/relay_datapath.py
    .venv/bin/python bench/relay_datapath.py --batch 1 --size 1000
    .venv/bin/python bench/relay_datapath.py --profile "udp channel c->p"
"""

import argparse
import cProfile
import os
import pstats
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import udp  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from relay import datagrams  # noqa: E402
from relay.allocation import Allocation  # noqa: E402
from relay.credentials import Credentials  # noqa: E402
from relay.listeners import ServerStreamFactory, UdpEndpoints  # noqa: E402
from relay.peer_policy import PeerPolicy  # noqa: E402
from relay.relay_ports import RelaySocket  # noqa: E402
from relay.server import RelayPolicy, TurnServer  # noqa: E402
from rendezvous.stun import Attr, Class, Message, Method  # noqa: E402
from rendezvous.stun.binding import Addresses, BindingServer  # noqa: E402

SERVER = ("127.0.0.1", 3478)
CHANNEL = 0x4000


class FakeSocket:
    """A UDP socket stand-in: datagrams queued for FakeReceiver, datagrams counted by FakeSender."""

    family = 2  # AF_INET
    by_fd: dict = {}

    def __init__(self) -> None:
        self.queue: list = []
        self.sent = 0
        self.fd = 1000 + len(self.by_fd)
        self.by_fd[self.fd] = self

    def sendto(self, data: bytes, addr) -> int:
        self.sent += 1
        return len(data)

    def setsockopt(self, *args) -> None:
        pass

    def fileno(self) -> int:
        return self.fd


class FakeReceiver:
    """recvmmsg's stand-in: up to a batch of the socket's queued datagrams (the queue is reversed)."""

    def recv(self, sock: FakeSocket) -> list:
        queue = sock.queue
        batch = queue[-datagrams.BATCH:]
        del queue[-datagrams.BATCH:]
        batch.reverse()
        return batch

    def recv_serving(self, sock: FakeSocket, tail: bytes | None, routes: dict | None,
                     answer=None) -> tuple[int, int, list]:
        """As recv: the bench sends no STUN requests, so none is answered, and routes nothing in C."""
        batch = self.recv(sock)
        return len(batch), 0, batch


class FakeSender:
    """sendmmsg's stand-in: counts the datagrams on the socket."""

    @staticmethod
    def send(fd: int, family: int, queue: list) -> int:
        FakeSocket.by_fd[fd].sent += len(queue)
        return len(queue)


datagrams._receiver, datagrams._mmsg = FakeReceiver(), FakeSender()


class FakeStreamTransport:
    """A TCP transport stand-in that counts writes."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def getPeer(self):
        return type("Peer", (), {"host": "127.0.0.9", "port": 40000})()

    def loseConnection(self) -> None:
        pass


def port_for(protocol) -> udp.Port:
    """A udp.Port around protocol and a FakeSocket, as listenUDP would make it (unbound)."""
    port = udp.Port(0, protocol)
    port.socket = FakeSocket()
    protocol.makeConnection(port)
    return port


class Bench:
    """A TurnServer with n UDP allocations (and one TCP one), each with a channel to its own peer."""

    def __init__(self, allocations: int) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.turn = TurnServer(RelayPolicy(realm="bench"), Credentials(), PeerPolicy(), None, self.clock)
        endpoints = UdpEndpoints(BindingServer(Addresses(*SERVER)), self.turn)
        self.listener = port_for(endpoints.protocol(SERVER))
        self.outbox = self.listener.protocol.outbox
        self.clients, self.relay_ports = [], []
        for i in range(allocations):
            client = ("127.0.1.%d" % (1 + i % 250), 20000 + i)
            self.clients.append(client)
            self.relay_ports.append(self._allocate(("udp", client, SERVER), True, i))
        factory = ServerStreamFactory(BindingServer(Addresses(*SERVER)), self.turn, SERVER, "tcp")
        self.stream = factory.buildProtocol(None)
        self.stream.makeConnection(FakeStreamTransport())
        self.tcp_relay = self._allocate(self.stream.five_tuple, False, allocations)

    def _allocate(self, five_tuple, udp_client: bool, i) -> RelaySocket:
        relay = RelaySocket(("127.0.0.1", 50000 + i), None, FakeSocket())
        send = self.outbox.sender(five_tuple[1]) if udp_client else self.stream.transport.write
        allocation = Allocation(five_tuple, os.urandom(12), "bench", None, {4: relay},
                                self.clock.seconds() + 600, send)
        relay.allocation = allocation
        self.turn.allocations[five_tuple] = allocation
        allocation.bind_channel(CHANNEL, self.peer(i), self.clock.seconds())
        allocation.permit(self.peer_without_channel(i)[0], self.clock.seconds())
        return relay

    @staticmethod
    def peer(i):
        return ("198.51.100.%d" % (1 + i % 250), 30000 + i)

    @staticmethod
    def peer_without_channel(i):
        return ("203.0.113.%d" % (1 + i % 250), 31000 + i)


def send_indication(peer, payload: bytes) -> bytes:
    msg = Message(Method.SEND, Class.INDICATION)
    msg.add_address(Attr.XOR_PEER_ADDRESS, peer).add(Attr.DATA, payload)
    return msg.encode()


def udp_path(bench: Bench, name: str, payload: bytes, packets: int, batch: int):
    """The work of one UDP path: (doRead of a port, datagrams for one round over all allocations)."""
    n = len(bench.clients)
    if name == "udp channel c->p":
        frame = struct.pack("!HH", CHANNEL, len(payload)) + payload
        return [(bench.listener, [(frame, c) for c in bench.clients])]
    if name == "udp send c->p":
        return [(bench.listener, [(send_indication(bench.peer(i), payload), c) for i, c in enumerate(bench.clients)])]
    if name == "udp channel p->c":
        return [(bench.relay_ports[i], [(payload, bench.peer(i))]) for i in range(n)]
    if name == "udp data p->c":
        return [(bench.relay_ports[i], [(payload, bench.peer_without_channel(i))]) for i in range(n)]
    raise ValueError(name)


def run_udp(bench: Bench, name: str, payload: bytes, packets: int, batch: int) -> tuple[float, int]:
    """CPU seconds for packets datagrams on one UDP path, batch per doRead; and the packets relayed."""
    work = udp_path(bench, name, payload, packets, batch)
    rounds = []  # (doRead, datagrams for it) per wakeup
    for port, datagrams in work:
        rounds.append((port, datagrams * batch if len(datagrams) == 1 else datagrams))
    plan = []
    total = 0
    while total < packets:
        for port, datagrams in rounds:
            for start in range(0, len(datagrams), batch):
                chunk = datagrams[start:start + batch]
                plan.append((port.doRead, port.socket.queue, list(reversed(chunk))))
                total += len(chunk)
    sockets = {id(bench.listener.socket): bench.listener.socket}
    for port in bench.relay_ports:
        sockets[id(port.socket)] = port.socket
    before = sum(s.sent for s in sockets.values())
    start = time.process_time()
    for do_read, queue, chunk in plan:
        queue.extend(chunk)
        do_read()
    elapsed = time.process_time() - start
    return elapsed, sum(s.sent for s in sockets.values()) - before


def run_tcp(bench: Bench, name: str, payload: bytes, packets: int, batch: int) -> tuple[float, int]:
    """CPU seconds for packets frames on one TCP path; and the packets relayed."""
    if name == "tcp channel c->p":
        frame = struct.pack("!HH", CHANNEL, len(payload)) + payload + b"\0" * (-len(payload) % 4)
        chunks = [frame * batch] * (packets // batch)
        relay = bench.tcp_relay.socket
        before = relay.sent
        receive = bench.stream.dataReceived
        start = time.process_time()
        for chunk in chunks:
            receive(chunk)
        return time.process_time() - start, relay.sent - before
    if name == "tcp channel p->c":
        port = bench.tcp_relay
        transport = bench.stream.transport
        before = transport.written
        chunk = [(payload, bench.peer(len(bench.clients)))] * batch
        queue, do_read = port.socket.queue, port.doRead
        start = time.process_time()
        for _ in range(packets // batch):
            queue.extend(chunk)
            do_read()
        return time.process_time() - start, transport.written - before
    raise ValueError(name)


PATHS = ["udp channel c->p", "udp send c->p", "udp channel p->c", "udp data p->c",
         "tcp channel c->p", "tcp channel p->c"]


def measure(name: str, args) -> tuple[float, int]:
    bench = Bench(args.allocations)
    payload = os.urandom(args.size)
    run = run_udp if name.startswith("udp") else run_tcp
    best, relayed = None, 0
    for _ in range(args.repeat):
        elapsed, relayed = run(bench, name, payload, args.packets, args.batch)
        best = elapsed if best is None else min(best, elapsed)
    return best, relayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=200_000, help="packets per timing (default 200000)")
    parser.add_argument("--repeat", type=int, default=5, help="timings per path; the best counts (default 5)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--batch", type=int, default=8, help="datagrams per doRead / frames per TCP read (default 8)")
    parser.add_argument("--allocations", type=int, default=10, help="allocations, one peer each (default 10)")
    parser.add_argument("--profile", choices=PATHS, help="print a cProfile of this path instead")
    args = parser.parse_args()
    args.packets = max(args.batch, min(args.packets, 10_000_000))
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        measure(args.profile, args)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return
    print(f"payload {args.size} B, batch {args.batch}, {args.allocations} allocations, "
          f"{args.packets} packets, best of {args.repeat}; Python {sys.version.split()[0]}")
    print("| path | µs per packet | relayed |")
    print("| --- | ---: | ---: |")
    for name in PATHS:
        elapsed, relayed = measure(name, args)
        if relayed == 0:
            raise SystemExit(f"{name}: nothing was relayed")
        print(f"| {name} | {elapsed / relayed * 1e6:.2f} | {relayed} |")


if __name__ == "__main__":
    main()
