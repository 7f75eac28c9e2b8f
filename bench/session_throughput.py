#!/usr/bin/env python3
"""Benchmark: session throughput on loopback, one core per side, beside plain UDP.

Not a test. Starts ``twistd rendezvous`` on 127.0.0.1 with two buddies,
then for each path (``direct``: the UDP pair ICE selects; ``relay``: the
node's TURN relay over UDP) runs a receiving peer under ``taskset -c 1``
and a sending peer under ``taskset -c 0`` (the node is not pinned: it only
signals on the direct path, and relays on the relay path). Over one session:

1. stream: the sender writes ``--stream-mb`` MB on one stream through a push
   producer (paused by the stream's flow control); the receiver reports MB/s
   from its first byte to the FIN;
2. datagrams: the sender sends ``--datagrams`` RFC 9221 datagrams of
   ``--size`` bytes, keeping at most 256 queued in QUIC; the receiver reports
   those that arrived per second (first to last) and the loss.

Then ``--udp-datagrams`` over a plain Twisted UDP socket pair on the same
cores give the floor. Each side reports the CPU seconds it spent, so a side
at 100 % of its core is the limit; the receiver also reports the datagrams
its UDP sockets dropped (a full receive buffer, /proc/net/udp).

Two knobs, in the bench processes only, show what limits a session when
the CPU does not: ``--rcvbuf BYTES`` sets SO_RCVBUF on the peers' UDP
sockets once the session is up, and ``--no-pacing`` turns off aioquic's
packet pacer. ``--profile`` runs both peers under cProfile and prints each
side's top functions by own time.

    .venv/bin/python bench/session_throughput.py
    .venv/bin/python bench/session_throughput.py --rcvbuf 4194304 --no-pacing
    .venv/bin/python bench/session_throughput.py --stream-mb 20 --paths direct --profile
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import free_port, stop  # noqa: E402

IP = "127.0.0.1"
SENDER_CPU, RECEIVER_CPU = "0", "1"
CHUNK_BYTES = 65536
DATAGRAM_QUEUE = 256  # datagrams left queued in QUIC before the sender waits a reactor turn
PHASE_TIMEOUT_SECONDS = 300


# -- the two peers (each its own process) --------------------------------------------------


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _udp_sockets() -> dict[str, int]:
    """This process's UDP sockets: inode -> file descriptor."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found[link[8:-1]] = int(fd)
    with open("/proc/self/net/udp") as table:
        udp = {line.split()[9] for line in table.read().splitlines()[1:]}
    return {inode: fd for inode, fd in found.items() if inode in udp}


def _drops() -> int:
    """Datagrams this process's UDP sockets dropped for a full receive buffer."""
    mine = _udp_sockets()
    with open("/proc/self/net/udp") as table:
        return sum(int(line.split()[-1]) for line in table.read().splitlines()[1:] if line.split()[9] in mine)


