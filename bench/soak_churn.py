"""Allocation churn for the soak (bench/soak.py): allocations made and released at a bounded rate, not a test.

    python bench/soak_churn.py --server 127.0.0.1:3478 --user u:p --realm r --rate 10 --seconds 300

Each cycle is one TURN client (relay.client) on its own UDP socket: Allocate
(RFC 8656 §7), CreatePermission for a local peer (§10), ChannelBind (§12),
a few ChannelData packets that the peer echoes, then a delete (Refresh with
LIFETIME 0, §8). Every ``--abandon-every``-th cycle closes its socket
without the delete, so that allocation must expire by its lifetime. Client
sockets bind rotating loopback addresses (127.0.X.Y), as clients come from
many hosts, so the relay's per-source 401 limit is not what is measured.
Bounded: at most ``--rate`` cycles a second, ``--max-in-flight`` at once, each
cycle by a timeout, the whole run by ``--seconds``. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, DeferredList, TimeoutError  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402

from relay.client import connect  # noqa: E402

CHANNEL = 0x4000
PACKETS_PER_CYCLE = 3
CYCLE_TIMEOUT_SECONDS = 10.0


class EchoPeer(DatagramProtocol):
    """The cycles' peer: echoes every datagram to the relayed address it came from."""

    def __init__(self) -> None:
        self.received = 0

    def datagramReceived(self, data: bytes, addr) -> None:
        self.received += 1
        self.transport.write(data, addr)


def source_ip(number: int) -> str:
    """The loopback address cycle ``number`` binds: 127.0.1.1 ... 127.0.200.250, then again."""
    return f"127.0.{1 + (number // 250) % 200}.{1 + number % 250}"


async def cycle(reactor, args, number: int, peer: tuple[str, int], stats: Counter) -> None:
    """One allocation's life: allocate, permit, bind, a little data, release (or abandon)."""
    host, _, port = args.server.rpartition(":")
    user, _, password = args.user.partition(":")
    client = await connect(reactor, (host, int(port)), "udp", username=user, password=password, realm=args.realm,
                           bind_ip=source_ip(number), keep_alive=False)
    echoes: Deferred = Deferred()

    def echoed(_peer, _data: bytes) -> None:
        stats["echoes"] += 1
        if not echoes.called:
            echoes.callback(None)

    client.on_data = echoed
    abandon = args.abandon_every and number % args.abandon_every == 0
    try:
        await client.allocate(args.lifetime)
        await client.create_permission([peer])
        await client.channel_bind(CHANNEL, peer)
        for _ in range(PACKETS_PER_CYCLE):
            client.send_channel_data(CHANNEL, b"soak" * 16)
        echoes.addTimeout(1.0, reactor)
        try:
            await echoes
        except TimeoutError:
            stats["no_echo"] += 1
        stats["abandoned" if abandon else "released"] += 1
    finally:
        await client.close(deallocate=not abandon)


def run(reactor, args) -> Deferred:
    stats: Counter = Counter()
    echo = EchoPeer()
    peer_port = reactor.listenUDP(0, echo, interface="127.0.0.1")
    peer = ("127.0.0.1", peer_port.getHost().port)
    in_flight: set[Deferred] = set()
    started = reactor.seconds()
    numbers = iter(range(10**9))

    def start_one() -> None:
        if reactor.seconds() - started >= args.seconds:
            loop.stop()
            return
        if len(in_flight) >= args.max_in_flight:
            stats["skipped_busy"] += 1
            return
        done = Deferred.fromCoroutine(cycle(reactor, args, next(numbers), peer, stats))
        done.addTimeout(CYCLE_TIMEOUT_SECONDS, reactor)
        done.addErrback(lambda f: stats.update([f"failed_{f.type.__name__}"]))
        in_flight.add(done)
        done.addBoth(lambda _: in_flight.discard(done))

    loop = task.LoopingCall(start_one)
    loop.clock = reactor

    async def main() -> None:
        await loop.start(1.0 / args.rate)
        await DeferredList(list(in_flight))
        await peer_port.stopListening()
        stats["peer_received"] = echo.received
        print(json.dumps(dict(stats)), flush=True)

    return Deferred.fromCoroutine(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--user", required=True, metavar="NAME:PASS")
    parser.add_argument("--realm", default=None)
    parser.add_argument("--rate", type=float, default=10.0, help="cycles started per second (at most 50)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to start cycles (at most 86400)")
    parser.add_argument("--lifetime", type=int, default=600, help="LIFETIME each Allocate asks for")
    parser.add_argument("--abandon-every", type=int, default=10, help="every Nth cycle skips the delete (0: none)")
    parser.add_argument("--max-in-flight", type=int, default=50)
    args = parser.parse_args()
    if not 0 < args.rate <= 50 or not 0 < args.seconds <= 86400 or not 0 < args.max_in_flight <= 500:
        parser.error("--rate must be in (0, 50], --seconds in (0, 86400], --max-in-flight in (0, 500]")
    task.react(lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
