"""The results views and their charts, rebuilt off the reactor when records change."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, threads

from rendezvous.node.results.store import ResultsStore
from rendezvous.node.results.summary import summarize

REBUILD_SECONDS = 5.0
GATEWAY_NAMES = {"igd": "UPnP IGD", "natpmp": "NAT-PMP", "pcp": "PCP"}


@dataclass
class Section:
    """One view of the page: a chart and the table of its numbers."""

    chart_id: str
    title: str
    headers: tuple[str, ...]
    rows: list[tuple]
    bars: list[tuple[str, float, str]]  # (label, value, text written at the bar)
    unit: str = "submissions"
    vertical: bool = False


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def _counted(chart_id: str, title: str, counts: list[list], unit: str = "submissions") -> Section:
    total = sum(n for _, n in counts)
    return Section(chart_id, title, ("", unit, "share"),
                   [(label, n, f"{_percent(n, total)} %") for label, n in counts],
                   [(label, n, str(n)) for label, n in counts], unit)


def _ranked(chart_id: str, title: str, rows: list[list]) -> Section:
    return Section(chart_id, title, ("", "submissions", "endpoint-independent mapping", "hairpinning"),
                   [(name, n, f"{_percent(eim, n)} %", f"{_percent(hp, n)} %") for name, n, eim, hp in rows],
                   [(name, n, str(n)) for name, n, _, _ in rows])


def sections(summary: dict) -> list[Section]:
    """The page's views, in reading order (docs/NAT_CHECK.md explains each)."""
    return [
        _counted("nat-types", "NAT types (RFC 3489 names)", summary["nat_types"]),
        _counted("mapping", "Mapping behaviour (RFC 4787 §4.1)", summary["mapping"]),
        _counted("filtering", "Filtering behaviour (RFC 4787 §5)", summary["filtering"]),
        _counted("port-preservation", "Port preservation", summary["port_preservation"]),
        _counted("port-allocation", "Port allocation", summary["port_allocation"]),
        _counted("port-prediction", "Port prediction", summary["port_prediction"]),
        _counted("hairpinning", "Hairpinning (RFC 4787 §6)", summary["hairpinning"]),
        _counted("alg", "Application-level gateway rewriting addresses", summary["alg"]),
        Section("gateways", "Port-mapping gateways that answered", ("protocol", "asked", "answered", "share"),
                [(GATEWAY_NAMES.get(p, p), asked, ok, f"{_percent(ok, asked)} %") for p, asked, ok in
                 summary["gateways"]],
                [(GATEWAY_NAMES.get(p, p), _percent(ok, asked), f"{ok}/{asked}") for p, asked, ok in
                 summary["gateways"]], "% answered"),
        Section("binding-timeouts", "UDP binding timeouts", ("lifetime", "submissions"),
                [tuple(row) for row in summary["binding_timeouts"]],
                [(label, n, str(n)) for label, n in summary["binding_timeouts"]], "submissions", vertical=True),
        Section("techniques", "Traversal techniques that worked", ("technique", "tried", "worked", "rate"),
                [(t, tried, ok, f"{_percent(ok, tried)} %") for t, tried, ok in summary["techniques"]],
                [(t, _percent(ok, tried), f"{ok}/{tried}") for t, tried, ok in summary["techniques"]],
                "% of attempts"),
        Section("direct", "Sessions that went direct, per pair of NAT types", ("NAT types", "sessions", "direct",
                                                                               "share"),
                [(f"{a} ↔ {b}", n, d, f"{_percent(d, n)} %") for a, b, n, d in summary["direct_by_pair"]],
                [(f"{a} ↔ {b}", _percent(d, n), f"{d}/{n}") for a, b, n, d in summary["direct_by_pair"]],
                "% of sessions"),
        _ranked("routers", "Router brands", summary["routers"]),
        _ranked("providers", "Providers", summary["providers"]),
    ]


class ResultsView:
    """The summary and its SVG charts; charts are redrawn in a thread at most every REBUILD_SECONDS."""

    def __init__(self, store: ResultsStore, clock, in_thread=threads.deferToThread) -> None:
        self.store = store
        self.clock = clock
        self.in_thread = in_thread
        self._built: tuple | None = None  # (revision, summary, charts, when)
        self._counted: tuple | None = None  # (revision, summary, when)
        self._waiting: list[defer.Deferred] | None = None

    def summary(self) -> dict:
        """The views' numbers, recounted when the records changed, at most every REBUILD_SECONDS."""
        return self._count()[1]

    def _count(self) -> tuple[tuple, dict]:
        """(the store's revision the summary was counted at, the summary)."""
        now, counted = self.clock.seconds(), self._counted
        if counted is None or (now - counted[2] >= REBUILD_SECONDS and counted[0] != self.store.revision()):
            revision = self.store.revision()
            counted = self._counted = (revision, summarize(self.store.records(), self.store.networks()), now)
        return counted[0], counted[1]

    def charts(self) -> defer.Deferred:
        """Fires with (summary, {chart id: svg}) for the records as they are now (or REBUILD_SECONDS ago)."""
        now = self.clock.seconds()
        built = self._built
        if built is not None and (built[0] == self.store.revision() or now - built[3] < REBUILD_SECONDS):
            return defer.succeed((built[1], built[2]))
        waiter = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        revision, summary = self._count()
        self.in_thread(_draw, sections(summary)).addCallbacks(
            self._done, self._failed, callbackArgs=(revision, summary, now))
        return waiter

    def _done(self, charts: dict, revision: tuple, summary: dict, when: float) -> None:
        waiting, self._waiting = self._waiting, None
        self._built = (revision, summary, charts, when)
        for waiter in waiting:
            waiter.callback((summary, charts))

    def _failed(self, failure) -> None:
        waiting, self._waiting = self._waiting, None
        for waiter in waiting:
            waiter.errback(failure)


def _draw(views: list[Section]) -> dict[str, str]:
    from rendezvous.node.results.charts import bar_chart

    return {s.chart_id: bar_chart(s.chart_id, s.bars, s.unit, s.vertical) for s in views}