def _tune(args) -> None:
    """The bench's knobs: a larger SO_RCVBUF on every UDP socket, no aioquic pacing."""
    if args.rcvbuf:
        for fd in _udp_sockets().values():
            with socket.socket(fileno=os.dup(fd)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    if args.no_pacing:
        from aioquic.quic import recovery

        recovery.QuicPacketPacer.next_send_time = lambda self, now: None


def run_receiver(args) -> None:
    """Log in as bob, answer one session, measure its stream and datagrams, report on the stream."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from rendezvous.peer import Client

    datagrams = {"count": 0, "first": None, "last": None, "cpu": None}

    def datagram(data: bytes) -> None:
        now = time.perf_counter()
        if datagrams["first"] is None:
            datagrams["first"], datagrams["cpu"] = now, _cpu()
        datagrams["count"] += 1
        datagrams["last"] = now

    @implementer(IHalfCloseableProtocol)
    class Measure(Protocol):
        """The bulk stream: count to the FIN, then answer with the figures. A one-byte stream asks for
        the datagram figures instead."""

        def connectionMade(self):
            self.bytes, self.first, self.cpu = 0, None, None

        def dataReceived(self, data):
            if self.first is None:
                self.first, self.cpu = time.perf_counter(), _cpu()
            self.bytes += len(data)

        def readConnectionLost(self):
            if self.bytes == 1:
                span = (datagrams["last"] or 0) - (datagrams["first"] or 0)
                report = {"datagrams": datagrams["count"], "seconds": span,
                          "cpu": _cpu() - datagrams["cpu"] if datagrams["cpu"] is not None else 0.0}
            else:
                report = {"bytes": self.bytes, "seconds": time.perf_counter() - self.first,
                          "cpu": _cpu() - self.cpu}
            report["drops"] = _drops()
            self.transport.write(json.dumps(report).encode())
            self.transport.loseConnection()

    def on_session(session) -> None:
        _tune(args)
        session.accept_streams(Factory.forProtocol(Measure))
        session.set_datagram_receiver(datagram)
        session.when_closed().addCallback(lambda _: reactor.callLater(0.5, reactor.stop))

    async def main():
        client = await Client.login(reactor, "bob", "bob-pw", [(IP, args.port)], **_options(args, "bob"))
        await client.listen(on_session)
        print("ready", flush=True)
        await Deferred()  # until the session ends

    Deferred.fromCoroutine(main()).addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), reactor.stop()))
    _run(reactor, args)


def run_sender(args) -> None:
    """Log in as alice, open a session to bob, run the stream and the datagram phases, print the figures."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import deferLater
    from zope.interface import implementer

    from rendezvous.peer import Client

    @implementer(IHalfCloseableProtocol, IPushProducer)
    class Bulk(Protocol):
        """Writes ``total`` bytes while the stream lets it, then FIN; ``answer`` fires with the reply."""

        def __init__(self, total: int):
            self.left, self.paused, self.answer, self.reply = total, False, Deferred(), b""

        def connectionMade(self):
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            reactor.callLater(0, self._write)

        def stopProducing(self):
            self.left = 0

        def _write(self):
            chunk = b"\0" * CHUNK_BYTES
            while not self.paused and self.left > 0:
                piece = chunk if self.left >= CHUNK_BYTES else chunk[:self.left]
                self.left -= len(piece)
                self.transport.write(piece)
            if self.left == 0 and self.transport is not None and not self.transport.disconnecting:
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def dataReceived(self, data):
            self.reply += data

        def readConnectionLost(self):
            self.answer.callback(json.loads(self.reply))

        def connectionLost(self, reason):
            if not self.answer.called:
                self.answer.errback(reason)

    async def main():
        client = await Client.login(reactor, "alice", "alice-pw", [(IP, args.port)], **_options(args, "alice"))
        session = await client.connect("bob")
        _tune(args)
        results = {"path": session.path}
        bulk = Bulk(args.stream_mb * 1_000_000)
        cpu = _cpu()
        session.open_stream(bulk)
        results["stream_receiver"] = await bulk.answer
        results["stream_sender_cpu"] = _cpu() - cpu
        loss = session._quic._loss  # what congestion control ended the stream with
        results["cwnd"], results["srtt"] = loss._cc.congestion_window, loss._rtt_smoothed
        payload = os.urandom(args.size)
        cpu, sent = _cpu(), 0
        while sent < args.datagrams:
            while sent < args.datagrams and len(session._quic._datagrams_pending) < DATAGRAM_QUEUE:
                session.send_datagram(payload)
                sent += 1
            await deferLater(reactor, 0, lambda: None)
        while session._quic._datagrams_pending:
            await deferLater(reactor, 0.001, lambda: None)
        results["datagram_sender_cpu"] = _cpu() - cpu
        await deferLater(reactor, 0.5, lambda: None)  # the last datagrams land
        ask = Bulk(1)
        session.open_stream(ask)
        results["datagram_receiver"] = await ask.answer
        print(json.dumps(results), flush=True)
        await client.close()

    def done(result):
        if result is not None and hasattr(result, "getTraceback"):
            print(result.getTraceback(), file=sys.stderr)
        reactor.stop()

    Deferred.fromCoroutine(main()).addBoth(done)
    _run(reactor, args)


def _options(args, user: str) -> dict:
    relay = args.path == "relay"
    return {"include_loopback": True, "direct_transports": () if relay else ("udp",),
            "relay_transports": ("udp",) if relay else (), "state_dir": Path(args.state) / user}


def _run(reactor, args) -> None:
    if not args.profile:
        reactor.run()
        return
    profile = cProfile.Profile()
    profile.runcall(reactor.run)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile_top)
    sys.stderr.write(out.getvalue())


