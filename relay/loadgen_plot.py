"""The ramp's picture: throughput and round-trip time against offered load, as SVG (matplotlib).

``plot_ramp()`` draws on a bare Figure, with no pyplot state and no display.
"""

from __future__ import annotations

from typing import Any


def plot_ramp(report: dict[str, Any], path: str) -> None:
    """Write the ramp report (loadgen_ramp.ramp_report) as an SVG to path.

    Top: round trips back and relayed packets per second against offered
    packets per second, with the line where everything offered comes back.
    Bottom: p50 and p99 round-trip time (log scale) and round-trip loss,
    with their bounds. The highest step that held is marked in both. Raises OSError when path cannot be
    written.
    """
    from matplotlib.figure import Figure

    steps = sorted(report["steps"], key=lambda step: step["offered_pps"])
    offered = [step["offered_pps"] for step in steps]
    summaries = [step["summary"] for step in steps]
    figure = Figure(figsize=(8, 7), layout="constrained")
    throughput, latency = figure.subplots(2, 1, sharex=True)
    p99 = "" if report["max_p99_ms"] is None else f", p99 ≤ {report['max_p99_ms']:g} ms"
    figure.suptitle(f"{report['transport']} {report['server']}: {report['mode']} mode, {report['clients']} clients, "
                    f"{report['size_bytes']} B (held: loss ≤ {report['max_loss_percent']:g} %{p99})")

    throughput.plot(offered, [s["received_pps"] for s in summaries], "o-", label="round trips back (pkt/s)")
    throughput.plot(offered, [s["relayed_pps"] for s in summaries], "s--", label="relayed, both ways (pkt/s)")
    if offered:
        throughput.plot([offered[0], offered[-1]], [offered[0], offered[-1]], ":", color="grey",
                        label="offered")
    throughput.set_ylabel("packets/s")
    held_marks = [step["offered_pps"] for step in steps if step["held"]]
    throughput.plot(held_marks, [s["received_pps"] for step, s in zip(steps, summaries) if step["held"]],
                    "o", color="green", label="step held")
    mbit = throughput.secondary_yaxis(
        "right", functions=(lambda pps: pps * report["size_bytes"] * 8 / 1e6,
                            lambda mbps: mbps * 1e6 / 8 / report["size_bytes"]))
    mbit.set_ylabel("Mbit/s back (payload)")

    latency.plot(offered, [_or_nan(s["rtt_ms"]["p50"]) for s in summaries], "o-", label="p50 RTT")
    latency.plot(offered, [_or_nan(s["rtt_ms"]["p99"]) for s in summaries], "s-", label="p99 RTT")
    latency.set_yscale("log")
    latency.set_ylabel("round trip (ms)")
    latency.set_xlabel("offered load (packets/s, all clients)")
    loss = latency.twinx()
    loss.plot(offered, [_or_nan(s["loss_percent"]) for s in summaries], "^:", color="red", label="loss")
    loss.set_ylabel("round-trip loss (%)", color="red")
    loss.axhline(report["max_loss_percent"], color="red", linewidth=0.5)
    loss.set_ylim(bottom=0)
    if report["max_p99_ms"] is not None:
        latency.axhline(report["max_p99_ms"], color="tab:orange", linewidth=0.5)

    held = report["held"]
    for axes in (throughput, latency):
        axes.grid(True, which="both", linewidth=0.3)
        if held is not None:
            axes.axvline(held["offered_pps"], color="green", linewidth=0.8)
    throughput.legend(loc="upper left", fontsize="small")
    latency.legend(loc="upper left", fontsize="small")
    figure.savefig(path, format="svg")


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
