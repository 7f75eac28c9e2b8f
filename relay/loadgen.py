"""The relay load generator: TURN clients pushing data through a relay and back.

Each client holds one allocation (RFC 8656 §7) and has a peer of its own: a
UDP socket on ``peer_ip`` that this generator owns, which counts every
datagram the relay delivers and echoes it back to the relayed address it came
from. A packet's round trip is client → relay → peer → relay → client, over
ChannelData (RFC 8656 §12) or Send/Data indications (§11), with the client
side on UDP, TCP or TLS. Both directions are counted: the peer counts what
the relay forwarded to it, the client what came back and how long it took.

The generator works against any TURN server (ours, coturn, ...), so runs can
be compared side by side. It stops by itself: sending ends after ``seconds``
or when the packet budget is spent (``max_packets`` over all clients, never
more than HARD_CAP_PACKETS), in-flight packets get ``drain_seconds`` to
arrive, and every phase has a deadline.

To reach high rates it batches and spreads: one LoopingCall per worker
ticks every ``tick_seconds`` (1-10 ms, longer with more clients) and each
client sends the packets it owes (its rate times the time since the start,
minus what it sent) in one burst, with no Message objects on the data path; ``processes`` worker processes, each
running its own reactor and a share of the clients, keep the generator from
being the bottleneck. Their results are merged: counters add up and the
round-trip times go into one log-linear histogram.

Entry points: ``add_arguments`` / ``run_command`` for the ``txrendezvous
load-test`` subcommand, ``run(config)`` for programs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall, deferLater

from relay.client import (
    ConnectionClosed,
    RealmMismatch,
    TransactionTimeout,
    TurnClient,
    TurnError,
    connect,
    set_socket_buffers,
)
from relay.datagrams import read_loop

MICROSECOND = 1e-6
HARD_CAP_PACKETS = 100_000_000  # over all clients and processes, whatever the options say
MAX_CLIENTS = 20_000
MAX_PROCESSES = 64
MAX_RATE_PPS = 1_000_000  # per client
MAX_SECONDS = 24 * 3600
MIN_SIZE_BYTES = 16  # sequence number and send time
MAX_SIZE_BYTES = 65_000
MAX_CATCH_UP_SECONDS = 0.05  # a late tick sends at most this much backlog at once
CPU_BOUND_PERCENT = 90.0  # a worker this busy while sending limits the measurement
MIN_TICK_SECONDS = 0.001
MAX_TICK_SECONDS = 0.010
SETUP_CONCURRENCY = 64
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
CHANNEL = 0x4000
TEARDOWN_SECONDS = 3.0
SPAWN_GRACE_SECONDS = 30.0

_STAMP = struct.Struct("!Qd")  # sequence number, send time (clock seconds)
_SENT_AT = struct.Struct("!d")


class ConfigError(ValueError):
    """A load-test option is out of range or malformed."""


class LoadTestFailed(RuntimeError):
    """The run could not measure anything (e.g. no allocation succeeded)."""


@dataclass(frozen=True)
class LoadConfig:
    """Everything one load test needs; picklable, so worker processes get a copy."""

    server: tuple[str, int]
    username: str
    password: str
    realm: str | None = None
    transport: str = "udp"
    clients: int = 1
    processes: int = 1
    mode: str = "channel"
    size: int = 100
    rate: float = 100.0
    seconds: float = 10.0
    peer_ip: str = "127.0.0.1"
    tls_verify: bool = True
    tls_ca_file: str | None = None
    tls_hostname: str | None = None
    tick_seconds: float | None = None  # None: auto_tick_seconds(clients in the worker)
    setup_timeout_seconds: float = 10.0
    drain_seconds: float = 1.0
    max_packets: int = HARD_CAP_PACKETS

    def validate(self) -> LoadConfig:
        """Return self, or raise ConfigError naming the bad option."""
        host, port = self.server
        if not host or not 0 < port < 65536:
            raise ConfigError(f"--server: bad address {host}:{port}")
        if self.transport not in ("udp", "tcp", "tls"):
            raise ConfigError("--transport must be udp, tcp or tls")
        if self.mode not in ("channel", "send"):
            raise ConfigError("--mode must be channel or send")
        _check_range("--clients", self.clients, 1, MAX_CLIENTS)
        _check_range("--processes", self.processes, 1, MAX_PROCESSES)
        _check_range("--size", self.size, MIN_SIZE_BYTES, MAX_SIZE_BYTES)
        _check_range("--rate", self.rate, 0.001, MAX_RATE_PPS)
        _check_range("--seconds", self.seconds, 0.1, MAX_SECONDS)
        if self.tick_seconds is not None:
            _check_range("--tick-ms", self.tick_seconds * 1000, 1, 1000)
        _check_range("--setup-timeout", self.setup_timeout_seconds, 0.5, 600)
        _check_range("--drain", self.drain_seconds, 0, 60)
        _check_range("--max-packets", self.max_packets, 1, HARD_CAP_PACKETS)
        try:
            ipaddress.ip_address(self.peer_ip)
        except ValueError:
            raise ConfigError(f"--peer-ip must be an IP address, not {self.peer_ip!r}") from None
        if not self.username or not self.password:
            raise ConfigError("--user must be NAME:PASSWORD")
        return self

    @property
    def packets_per_client(self) -> int:
        """The send budget of one client: rate x seconds, within the packet caps."""
        return per_client_budget(self.rate, self.seconds, self.clients, self.max_packets)


def _check_range(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{option} must be between {low:g} and {high:g}, not {value:g}")


# -- pure parts: budgets, bursts, shares --------------------------------------------------


def per_client_budget(rate: float, seconds: float, clients: int, max_packets: int) -> int:
    """Packets one client may send: ceil(rate x seconds), capped by max_packets / clients.

    max_packets itself is capped at HARD_CAP_PACKETS; every client may send
    at least one packet.
    """
    cap = min(max_packets, HARD_CAP_PACKETS) // clients
    return max(1, min(math.ceil(rate * seconds), cap))


def burst_size(sent: int, elapsed_seconds: float, rate: float, budget: int, max_burst: int) -> int:
    """How many packets a client sends on this tick.

    It owes floor(elapsed x rate) + 1 packets by now (the first goes at
    t = 0), minus what it sent; never more than max_burst at once (a late
    tick does not turn into a flood) nor past its budget.
    """
    owed = min(int(elapsed_seconds * rate) + 1, budget) - sent
    if owed <= 0:
        return 0
    return min(owed, max_burst)


def auto_tick_seconds(clients: int) -> float:
    """The send-loop period for a worker with this many clients: 1-10 ms.

    Short ticks mean small bursts, so the generator's own queueing adds
    little to the measured round trip; each tick costs about a microsecond
    per client, so many clients get a longer tick (10 µs per client).
    """
    return min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, clients * 10 * MICROSECOND))


def max_burst_for(rate: float, tick_seconds: float) -> int:
    """The largest burst one client may send in one tick: MAX_CATCH_UP_SECONDS of traffic."""
    return max(1, math.ceil(rate * max(MAX_CATCH_UP_SECONDS, 2 * tick_seconds)))


def split_clients(clients: int, processes: int) -> list[int]:
    """Share clients among processes as evenly as possible; no process gets none."""
    processes = max(1, min(processes, clients))
    base, extra = divmod(clients, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def parse_server(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' to (host, port); ConfigError when malformed."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server must be HOST:PORT (IPv6 as [ADDR]:PORT), not {text!r}")
    return host, int(port)


def parse_user(text: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """'NAME:PASSWORD' to (name, password).

    A bare NAME takes the password from TXRENDEZVOUS_PASSWORD, which keeps it
    out of the process list.
    """
    environ = os.environ if environ is None else environ
    name, sep, password = text.partition(":")
    if not sep:
        password = environ.get("TXRENDEZVOUS_PASSWORD", "")
    if not name or not password:
        raise ConfigError("--user must be NAME:PASSWORD (or NAME with TXRENDEZVOUS_PASSWORD set)")
    return name, password


# -- round-trip times --------------------------------------------------------------------


class LatencyHistogram:
    """Durations in a log-linear (HDR-style) histogram of microseconds.

    Exact below 128 µs and within 1/64 (1.6 %) above; a few thousand
    counters whatever the run length, and merged across processes by adding
    counts. Percentiles use the nearest-rank method and report the middle of
    the bucket the rank falls in.
    """

    SUB_BITS = 7
    HALF = 1 << (SUB_BITS - 1)
    MAX_MICROSECONDS = (1 << 40) - 1  # about 12.7 days

    def __init__(self) -> None:
        self.counts = [0] * self._index(self.MAX_MICROSECONDS) + [0]
        self.total = 0
        self.min_us = 0
        self.max_us = 0
        self.sum_us = 0

    @classmethod
    def _index(cls, micros: int) -> int:
        shift = micros.bit_length() - cls.SUB_BITS
        if shift <= 0:
            return micros
        return shift * cls.HALF + (micros >> shift)

    @classmethod
    def _bounds(cls, index: int) -> tuple[int, int]:
        """(lowest value, width) of the bucket at index."""
        if index < 2 * cls.HALF:
            return index, 1
        shift = index // cls.HALF - 1
        return (index - shift * cls.HALF) << shift, 1 << shift

    def record(self, seconds: float) -> None:
        """Count one duration, rounded to the microsecond; negative ones count as 0."""
        micros = int(seconds * 1e6 + 0.5)  # to the nearest microsecond
        if micros < 0:
            micros = 0
        elif micros > self.MAX_MICROSECONDS:
            micros = self.MAX_MICROSECONDS
        shift = micros.bit_length() - 7
        self.counts[micros if shift <= 0 else (shift << 6) + (micros >> shift)] += 1
        if not self.total or micros < self.min_us:
            self.min_us = micros
        self.max_us = max(self.max_us, micros)
        self.total += 1
        self.sum_us += micros

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add other's counts into this one; returns self."""
        if other.total:
            if not self.total or other.min_us < self.min_us:
                self.min_us = other.min_us
            self.max_us = max(self.max_us, other.max_us)
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total
        self.sum_us += other.sum_us
        return self

    def percentile(self, percent: float) -> float | None:
        """The duration in seconds below which percent % of samples fall; None if empty."""
        if not self.total:
            return None
        rank = max(1, math.ceil(percent / 100 * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                low, width = self._bounds(index)
                value = low + (width - 1) / 2
                return min(max(value, self.min_us), self.max_us) * MICROSECOND
        return self.max_us * MICROSECOND  # unreachable: the counts add up to total

    @property
    def mean(self) -> float | None:
        return self.sum_us / self.total * MICROSECOND if self.total else None


# -- results ---------------------------------------------------------------------------


@dataclass
class WorkerResult:
    """What one worker measured; results of several workers merge by adding."""

    clients: int = 0
    allocated: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    sent_bytes: int = 0
    send_errors: int = 0
    peer_received: int = 0
    peer_bytes: int = 0
    received: int = 0
    received_bytes: int = 0
    late_ticks: int = 0
    paused_ticks: int = 0
    offered: int = 0
    duration_seconds: float = 0.0
    busiest_cpu_percent: float = 0.0  # CPU time / sending window of the busiest worker (100 = a core)
    rtt: LatencyHistogram = field(default_factory=LatencyHistogram)

    def merge(self, other: WorkerResult) -> WorkerResult:
        for name in ("clients", "allocated", "sent", "sent_bytes", "send_errors", "peer_received",
                     "peer_bytes", "received", "received_bytes", "late_ticks", "paused_ticks", "offered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for message, count in other.errors.items():
            self.errors[message] = self.errors.get(message, 0) + count
        self.duration_seconds = max(self.duration_seconds, other.duration_seconds)
        self.busiest_cpu_percent = max(self.busiest_cpu_percent, other.busiest_cpu_percent)
        self.rtt.merge(other.rtt)
        return self


def _ratio_lost(sent: int, arrived: int) -> float | None:
    if not sent:
        return None
    return max(0.0, 1 - arrived / sent) * 100


def summarize(config: LoadConfig, result: WorkerResult) -> dict[str, Any]:
    """The report as plain data (the --json output).

    Rates divide by the sending window. "relayed" counts packets the relay
    forwarded in both directions: those the peers received plus those that
    came back to the clients. Mbit/s count application payload only (no
    TURN, UDP or IP headers). Loss: forward = not at the peer, return =
    echoed by the peer but not back at the client, round trip = either.
    """
    duration = result.duration_seconds or config.seconds
    rtt = result.rtt

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    def rate(count: int) -> float:
        return round(count / duration, 1)

    def mbit(size: int) -> float:
        return round(size * 8 / duration / 1e6, 3)

    def percent(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    offered_pps = result.allocated * config.rate
    return {
        "server": f"{config.server[0]}:{config.server[1]}",
        "transport": config.transport,
        "mode": config.mode,
        "clients": config.clients,
        "allocated": result.allocated,
        "processes": config.processes,
        "size_bytes": config.size,
        "rate_pps_per_client": config.rate,
        "seconds": round(duration, 3),
        "offered_pps": round(offered_pps, 1),
        "sent": result.sent,
        "peer_received": result.peer_received,
        "received": result.received,
        "sent_pps": rate(result.sent),
        "peer_pps": rate(result.peer_received),
        "received_pps": rate(result.received),
        "relayed_pps": rate(result.peer_received + result.received),
        "sent_mbps": mbit(result.sent_bytes),
        "peer_mbps": mbit(result.peer_bytes),
        "received_mbps": mbit(result.received_bytes),
        "loss_forward_percent": percent(_ratio_lost(result.sent, result.peer_received)),
        "loss_return_percent": percent(_ratio_lost(result.peer_received, result.received)),
        "loss_percent": percent(_ratio_lost(result.sent, result.received)),
        "rtt_ms": {
            "p50": ms(rtt.percentile(50)),
            "p90": ms(rtt.percentile(90)),
            "p99": ms(rtt.percentile(99)),
            "max": ms(rtt.max_us * MICROSECOND if rtt.total else None),
            "mean": ms(rtt.mean),
            "samples": rtt.total,
        },
        "generator_kept_up": result.offered == 0 or result.sent >= 0.98 * result.offered,
        "generator_cpu_percent": round(result.busiest_cpu_percent, 1),
        "generator_cpu_bound": result.busiest_cpu_percent >= CPU_BOUND_PERCENT,
        "send_errors": result.send_errors,
        "late_ticks": result.late_ticks,
        "paused_ticks": result.paused_ticks,
        "errors": dict(result.errors),
    }


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report of a summary."""
    s = summary
    title = (
        f"load test: {s['transport']} {s['server']}, {s['mode']} mode, {s['allocated']}/{s['clients']} clients "
        f"allocated in {s['processes']} process(es), {s['size_bytes']} B at {s['rate_pps_per_client']:g} pkt/s "
        f"each, {s['seconds']:g} s"
    )
    lines = [title, f"  {'':24}{'packets':>12}{'pkt/s':>12}{'Mbit/s':>10}"]
    for label, count, pps, mbps in (
        ("sent (client → relay)", s["sent"], s["sent_pps"], s["sent_mbps"]),
        ("at peer (relay → peer)", s["peer_received"], s["peer_pps"], s["peer_mbps"]),
        ("back (relay → client)", s["received"], s["received_pps"], s["received_mbps"]),
        ("relayed (both ways)", s["peer_received"] + s["received"], s["relayed_pps"],
         round(s["peer_mbps"] + s["received_mbps"], 3)),
    ):
        lines.append(f"  {label:24}{count:>12,}{pps:>12,.1f}{mbps:>10.2f}")

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} %"

    lines.append(f"  loss: forward {pct(s['loss_forward_percent'])}, return {pct(s['loss_return_percent'])}, "
                 f"round trip {pct(s['loss_percent'])}")
    rtt = s["rtt_ms"]
    if rtt["samples"]:
        lines.append(f"  rtt ms: p50 {rtt['p50']:.3f}  p90 {rtt['p90']:.3f}  p99 {rtt['p99']:.3f}  "
                     f"max {rtt['max']:.3f}  ({rtt['samples']:,} samples)")
    else:
        lines.append("  rtt: no packet came back")
    lines.append(f"  generator: {s['generator_cpu_percent']:.0f} % of a core in its busiest process, "
                 f"{s['sent_pps']:,.0f} of {s['offered_pps']:,.0f} pkt/s offered sent")
    if not s["generator_kept_up"]:
        lines.append(f"  note: the generator sent {s['sent_pps']:,.0f} of {s['offered_pps']:,.0f} pkt/s offered; "
                     "add --processes or lower --rate (or the server pushed back)")
    if s["generator_cpu_bound"]:
        lines.append(f"  note: the generator was CPU-bound ({s['generator_cpu_percent']:.0f} % of a core in its "
                     "busiest process): RTT and loss include its own queueing and the relay may do more; "
                     "add --processes (on free cores)")
    if s["send_errors"]:
        lines.append(f"  note: {s['send_errors']:,} packets could not be sent (socket buffer full)")
    for message, count in sorted(s["errors"].items(), key=lambda item: -item[1]):
        lines.append(f"  failed setup x{count}: {message}")
    return "\n".join(lines)


# -- progress ----------------------------------------------------------------------------


Snapshot = tuple[float, int, int, int, int, int]  # elapsed, sent, sent_bytes, peer_received, received, received_bytes


class Progress:
    """Merges per-worker cumulative snapshots into one line a second."""

    def __init__(self, write: Callable[[str], Any], workers: int = 1) -> None:
        self.write = write
        self.workers = workers
        self.latest: dict[int, Snapshot] = {}
        self._rounds: dict[int, int] = {}
        self._printed = 0
        self._previous: Snapshot | None = None

    def update(self, worker: int, snapshot: Snapshot) -> None:
        """Take a worker's snapshot; print a line once every worker has sent one more."""
        self.latest[worker] = snapshot
        self._rounds[worker] = self._rounds.get(worker, 0) + 1
        if len(self._rounds) == self.workers and min(self._rounds.values()) > self._printed:
            self._printed = min(self._rounds.values())
            self.emit()

    def line(self) -> str | None:
        """The line for the time since the previous one; None before any data."""
        if not self.latest:
            return None
        snaps = list(self.latest.values())
        total: Snapshot = (max(s[0] for s in snaps),) + tuple(sum(s[i] for s in snaps) for i in range(1, 6))
        previous = self._previous or (0.0, 0, 0, 0, 0, 0)
        self._previous = total
        dt = total[0] - previous[0]
        if dt <= 0:
            return None
        elapsed, sent, _, peer, received, received_bytes = total
        lost = _ratio_lost(sent, received)
        return (f"[{elapsed:6.1f} s] sent {(sent - previous[1]) / dt:>10,.0f} pkt/s  "
                f"at peer {(peer - previous[3]) / dt:>10,.0f} pkt/s  "
                f"back {(received - previous[4]) / dt:>10,.0f} pkt/s  "
                f"{(received_bytes - previous[5]) * 8 / dt / 1e6:8.2f} Mbit/s back  "
                f"not back yet {lost or 0:.2f} %")

    def emit(self) -> None:
        text = self.line()
        if text is not None:
            self.write(text)


# -- the worker: one reactor, a share of the clients ---------------------------------------


class EchoPeer(DatagramProtocol):
    """A client's peer: counts what the relay delivers and echoes it back where it came from."""

    noisy = False

    def __init__(self) -> None:
        self.received = 0
        self.received_bytes = 0
        self.echo_errors = 0
        self._sendto: Callable[[bytes, Any], Any] | None = None

    def startProtocol(self) -> None:
        self._sendto = self.transport.getHandle().sendto
        read_loop(self.transport, self.datagramReceived)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received += 1
        self.received_bytes += len(data)
        try:
            self._sendto(data, addr)
        except OSError:
            self.echo_errors += 1


class _Flow:
    """One client, its peer socket and its counters."""

    __slots__ = (
        "client",
        "echo",
        "index",
        "peer",
        "peer_port",
        "received",
        "received_bytes",
        "send",
        "send_errors",
        "sent",
        "sent_bytes",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.client: TurnClient | None = None
        self.peer_port: Any = None
        self.peer: tuple[str, int] | None = None
        self.echo = EchoPeer()
        self.send: Callable[[bytes], None] | None = None
        self.sent = 0
        self.sent_bytes = 0
        self.send_errors = 0
        self.received = 0
        self.received_bytes = 0


class Worker:
    """Sets up a share of the clients, sends, drains and tears down, on one reactor.

    ``report(kind, payload)`` is told "ready" (the number of clients set up)
    after setup and "progress" (a Snapshot) each second; ``go()`` says when
    to start sending, so several processes start together, and ``stop()``
    when to end early. ``run()`` fires with a WorkerResult.
    """

    def __init__(
        self,
        reactor: Any,
        config: LoadConfig,
        first: int,
        count: int,
        report: Callable[[str, Any], Any] = lambda kind, payload: None,
        go: Callable[[], bool] = lambda: True,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.all_flows = [_Flow(first + i) for i in range(count)]
        self.flows: list[_Flow] = []
        self.report = report
        self.go = go
        self.stop = stop
        self.result = WorkerResult(clients=count)
        self.budget = config.packets_per_client
        self.tick_seconds = config.tick_seconds or auto_tick_seconds(count)
        self.max_burst = max_burst_for(config.rate, self.tick_seconds)
        self.filler = bytes(config.size - _STAMP.size)
        self.start = 0.0
        self.finished_sending = 0.0
        self.cpu_clock: Callable[[], float] = time.process_time
        self._cpu_at_start = 0.0
        self._cpu_seconds = 0.0
        self._ticker: LoopingCall | None = None

    def run(self) -> Deferred:
        """Fires with the WorkerResult once everything is closed again."""
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> WorkerResult:
        try:
            await self._setup()
            self.flows = [flow for flow in self.all_flows if flow.send is not None]
            self.result.allocated = len(self.flows)
            self.report("ready", len(self.flows))
            if self.flows:
                await self._wait_for_go()
                if not self.stop():
                    await self._send_and_drain()
        finally:
            await self._teardown()
        return self._collect()

    # -- setup: connect, allocate, permission or channel -------------------------------

    async def _setup(self) -> None:
        semaphore = DeferredSemaphore(SETUP_CONCURRENCY)
        attempts = [semaphore.run(self._setup_flow, flow) for flow in self.all_flows]

        def give_up() -> None:
            for attempt in attempts:
                if not attempt.called:
                    attempt.cancel()

        timer = self.reactor.callLater(self.config.setup_timeout_seconds, give_up)
        outcomes = await DeferredList(attempts, consumeErrors=True)
        if timer.active():
            timer.cancel()
        for (ok, value), flow in zip(outcomes, self.all_flows):
            if not ok:
                flow.send = None
                message = _describe(value, self.config)
                self.result.errors[message] = self.result.errors.get(message, 0) + 1

    def _setup_flow(self, flow: _Flow) -> Deferred:
        return Deferred.fromCoroutine(self._setup_flow_steps(flow))

    async def _setup_flow_steps(self, flow: _Flow) -> None:
        config = self.config
        flow.peer_port = self.reactor.listenUDP(0, flow.echo, interface=config.peer_ip, maxPacketSize=65536)
        set_socket_buffers(flow.peer_port.getHandle(), SOCKET_BUFFER_BYTES)
        flow.peer = peer = (config.peer_ip, flow.peer_port.getHost().port)
        flow.client = client = await connect(
            self.reactor, config.server, config.transport,
            username=config.username, password=config.password, realm=config.realm,
            tls_verify=config.tls_verify, tls_ca_file=config.tls_ca_file, tls_hostname=config.tls_hostname,
            connect_timeout_seconds=config.setup_timeout_seconds, socket_buffer_bytes=SOCKET_BUFFER_BYTES,
            software="txrendezvous load-test", rc=5, rm=4,
        )
        await client.allocate(int(min(3600, max(600, config.seconds + 120))))
        client.on_data = self._receiver(flow)
        if config.mode == "channel":
            await client.channel_bind(CHANNEL, peer)
            send_channel_data = client.send_channel_data
            flow.send = lambda data: send_channel_data(CHANNEL, data)
        else:
            await client.create_permission([peer])
            send_indication = client.send_indication
            flow.send = lambda data: send_indication(peer, data)

    def _receiver(self, flow: _Flow) -> Callable[[tuple[str, int], bytes], None]:
        seconds = self.reactor.seconds
        sent_at = _SENT_AT.unpack_from
        record = self.result.rtt.record
        minimum = _STAMP.size

        def on_data(peer: tuple[str, int], data: bytes) -> None:
            if len(data) < minimum:
                return
            flow.received += 1
            flow.received_bytes += len(data)
            record(seconds() - sent_at(data, 8)[0])

        return on_data

    async def _wait_for_go(self) -> None:
        deadline = self.reactor.seconds() + self.config.setup_timeout_seconds + SPAWN_GRACE_SECONDS
        while not self.go() and not self.stop() and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.01)

    # -- sending and draining ------------------------------------------------------------

    async def _send_and_drain(self) -> None:
        self.start = self.reactor.seconds()
        self._cpu_at_start = self.cpu_clock()
        progress = LoopingCall(self._progress)
        progress.clock = self.reactor
        progress.start(1.0, now=False)
        try:
            self._ticker = LoopingCall(self._tick)
            self._ticker.clock = self.reactor
            await self._ticker.start(self.tick_seconds, now=True)
            self.finished_sending = self.reactor.seconds()
            self._cpu_seconds = self.cpu_clock() - self._cpu_at_start
            # Wait for packets in flight; end early once everything is back.
            deadline = self.finished_sending + self.config.drain_seconds
            while self.reactor.seconds() < deadline and not self.stop():
                if sum(f.received for f in self.flows) >= sum(f.sent for f in self.flows):
                    break
                await deferLater(self.reactor, 0.02)
        finally:
            if progress.running:
                progress.stop()

    def _tick(self) -> None:
        """Each client sends the burst it owes; ends the ticker when time or budget is up."""
        seconds = self.reactor.seconds
        elapsed = seconds() - self.start
        finished = elapsed >= self.config.seconds or self.stop()
        if finished:
            if self.stop():
                self._ticker.stop()
                return
            elapsed = self.config.seconds  # a last burst: what is owed up to the end
        rate, budget, max_burst = self.config.rate, self.budget, self.max_burst
        pack, filler, size = _STAMP.pack, self.filler, self.config.size
        pending = False
        for flow in self.flows:
            if flow.sent >= budget:
                continue
            pending = True
            n = burst_size(flow.sent, elapsed, rate, budget, max_burst)
            if not n:
                continue
            if n == max_burst and max_burst > 1:
                self.result.late_ticks += 1
            if flow.client.write_paused:
                self.result.paused_ticks += 1
                continue
            send, seq, done = flow.send, flow.sent, 0
            try:
                while done < n:
                    send(pack(seq + done, seconds()) + filler)
                    done += 1
            except OSError:  # UDP send buffer full: this packet is lost, the rest wait
                flow.send_errors += 1
                done += 1
            except ConnectionClosed:  # the TCP/TLS connection is gone: count the rest as lost
                flow.send_errors += budget - flow.sent - done
                done = budget - flow.sent
            flow.sent += done
            flow.sent_bytes += done * size
        if finished or not pending:
            self._ticker.stop()

    def _progress(self) -> None:
        flows = self.flows
        self.report("progress", (
            self.reactor.seconds() - self.start,
            sum(f.sent for f in flows),
            sum(f.sent_bytes for f in flows),
            sum(f.echo.received for f in flows),
            sum(f.received for f in flows),
            sum(f.received_bytes for f in flows),
        ))

    # -- teardown and results -----------------------------------------------------------

    async def _teardown(self) -> None:
        closing = [f.client.close(timeout_seconds=TEARDOWN_SECONDS) for f in self.all_flows if f.client]
        if closing:
            await DeferredList(closing, consumeErrors=True)
        stopping = [f.peer_port.stopListening() for f in self.all_flows if f.peer_port is not None]
        await DeferredList([d for d in stopping if isinstance(d, Deferred)], consumeErrors=True)

    def _collect(self) -> WorkerResult:
        result = self.result
        for flow in self.flows:
            result.sent += flow.sent
            result.sent_bytes += flow.sent_bytes
            result.send_errors += flow.send_errors
            result.received += flow.received
            result.received_bytes += flow.received_bytes
            result.peer_received += flow.echo.received
            result.peer_bytes += flow.echo.received_bytes
        if self.start:
            end = self.finished_sending or self.reactor.seconds()
            result.duration_seconds = max(0.001, end - self.start)
            result.busiest_cpu_percent = self._cpu_seconds / result.duration_seconds * 100
            per_client = min(self.budget, int(self.config.rate * result.duration_seconds) + 1)
            result.offered = per_client * len(self.flows)
        return result


def _describe(failure: Any, config: LoadConfig) -> str:
    """A short, stable message for a failed client setup (identical ones are counted)."""
    error = failure.value
    if isinstance(error, CancelledError):
        return f"not set up within --setup-timeout {config.setup_timeout_seconds:g} s"
    if isinstance(error, (TurnError, RealmMismatch)):
        return str(error)
    if isinstance(error, TransactionTimeout):
        return f"no response from {config.server[0]}:{config.server[1]} over {config.transport}"
    text = str(error).strip() or type(error).__name__
    message = f"{type(error).__name__}: {text}"[:300]
    if config.transport == "tls" and type(error).__module__.split(".")[0] in ("OpenSSL", "service_identity"):
        message += " (a self-signed server needs --tls-ca FILE, or --tls-insecure)"
    return message


# -- running: in this process or in several --------------------------------------------


def hard_deadline_seconds(config: LoadConfig) -> float:
    """The longest a run may take from start to finish, whatever happens."""
    return (config.setup_timeout_seconds + SPAWN_GRACE_SECONDS + config.seconds
            + config.drain_seconds + 2 * TEARDOWN_SECONDS + 10)


def run_in_reactor(config: LoadConfig, first: int, count: int, report: Callable[[str, Any], Any],
                   go: Callable[[], bool], stop: Callable[[], bool]) -> WorkerResult:
    """Run one Worker on this process's (fresh) reactor until it is done.

    Bounded by hard_deadline_seconds: past it the reactor is stopped and
    LoadTestFailed raised.
    """
    from twisted.internet import reactor

    _raise_file_limit(4 * count + 64)
    outcome: dict[str, Any] = {}

    def start() -> None:
        worker = Worker(reactor, config, first, count, report, go, stop)
        done = worker.run()
        done.addCallbacks(lambda r: outcome.setdefault("result", r),
                          lambda f: outcome.setdefault("failure", f))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.callLater(hard_deadline_seconds(config), reactor.stop)
    reactor.run(installSignalHandlers=False)
    if "failure" in outcome:
        outcome["failure"].raiseException()
    if "result" not in outcome:
        raise LoadTestFailed(f"the run did not finish within {hard_deadline_seconds(config):.0f} s")
    return outcome["result"]


def _raise_file_limit(wanted: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def _worker_process(config: LoadConfig, worker: int, first: int, count: int, queue: Any, go: Any,
                    stop: Any) -> None:
    """The body of one worker process: its own reactor, its share of clients."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into ``stop``
    try:
        result = run_in_reactor(config, first, count, lambda kind, payload: queue.put((kind, worker, payload)),
                                go.is_set, stop.is_set)
    except BaseException as e:  # noqa: BLE001 (report anything: the parent must not wait in vain)
        queue.put(("error", worker, f"{type(e).__name__}: {e}"))
    else:
        queue.put(("result", worker, result))


def run(config: LoadConfig, progress: Callable[[str], Any] | None = None) -> WorkerResult:
    """Run a whole load test and return the merged result.

    ``progress`` receives one line a second while packets flow (the CLI
    prints them to stderr). With ``processes`` > 1 the clients are shared
    among that many spawned processes, started together once all are set
    up. Ctrl-C ends sending early and still reports. Raises LoadTestFailed
    when no client could be set up.
    """
    config.validate()
    shares = split_clients(config.clients, config.processes)
    printer = Progress(progress or (lambda line: None), len(shares))
    stopping = _StopFlag()
    with stopping.on_interrupt():
        if len(shares) == 1:
            result = _run_here(config, printer, stopping)
        else:
            result = _run_processes(config, shares, printer, stopping)
    if not result.allocated:
        reasons = "; ".join(f"{message} (x{count})" for message, count in result.errors.items())
        raise LoadTestFailed(f"no allocation succeeded: {reasons or 'no reason given'}")
    return result


class _StopFlag:
    """Set by the first Ctrl-C; a second one interrupts as usual."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set

    def on_interrupt(self):
        import contextlib

        @contextlib.contextmanager
        def installed():
            def handler(signum: int, frame: Any) -> None:
                if self.set:
                    raise KeyboardInterrupt
                self.set = True
                sys.stderr.write("stopping: finishing up and reporting (Ctrl-C again to abort)\n")

            try:
                previous = signal.signal(signal.SIGINT, handler)
            except ValueError:  # not the main thread
                yield
                return
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)

        return installed()


def _run_here(config: LoadConfig, printer: Progress, stopping: _StopFlag) -> WorkerResult:
    def report(kind: str, payload: Any) -> None:
        if kind == "progress":
            printer.update(0, payload)

    return run_in_reactor(config, 0, config.clients, report, lambda: True, stopping)


def _run_processes(config: LoadConfig, shares: list[int], printer: Progress,
                   stopping: _StopFlag) -> WorkerResult:
    import multiprocessing
    import queue as queue_module

    # "spawn": each worker starts a clean interpreter and installs its own
    # reactor; forking a process that already has one shares its epoll fd.
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    go, stop = context.Event(), context.Event()
    processes = []
    first = 0
    for worker, count in enumerate(shares):
        process = context.Process(target=_worker_process, name=f"load-test-{worker}", daemon=True,
                                  args=(config, worker, first, count, messages, go, stop))
        process.start()
        processes.append(process)
        first += count
    merged = WorkerResult()
    ready: set[int] = set()
    finished: set[int] = set()
    deadline = time.monotonic() + hard_deadline_seconds(config) + SPAWN_GRACE_SECONDS
    try:
        while len(finished) < len(processes) and time.monotonic() < deadline:
            if stopping():
                stop.set()
            if not go.is_set() and len(ready | finished) == len(processes):
                go.set()
            try:
                kind, worker, payload = messages.get(timeout=0.1)
            except queue_module.Empty:
                kind = None
                for worker, process in enumerate(processes):
                    if worker not in finished and not process.is_alive() and process.exitcode not in (None, 0):
                        finished.add(worker)
                        message = f"worker process exited with code {process.exitcode}"
                        merged.errors[message] = merged.errors.get(message, 0) + shares[worker]
            if kind == "ready":
                ready.add(worker)
            elif kind == "progress":
                printer.update(worker, payload)
            elif kind == "result":
                finished.add(worker)
                merged.merge(payload)
            elif kind == "error":
                finished.add(worker)
                merged.clients += shares[worker]
                merged.errors[payload] = merged.errors.get(payload, 0) + shares[worker]
    finally:
        stop.set()
        go.set()
        for process in processes:
            process.join(timeout=TEARDOWN_SECONDS + 2)
        for process in processes:
            if process.is_alive():  # our own child, ended by its own handle
                process.terminate()
                process.join(timeout=2)
    return merged


# -- the ``txrendezvous load-test`` subcommand ---------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the load-test options to an argparse (sub)parser."""
    parser.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="the TURN server ([ADDR]:PORT for IPv6)")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp",
                        help="client-to-relay transport (default udp)")
    parser.add_argument("--user", required=True, metavar="NAME:PASS",
                        help="long-term credentials; a bare NAME reads the password from TXRENDEZVOUS_PASSWORD")
    parser.add_argument("--realm", help="expected realm; fail if the server's differs (default: the server's)")
    parser.add_argument("--clients", type=int, default=1, metavar="N",
                        help="allocations, each with its own peer socket (default 1)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="worker processes sharing the clients (default 1)")
    parser.add_argument("--mode", choices=("channel", "send"), default="channel",
                        help="ChannelData or Send/Data indications (default channel)")
    parser.add_argument("--size", type=int, default=100, metavar="BYTES",
                        help=f"application payload per packet, {MIN_SIZE_BYTES}-{MAX_SIZE_BYTES} (default 100)")
    parser.add_argument("--rate", type=float, default=100.0, metavar="PPS",
                        help="packets per second per client (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, metavar="S",
                        help="how long to send (default 10)")
    parser.add_argument("--peer-ip", default="127.0.0.1", metavar="IP",
                        help="local address the peer sockets bind to; the relay must reach it (default 127.0.0.1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--tls-insecure", action="store_true",
                        help="TLS: accept any server certificate (self-signed development servers)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="TLS: trust this PEM CA or certificate instead of the system's")
    parser.add_argument("--tls-hostname", metavar="NAME",
                        help="TLS: name to verify the certificate against (default: the --server host)")
    parser.add_argument("--tick-ms", type=float, default=None, metavar="MS",
                        help="send loop period; each tick sends the packets owed "
                             "(default: 1 ms up to 100 clients per process, +0.01 ms per client, at most 10)")
    parser.add_argument("--setup-timeout", type=float, default=10.0, metavar="S",
                        help="give up on clients not allocated by then (default 10)")
    parser.add_argument("--drain", type=float, default=1.0, metavar="S",
                        help="wait this long after sending for packets in flight (default 1)")
    parser.add_argument("--max-packets", type=int, default=HARD_CAP_PACKETS, metavar="N",
                        help=f"stop after this many packets over all clients (at most {HARD_CAP_PACKETS:,})")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> LoadConfig:
    """Build and validate a LoadConfig; ConfigError for bad input."""
    username, password = parse_user(args.user, environ)
    return LoadConfig(
        server=parse_server(args.server),
        username=username,
        password=password,
        realm=args.realm,
        transport=args.transport,
        clients=args.clients,
        processes=min(args.processes, max(1, args.clients)),
        mode=args.mode,
        size=args.size,
        rate=args.rate,
        seconds=args.seconds,
        peer_ip=args.peer_ip,
        tls_verify=not args.tls_insecure,
        tls_ca_file=args.tls_ca,
        tls_hostname=args.tls_hostname,
        tick_seconds=None if args.tick_ms is None else args.tick_ms / 1000,
        setup_timeout_seconds=args.setup_timeout,
        drain_seconds=args.drain,
        max_packets=args.max_packets,
    ).validate()


def run_command(args: argparse.Namespace) -> int:
    """``txrendezvous load-test``: 0 when packets came back, 1 when the run failed, 2 for bad input."""
    try:
        config = config_from_args(args)
    except ConfigError as e:
        sys.stderr.write(f"txrendezvous load-test: error: {e}\n")
        return 2
    if config.tls_ca_file and not os.path.isfile(config.tls_ca_file):
        sys.stderr.write(f"txrendezvous load-test: error: --tls-ca {config.tls_ca_file}: no such file\n")
        return 2

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    sys.stderr.write(f"setting up {config.clients} client(s) on {config.server[0]}:{config.server[1]} "
                     f"over {config.transport} in {config.processes} process(es)...\n")
    try:
        result = run(config, progress)
    except LoadTestFailed as e:
        sys.stderr.write(f"txrendezvous load-test: error: {e}\n")
        return 1
    summary = summarize(config, result)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(format_report(summary) + "\n")
    if not result.received:
        sys.stderr.write("txrendezvous load-test: error: no packet came back through the relay\n")
        return 1
    return 0
