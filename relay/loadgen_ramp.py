"""The load generator's ramp: the highest offered load a TURN relay carries within bounds.

Each step is a whole load test (relay/loadgen.py) at a higher offered rate,
its clients allocated afresh in spawned worker processes (a Twisted reactor
runs once per process). The rate starts at ``start_pps`` (over all clients)
and is multiplied by ``factor`` until a step fails: round-trip loss over
``max_loss_percent``, p99 round trip over ``max_p99_ms``, or a generator
that could not offer the rate (its own CPU, or the server pushing back on
TCP/TLS). Then ``refine`` more steps bisect, geometrically, between the last
step that held and the first that failed. The highest step that held is the
answer. Works against any RFC 8656 server, as the single run does.

Bounded: at most ``steps + refine`` steps, each a load test with its own
hard deadline and packet cap, and never above ``max_pps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from relay.loadgen import LoadTestFailed, StopFlag, run
from relay.loadgen_config import MAX_RATE_PPS, ConfigError, LoadConfig, check_range
from relay.loadgen_report import summarize

MAX_STEPS = 50
MAX_REFINE = 10


@dataclass(frozen=True)
class RampConfig:
    """How a ramp climbs and when it stops; rates are offered packets/s over all clients."""

    start_pps: float = 1000.0
    factor: float = 1.5
    max_pps: float = 1_000_000.0
    steps: int = 12
    refine: int = 2
    step_seconds: float = 3.0
    max_loss_percent: float = 1.0
    max_p99_ms: float | None = None

    def validate(self, clients: int) -> RampConfig:
        """Return self, or raise ConfigError naming the bad option."""
        check_range("--ramp-factor", self.factor, 1.05, 10)
        check_range("--ramp-steps", self.steps, 1, MAX_STEPS)
        check_range("--ramp-refine", self.refine, 0, MAX_REFINE)
        check_range("--step-seconds", self.step_seconds, 0.5, 600)
        check_range("--max-loss", self.max_loss_percent, 0, 100)
        if self.max_p99_ms is not None:
            check_range("--max-p99-ms", self.max_p99_ms, 0.001, 60_000)
        check_range("--ramp-max", self.max_pps, clients * 0.001, clients * MAX_RATE_PPS)
        check_range("--ramp-start", self.start_pps, clients * 0.001, self.max_pps)
        return self


def verdict(summary: dict[str, Any], ramp: RampConfig) -> str | None:
    """None when a step held within the ramp's bounds, else why it did not."""
    if not summary["generator_kept_up"]:
        return (f"only {summary['sent_pps']:,.0f} of {summary['offered_pps']:,.0f} pkt/s went out "
                "(the generator's CPU or the server's back-pressure; try --processes)")
    loss = summary["loss_percent"]
    if loss is None or loss > ramp.max_loss_percent:
        return f"loss {loss if loss is not None else 100:.2f} % > {ramp.max_loss_percent:g} %"
    p99 = summary["rtt_ms"]["p99"]
    if ramp.max_p99_ms is not None and (p99 is None or p99 > ramp.max_p99_ms):
        return f"p99 RTT {p99:.3f} ms > {ramp.max_p99_ms:g} ms"
    return None


class RampPlan:
    """Which rate comes next, from the verdicts so far (sans-IO).

    Climbs by ``factor`` to the first failure, then bisects between the
    highest rate that held and the lowest that failed. ``next_rate()`` is
    None once the ramp is over, and ``reason`` then says why.
    """

    def __init__(self, ramp: RampConfig) -> None:
        self.ramp = ramp
        self.held: float | None = None
        self.failed: float | None = None
        self.climbed = 0
        self.refined = 0
        self.reason = ""

    def next_rate(self) -> float | None:
        ramp = self.ramp
        if self.failed is None:
            if self.held is not None and self.held >= ramp.max_pps:
                self.reason = f"reached --ramp-max {ramp.max_pps:,.0f} pkt/s with every step held"
                return None
            if self.climbed >= ramp.steps:
                self.reason = f"every one of --ramp-steps {ramp.steps} held; raise it or --ramp-factor"
                return None
            return min(ramp.max_pps, ramp.start_pps * ramp.factor ** self.climbed)
        if self.held is None:
            self.reason = "the first step failed; lower --ramp-start"
            return None
        if self.refined >= ramp.refine:
            self.reason = f"the first failure was at {self.failed:,.0f} pkt/s"
            return None
        return math.sqrt(self.held * self.failed)

    def record(self, rate: float, held: bool) -> None:
        """Take the verdict of the step at rate."""
        if self.failed is None:
            self.climbed += 1
        else:
            self.refined += 1
        if held:
            self.held = max(rate, self.held or 0.0)
        else:
            self.failed = min(rate, self.failed if self.failed is not None else rate)


@dataclass
class RampStep:
    """One step: the offered rate over all clients, its load-test summary and why it failed (None: held)."""

    offered_pps: float
    summary: dict[str, Any]
    failure: str | None

    @property
    def held(self) -> bool:
        return self.failure is None


