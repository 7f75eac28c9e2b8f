"""Server-side SVG charts for ``/results``, drawn by matplotlib.

Text stays text (``svg.fonttype: none``) so the page is searchable and each
bar's figure can be read back: every bar label is a ``<g id="CHART-value-N">``.
Drawing takes tens of milliseconds a chart, so callers run it off the reactor
thread, one rendering at a time (rcParams are process-wide).
"""

from __future__ import annotations

import io

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BAR_COLOUR = "#3b6ea8"
EMPTY = "no data yet"


def bar_chart(chart_id: str, rows: list[tuple[str, float, str]], unit: str = "", vertical: bool = False) -> str:
    """One bar per (label, value, text) row, text written at the bar's end; an ``<svg>`` element.

    The page's heading names the chart; a unit starting with "%" gets a 0-100 axis, others whole numbers.
    """
    height = 0.8 + 0.3 * max(len(rows), 2) if not vertical else 2.6
    figure = Figure(figsize=(5.6, height))
    axes = figure.subplots()
    value_axis = axes.yaxis if vertical else axes.xaxis
    if unit.startswith("%"):
        (axes.set_ylim if vertical else axes.set_xlim)(0, 100)
    else:
        value_axis.set_major_locator(MaxNLocator(integer=True))
    axes.spines[["top", "right"]].set_visible(False)
    if not rows:
        axes.text(0.5, 0.5, EMPTY, ha="center", va="center", transform=axes.transAxes, gid=f"{chart_id}-empty")
        axes.set_axis_off()
    else:
        labels, values, texts = zip(*rows)
        draw = axes.bar if vertical else axes.barh
        bars = draw(range(len(rows)), values, color=BAR_COLOUR)
        (axes.set_xticks if vertical else axes.set_yticks)(range(len(rows)), labels, fontsize=9)
        if not vertical:
            axes.invert_yaxis()
        (axes.set_ylabel if vertical else axes.set_xlabel)(unit, fontsize=9)
        for n, text in enumerate(axes.bar_label(bars, labels=texts, padding=3, fontsize=9)):
            text.set_gid(f"{chart_id}-value-{n}")
        if not unit.startswith("%"):
            axes.margins(**{"y" if vertical else "x": 0.15})
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        figure.savefig(out, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = out.getvalue()
    return svg[svg.index("<svg"):]
