#!/usr/bin/env python3
"""Benchmark: the CPU cost of forwarding a UDP datagram from Python with nothing else to do.

Not a test. It measures the floor under any Python relay: a loop that reads
a datagram with ``recvfrom`` and sends its payload on with ``sendto``, the
two socket calls a relayed packet needs, with no reactor, no parsing and no
state. On CPU 0 this process queues ``--batch`` ChannelData-sized datagrams
on the relay socket (not timed), then the relay loop empties it, stopping at
EAGAIN as an event loop does, and forwards each payload to a sink that
another process reads on CPU 1, so the kernel's wake-up of a waiting reader
is paid as a relay pays it. ``time.process_time`` around the
loop gives the CPU time per forwarded packet (user + system).

With ``--batched`` the loop reads with ``recvmmsg`` and sends the whole
batch with one ``sendmmsg`` (``relay._mmsg``, what the relay uses), so the
gap between the two modes is what batching the system calls saves.

Compare with the per-packet figures of ``bench/relay_throughput.py``: the
gap between this floor and our relay is what Python-level work can still
win.

    .venv/bin/python bench/udp_floor.py
    .venv/bin/python bench/udp_floor.py --size 1000 --batch 1
    .venv/bin/python bench/udp_floor.py --batched
"""

import argparse
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay.datagrams import _mmsg  # noqa: E402

IP = "127.0.0.1"
BUFFER_BYTES = 8 * 1024 * 1024


def sink(address_queue, stop) -> None:
    """Read and discard datagrams until stop is set (bounded by a socket timeout)."""
    os.sched_setaffinity(0, {1})
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((IP, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    s.settimeout(0.5)
    address_queue.put(s.getsockname())
    while not stop.is_set():
        try:
            s.recv(65536)
        except socket.timeout:
            pass
    s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=400_000, help="datagrams to forward (default 400000)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--batch", type=int, default=8, help="datagrams queued per read loop (default 8)")
    parser.add_argument("--batched", action="store_true", help="recvmmsg and sendmmsg instead of one call each")
    args = parser.parse_args()
    if args.batched and _mmsg is None:
        raise SystemExit("--batched needs relay._mmsg: run scripts/setup")
    packets = max(args.batch, min(args.packets, 10_000_000))
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 CPUs: the relay loop on CPU 0, the sink on CPU 1")
    addresses, stop = multiprocessing.Queue(), multiprocessing.Event()
    reader = multiprocessing.Process(target=sink, args=(addresses, stop), daemon=True)
    reader.start()
    try:
        destination = addresses.get(timeout=10)
        os.sched_setaffinity(0, {0})
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind((IP, 0))
        relay.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
        relay.setblocking(False)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        frame = b"\x40\x00" + args.size.to_bytes(2, "big") + os.urandom(args.size)
        recvfrom, sendto, target = relay.recvfrom, relay.sendto, relay.getsockname()
        receiver = _mmsg.Receiver(64, 65536) if args.batched else None
        cpu = 0.0
        forwarded = 0
        while forwarded < packets:
            for _ in range(args.batch):
                sender.sendto(frame, target)
            start = time.process_time()
            if receiver is not None:
                while batch := receiver.recv(relay):
                    forwarded += _mmsg.send(relay, socket.AF_INET, [(data[4:], destination) for data, _ in batch])
                    if len(batch) < 64:
                        break
            else:
                while True:
                    try:
                        data, addr = recvfrom(65536)
                    except BlockingIOError:
                        break
                    sendto(data[4:], destination)
                    forwarded += 1
            cpu += time.process_time() - start
    finally:
        stop.set()
        reader.join(5)
        if reader.is_alive():
            reader.kill()  # the sink we started, by its handle
    mode = "recvmmsg/sendmmsg" if args.batched else "recvfrom/sendto"
    print(f"payload {args.size} B, batch {args.batch}, {mode}: "
          f"{cpu / forwarded * 1e6:.2f} µs CPU per forwarded datagram ({forwarded} datagrams)")


if __name__ == "__main__":
    main()