@dataclass
class RampResult:
    """Every step in the order run, and why the ramp stopped."""

    steps: list[RampStep] = field(default_factory=list)
    reason: str = ""

    @property
    def best(self) -> RampStep | None:
        """The step with the highest offered rate that held."""
        held = [step for step in self.steps if step.held]
        return max(held, key=lambda step: step.offered_pps) if held else None


def step_config(config: LoadConfig, ramp: RampConfig, offered_pps: float) -> LoadConfig:
    """The load test of one step: the offered rate shared by the clients, for step_seconds."""
    return replace(config, rate=offered_pps / config.clients, seconds=ramp.step_seconds).validate()


def run_ramp(
    config: LoadConfig,
    ramp: RampConfig,
    on_step_start: Callable[[int, float], Any] = lambda index, rate: None,
    on_step: Callable[[RampStep], Any] = lambda step: None,
    progress: Callable[[str], Any] | None = None,
) -> RampResult:
    """Run the ramp and return its steps; the first Ctrl-C ends the current step and the ramp.

    ``on_step_start(index, offered_pps)`` and ``on_step(step)`` frame each
    step; ``progress`` gets a short rates line each second. Raises
    loadgen.LoadTestFailed when the first step could allocate no client; a
    later step that cannot ends the ramp, which says so.
    """
    config.validate()
    ramp.validate(config.clients)
    plan = RampPlan(ramp)
    result = RampResult()
    stopping = StopFlag()
    with stopping.on_interrupt():
        while not stopping() and (rate := plan.next_rate()) is not None:
            on_step_start(len(result.steps), rate)
            step = step_config(config, ramp, rate)
            try:
                measured = run(step, progress, stopping=stopping, spawn=True, short_progress=True)
            except LoadTestFailed as e:
                if not result.steps:
                    raise
                result.reason = f"step {len(result.steps) + 1} at {rate:,.0f} pkt/s failed: {e}"
                return result
            summary = summarize(step, measured)
            ramp_step = RampStep(rate, summary, verdict(summary, ramp))
            plan.record(rate, ramp_step.held)
            result.steps.append(ramp_step)
            on_step(ramp_step)
    result.reason = "interrupted" if stopping() else plan.reason
    return result


def ramp_report(config: LoadConfig, ramp: RampConfig, result: RampResult) -> dict[str, Any]:
    """The ramp as plain data (the --json output): options, every step, the best, why it stopped."""
    best = result.best
    return {
        "server": f"{config.server[0]}:{config.server[1]}",
        "transport": config.transport,
        "mode": config.mode,
        "clients": config.clients,
        "processes": config.processes,
        "size_bytes": config.size,
        "step_seconds": ramp.step_seconds,
        "max_loss_percent": ramp.max_loss_percent,
        "max_p99_ms": ramp.max_p99_ms,
        "steps": [{"offered_pps": round(step.offered_pps, 1), "held": step.held, "failure": step.failure,
                   "summary": step.summary} for step in result.steps],
        "held": None if best is None else {"offered_pps": round(best.offered_pps, 1), "summary": best.summary},
        "stopped": result.reason,
    }


def step_line(step: RampStep) -> str:
    """One line of the step table."""
    s = step.summary
    rtt = s["rtt_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    loss = "-" if s["loss_percent"] is None else f"{s['loss_percent']:.2f}"
    return (f"{step.offered_pps:>14,.0f}{s['received_pps']:>14,.1f}{s['received_mbps']:>12.2f}{loss:>9}"
            f"{ms(rtt['p50']):>10}{ms(rtt['p99']):>10}  {step.failure or 'held'}")


STEP_HEADER = f"{'offered pkt/s':>14}{'back pkt/s':>14}{'Mbit/s back':>12}{'loss %':>9}{'p50 ms':>10}{'p99 ms':>10}"


def format_ramp(report: dict[str, Any]) -> str:
    """The human-readable ramp report: the step table, the highest rate that held, why it stopped."""
    r = report
    p99 = "none" if r["max_p99_ms"] is None else f"{r['max_p99_ms']:g} ms"
    lines = [f"ramp: {r['transport']} {r['server']}, {r['mode']} mode, {r['clients']} clients in "
             f"{r['processes']} process(es), {r['size_bytes']} B, {r['step_seconds']:g} s steps; "
             f"limits: loss {r['max_loss_percent']:g} %, p99 {p99}", STEP_HEADER]
    for step in r["steps"]:
        lines.append(step_line(RampStep(step["offered_pps"], step["summary"], step["failure"])))
    held = r["held"]
    if held is None:
        lines.append("no step held")
    else:
        s, rtt = held["summary"], held["summary"]["rtt_ms"]
        lines.append(
            f"highest rate that held: {held['offered_pps']:,.0f} pkt/s offered; {s['received_pps']:,.1f} round "
            f"trips/s back ({s['relayed_pps']:,.1f} relayed pkt/s), {s['received_mbps']:.2f} Mbit/s back "
            f"({s['peer_mbps'] + s['received_mbps']:.2f} relayed); loss {s['loss_percent']:.2f} %; rtt ms p50 "
            f"{rtt['p50']:.3f} p90 {rtt['p90']:.3f} p99 {rtt['p99']:.3f} max {rtt['max']:.3f}")
    lines.append(f"stopped: {r['stopped']}")
    return "\n".join(lines)