# -- plain UDP: the floor --------------------------------------------------------------------


def run_udp_receiver(args) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    counts = {"count": 0, "first": None, "last": None, "cpu": None}

    class Count(DatagramProtocol):
        def datagramReceived(self, data, address):
            now = time.perf_counter()
            if counts["first"] is None:
                counts["first"], counts["cpu"] = now, _cpu()
            if data == b"end":
                report = {"datagrams": counts["count"], "seconds": (counts["last"] or now) - counts["first"],
                          "cpu": _cpu() - counts["cpu"], "drops": _drops()}
                print(json.dumps(report), flush=True)
                reactor.stop()
                return
            counts["count"] += 1
            counts["last"] = now

    port = reactor.listenUDP(0, Count(), interface=IP)
    _tune(args)
    print(port.getHost().port, flush=True)
    reactor.callLater(PHASE_TIMEOUT_SECONDS, reactor.stop)
    reactor.run()


def run_udp_sender(args) -> None:
    """Send in bursts of DATAGRAM_QUEUE per reactor turn, as the session sender does."""
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    protocol = DatagramProtocol()
    reactor.listenUDP(0, protocol, interface=IP)
    payload = os.urandom(args.size)
    state = {"sent": 0, "cpu": _cpu()}

    def burst():
        for _ in range(min(DATAGRAM_QUEUE, args.udp_datagrams - state["sent"])):
            try:
                protocol.transport.write(payload, (IP, args.udp_port))
            except OSError:  # a full socket buffer: try again next turn
                break
            state["sent"] += 1
        if state["sent"] < args.udp_datagrams:
            reactor.callLater(0, burst)
        else:
            print(json.dumps({"cpu": _cpu() - state["cpu"]}), flush=True)
            reactor.callLater(0.5, lambda: (protocol.transport.write(b"end", (IP, args.udp_port)), reactor.stop()))

    reactor.callLater(0, burst)
    reactor.run()


# -- the run ------------------------------------------------------------------------------------


