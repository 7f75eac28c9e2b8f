"""What a load test measured and how it is told: the round-trip histogram, the per-worker
counters (merged across processes), the summary (the --json output), the text report and
the once-a-second progress line."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.loadgen_config import LoadConfig

MICROSECOND = 1e-6
CPU_BOUND_PERCENT = 90.0  # a worker this busy while sending limits the measurement


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

    def __init__(self, write: Callable[[str], Any], workers: int = 1, short: bool = False) -> None:
        self.write = write
        self.workers = workers
        self.short = short
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
        if self.short:
            return (f"sent {(sent - previous[1]) / dt:,.0f} pkt/s, back {(received - previous[4]) / dt:,.0f} pkt/s, "
                    f"not back yet {lost or 0:.2f} %")
        return (f"[{elapsed:6.1f} s] sent {(sent - previous[1]) / dt:>10,.0f} pkt/s  "
                f"at peer {(peer - previous[3]) / dt:>10,.0f} pkt/s  "
                f"back {(received - previous[4]) / dt:>10,.0f} pkt/s  "
                f"{(received_bytes - previous[5]) * 8 / dt / 1e6:8.2f} Mbit/s back  "
                f"not back yet {lost or 0:.2f} %")

    def emit(self) -> None:
        text = self.line()
        if text is not None:
            self.write(text)
