#!/usr/bin/env python3
"""Benchmark: the CPU cost of one turn of Twisted's reactor loop with one ready reader.

Not a test. A relay process pays this once per wakeup, however few
packets the wakeup brings: the loop's timed-call bookkeeping, an
``epoll_wait``, and the dispatch of the ready reader (through
``log.callWithLogger``). The reader here is one end of a socket pair with a
byte that is never read, so every turn finds it ready, and its ``doRead``
does nothing. ``time.process_time`` over ``--seconds`` of turns gives the
CPU per turn; a bare ``epoll.poll(0)`` on the same socket is timed beside
it, the system call alone.

    taskset -c 0 .venv/bin/python bench/reactor_wakeup.py
"""

import argparse
import select
import socket
import sys
import time

from twisted.internet import epollreactor


class ReadyReader:
    """A reader whose socket is always readable and whose doRead counts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.turns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "ready"

    def doRead(self) -> None:
        self.turns += 1

    def connectionLost(self, reason) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="how long the reactor turns (0.5 to 60)")
    args = parser.parse_args()
    if not 0.5 <= args.seconds <= 60:
        parser.error("--seconds must be within 0.5 and 60")
    if not hasattr(select, "epoll"):
        sys.exit("needs epoll (Linux)")
    epollreactor.install()
    from twisted.internet import reactor

    kept, other = socket.socketpair()
    with kept, other:
        other.send(b"x")  # kept stays readable: every turn dispatches the reader once
        reader = ReadyReader(kept)
        reactor.addReader(reader)
        reactor.callLater(args.seconds, reactor.stop)
        start = time.process_time()
        reactor.run()
        per_turn = (time.process_time() - start) / max(1, reader.turns)
        poller = select.epoll()
        poller.register(kept.fileno(), select.EPOLLIN)
        polls = 200_000
        start = time.process_time()
        for _ in range(polls):
            poller.poll(0)
        per_poll = (time.process_time() - start) / polls
        poller.close()
    print(f"{reader.turns} reactor turns: {per_turn * 1e6:.2f} µs CPU each; "
          f"bare epoll.poll(0): {per_poll * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