def start_node(workdir: Path) -> tuple[subprocess.Popen, int]:
    from rendezvous.node.accounts import AccountStore

    store = AccountStore(workdir / "state" / "accounts.sqlite")
    store.add("alice", "alice-pw", "txrendezvous")
    store.add("bob", "bob-pw", "txrendezvous")
    store.request_buddy("alice", "bob")
    store.accept_buddy("bob", "alice")
    store.close()
    port = free_port()
    tls_port = free_port(exclude={port})
    twistd = str(Path(sys.executable).with_name("twistd"))
    command = [twistd, "-n", "--pidfile=", "rendezvous", "--ip", IP, "--port", str(port), "--tls-port",
               str(tls_port), "--state-dir", str(workdir / "state"), "--metrics", "off", "--allow-peer", "127.0.0.0/8"]
    with open(workdir / "twistd.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=_env())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((IP, port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    stop(process)
    raise RuntimeError((workdir / "twistd.log").read_text())


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def peer(cpu: str, role: str, args, *extra: str) -> subprocess.Popen:
    command = ["taskset", "-c", cpu, sys.executable, __file__, "--role", role, "--size", str(args.size),
               "--datagrams", str(args.datagrams), "--udp-datagrams", str(args.udp_datagrams), "--stream-mb",
               str(args.stream_mb), "--rcvbuf", str(args.rcvbuf), *extra]
    if args.no_pacing:
        command.append("--no-pacing")
    if args.profile:
        command += ["--profile", "--profile-top", str(args.profile_top)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def session_run(args, port: int, path: str, state: Path) -> dict:
    extra = ["--port", str(port), "--path", path, "--state", str(state)]
    receiver = peer(RECEIVER_CPU, "receive", args, *extra)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError(receiver.stderr.read())
        sender = peer(SENDER_CPU, "send", args, *extra)
        out, err = sender.communicate(timeout=PHASE_TIMEOUT_SECONDS)
        if sender.returncode != 0 or not out.strip():
            raise RuntimeError(err)
        _, receiver_err = receiver.communicate(timeout=30)
    finally:
        for process in (receiver,):
            stop(process)
    if args.profile:
        sys.stderr.write(f"\n==== {path}: sender profile ====\n{err}\n==== {path}: receiver profile ====\n"
                         f"{receiver_err}\n")
    return json.loads(out.strip().splitlines()[-1])


def udp_run(args) -> dict:
    receiver = peer(RECEIVER_CPU, "udp-receive", args)
    try:
        udp_port = int(receiver.stdout.readline())
        sender = peer(SENDER_CPU, "udp-send", args, "--udp-port", str(udp_port))
        out, _ = sender.communicate(timeout=PHASE_TIMEOUT_SECONDS)
        received, _ = receiver.communicate(timeout=PHASE_TIMEOUT_SECONDS)
    finally:
        stop(receiver)
    return {"sender_cpu": json.loads(out)["cpu"], "receiver": json.loads(received)}


def report(args, results: dict) -> None:
    knobs = (f", SO_RCVBUF {args.rcvbuf}" if args.rcvbuf else "") + (", no pacing" if args.no_pacing else "")
    print(f"loopback, sender on CPU {SENDER_CPU}, receiver on CPU {RECEIVER_CPU}{knobs}; stream {args.stream_mb} MB, "
          f"datagrams of {args.size} B ({args.datagrams} per session, {args.udp_datagrams} over plain UDP)")
    print(f"{'path':20} | {'stream MB/s':>11} {'CPU % s/r':>9} {'cwnd kB':>7} {'srtt ms':>7} | "
          f"{'datagrams/s':>11} {'MB/s':>6} {'loss %':>6} {'CPU % s/r':>9} | {'drops':>6}")
    for name, result in results.items():
        d = result.get("datagram_receiver") or result["receiver"]
        sent = args.datagrams if "datagram_receiver" in result else args.udp_datagrams
        rate = d["datagrams"] / d["seconds"] if d["seconds"] else 0.0
        sender_cpu = result.get("datagram_sender_cpu", result.get("sender_cpu"))
        d_cells = (f"{rate:11,.0f} {rate * args.size / 1e6:6.1f} {100 * (1 - d['datagrams'] / sent):6.1f} "
                   f"{_share(sender_cpu, d['seconds']):>4}/{_share(d['cpu'], d['seconds']):<4}")
        if "stream_receiver" in result:
            s = result["stream_receiver"]
            s_cells = (f"{s['bytes'] / s['seconds'] / 1e6:11.1f} "
                       f"{_share(result['stream_sender_cpu'], s['seconds']):>4}/{_share(s['cpu'], s['seconds']):<4} "
                       f"{result['cwnd'] / 1000:7.0f} {result['srtt'] * 1000:7.1f}")
            label = f"{name} ({result['path']})"
        else:
            s_cells, label = f"{'–':>11} {'':9} {'':7} {'':7}", name
        print(f"{label:20} | {s_cells} | {d_cells} | {d['drops']:6}")


def _share(cpu: float, seconds: float) -> str:
    return f"{100 * cpu / seconds:.0f}" if seconds else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stream-mb", type=int, default=50, help="MB on the stream (default 50)")
    parser.add_argument("--datagrams", type=int, default=20_000, help="datagrams to send (default 20000)")
    parser.add_argument("--udp-datagrams", type=int, default=200_000,
                        help="datagrams over plain UDP (default 200000)")
    parser.add_argument("--size", type=int, default=1000, help="datagram payload bytes (default 1000)")
    parser.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF for the peers' UDP sockets (default: "
                                                              "the system's)")
    parser.add_argument("--no-pacing", action="store_true", help="turn off aioquic's packet pacer")
    parser.add_argument("--paths", default="direct,relay", help="session paths to run (default direct,relay)")
    parser.add_argument("--profile", action="store_true", help="profile both peers, print their top functions")
    parser.add_argument("--profile-top", type=int, default=15, help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--udp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    roles = {"receive": run_receiver, "send": run_sender, "udp-receive": run_udp_receiver,
             "udp-send": run_udp_sender}
    if args.role:
        roles[args.role](args)
        return
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        sys.exit("needs 2 CPUs and taskset: the sender runs on CPU 0, the receiver on CPU 1")
    workdir = Path(tempfile.mkdtemp(prefix="session-bench-"))
    node, port = start_node(workdir)
    results = {}
    try:
        for path in args.paths.split(","):
            results[path] = session_run(args, port, path, workdir / path)
    finally:
        stop(node)
    results["plain UDP"] = udp_run(args)
    report(args, results)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
