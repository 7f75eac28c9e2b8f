"""Benchmark: CPU of one allocation cycle inside the relay process, warm or with the caches thrashed.

    .venv/bin/python bench/allocation_cost.py [--cycles 800] [--rounds 6] [--thrash-mib 0] [--root DIR]

Not a test. The relay is built as ``twistd relay`` builds it (one worker,
its UDP listener bound on 127.0.0.1, the allocation log written to a
file), and each cycle of ``allocation_rate.py`` (401, signed Allocate,
CreatePermission, ChannelBind, Refresh 0) goes through the listener's
``datagramReceived`` in a read pass, as a read from the socket would hand
it over: the TURN core, its C parts, the relay socket's system calls and
the answers' ``sendmmsg`` (to addresses nobody listens on), without the
wakeups and the client. The 401's nonce is issued before the timing, as
the client would have it. Thread CPU time per cycle:
- with ``--thrash-mib 0``: the cycles back to back, warm caches; the
  minimum over ``--rounds``;
- with ``--thrash-mib N``: N MiB are written over before each request (as
  other work does between the wakeups of a paced server) and each request
  is timed alone; the median per request.
``--root`` measures another checkout (its C extensions built). With
``--socket`` each request is sent from a client socket of the cycle's own
loopback address to the listener's socket and read by its read loop
(``doRead``: the ``recvmmsg``, what C and Python do with the request, the
answer's ``sendmmsg``), as a wakeup of the server would read it; only the
``doRead`` is timed (the client's send and receive are not).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("challenge", "allocate", "permission", "channel", "release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=800, help="cycles per round (at most 1000: remembered nonces)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (at most 50)")
    parser.add_argument("--thrash-mib", type=float, default=0.0, help="MiB written over before each request (0: none)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--socket", action="store_true", help="send each request over loopback and time the "
                        "listener's doRead (the read loop) instead of its datagramReceived")
    args = parser.parse_args()
    if not 1 <= args.cycles <= 1000 or not 1 <= args.rounds <= 50 or not 0 <= args.thrash_mib <= 256:
        parser.error("--cycles in [1, 1000], --rounds in [1, 50], --thrash-mib in [0, 256]")
    sys.path.insert(0, str(args.root.resolve()))
    sys.path.insert(1, str(ROOT / "bench"))
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from relay.datagrams import read_pass
    from relay.listeners import ServerDatagramProtocol
    from rendezvous.node import relay_tap

    from allocation_rate import Lane, source_ip  # after the root's modules: it puts this checkout on sys.path

    with tempfile.TemporaryDirectory(prefix="txr-alloc-cost-") as tmp, open(Path(tmp) / "log", "w") as log_file:
        options = relay_tap.Options()
        options.parseOptions(["--ip", "127.0.0.1", "--port", "0", "--tls-port", "0", "--user", "bench:bench-pw",
                              "--realm", "example.org", "--allow-peer", "127.0.0.0/8", "--relay-ports", "40000-60000",
                              "--state-dir", tmp, "--metrics", "off", "--workers", "1"])
        top = relay_tap.makeService(options, reactor)
        globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
        top.startService()
        try:
            listener = next(o for o in gc.get_objects() if isinstance(o, ServerDatagramProtocol))
            figures = run(args, listener, reactor, read_pass, Lane, source_ip)
        finally:
            top.stopService()
    figures.update(root=str(args.root), load_average=round(os.getloadavg()[0], 2))
    print(json.dumps(figures))


def run(args, listener, reactor, read_pass, Lane, source_ip) -> dict:
    turn = listener.turn
    junk = bytearray(int(args.thrash_mib * 1024 * 1024))
    stride = junk[::64]

    def cycles(first: int) -> list:
        """(client address, the five requests) per cycle, the nonce issued to it as its 401 would."""
        made = []
        for number in range(first, first + args.cycles):
            lane = Lane(None, None, None)
            ip = source_ip(number)
            requests = [lane.request()]
            lane.nonce = turn.nonces.issue(ip, reactor.seconds()).encode()
            for step in range(1, len(STEPS)):
                lane.step = step
                requests.append(lane.request())
            made.append(((ip, 40000), requests))
        return made

    if args.socket:
        server = listener.transport.socket.getsockname()

        def timed(addr, data) -> int:
            """Thread CPU ns of the listener's read loop taking data from a client at addr (its answer read)."""
            client.sendto(data, server)
            started = time.thread_time_ns()
            listener.transport.doRead()
            spent = time.thread_time_ns() - started
            client.recv(4096)
            return spent
    else:
        def timed(addr, data) -> int:
            """Thread CPU ns of the listener's datagramReceived taking data from addr in a read pass."""
            started = time.thread_time_ns()
            read_pass(lambda: listener.datagramReceived(data, addr))
            return time.thread_time_ns() - started

    per_round, per_request = [], {step: [] for step in STEPS}
    client = None
    for number in range(args.rounds):
        batch = cycles(number * args.cycles)
        gc.collect()
        spent = 0
        for addr, requests in batch:
            if args.socket:
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(addr)
                client.settimeout(1.0)
            for step, data in zip(STEPS, requests):
                if junk:
                    junk[::64] = stride  # every cache line of junk written
                    per_request[step].append(timed(addr, data) / 1000)
                else:
                    spent += timed(addr, data)
            if client is not None:
                client.close()
        per_round.append(spent / 1000 / args.cycles)
        if turn.allocations:
            raise SystemExit(f"{len(turn.allocations)} allocations left: a request failed")
    errors = {name: count for name, count in turn.counters.items() if name.startswith("error")}
    if not junk:
        return {"us_per_cycle": round(min(per_round), 1), "rounds": [round(x, 1) for x in per_round],
                "errors": errors}
    medians = {step: round(statistics.median(times), 1) for step, times in per_request.items()}
    return {"us_per_request": medians, "us_per_cycle": round(sum(medians.values()), 1), "thrash_mib": args.thrash_mib,
            "errors": errors}


if __name__ == "__main__":
    main()
