"""The results views and their charts, rebuilt off the reactor when records change."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, threads
from twisted.python import failure

from rendezvous.node.results.store import ResultsStore
from upnp_helper.probe import NAMES as GATEWAY_NAMES

REBUILD_SECONDS = 5.0


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
    """The summary and its SVG charts for the pages and /api/results.

    Counting reads every record (on the account store's thread pool) and is
    done again only when the records changed and the last count is at least
    REBUILD_SECONDS old; charts are drawn in a thread for each new count.
    Callers arriving meanwhile share the count or drawing under way.
    """

    def __init__(self, store: ResultsStore, clock, in_thread=threads.deferToThread) -> None:
        self.store = store
        self.clock = clock
        self.in_thread = in_thread
        self._counted: tuple | None = None  # (revision, summary, when)
        self._drawn: tuple | None = None  # (revision, charts)
        self._counting = _Shared(self._count)
        self._drawing = _Shared(self._draw)

    def summary(self) -> defer.Deferred:
        """Fires with the views' numbers (a dict, as /api/results shows them)."""
        return self._counting.get().addCallback(lambda counted: counted[1])

    def charts(self) -> defer.Deferred:
        """Fires with (summary, {chart id: svg}) for the same count."""
        return self._drawing.get()

    async def _count(self) -> tuple[tuple, dict]:
        counted, now = self._counted, self.clock.seconds()
        if counted is not None:
            if now - counted[2] < REBUILD_SECONDS:
                return counted[0], counted[1]
            if await self.store.revision() == counted[0]:
                self._counted = (counted[0], counted[1], now)
                return counted[0], counted[1]
        revision, summary = await self.store.summary()
        self._counted = (revision, summary, now)
        return revision, summary

    async def _draw(self) -> tuple[dict, dict]:
        revision, summary = await self._counting.get()
        if self._drawn is None or self._drawn[0] != revision:
            self._drawn = (revision, await self.in_thread(_draw, sections(summary)))
        return summary, self._drawn[1]


class _Shared:
    """One run of an async function at a time; callers meanwhile get its result too."""

    def __init__(self, function) -> None:
        self.function = function
        self.waiting: list[defer.Deferred] | None = None

    def get(self) -> defer.Deferred:
        waiter = defer.Deferred()
        if self.waiting is not None:
            self.waiting.append(waiter)
            return waiter
        self.waiting = [waiter]
        defer.Deferred.fromCoroutine(self.function()).addBoth(self._done)
        return waiter

    def _done(self, result) -> None:
        waiting, self.waiting = self.waiting, None
        for waiter in waiting:
            waiter.callback(result) if not isinstance(result, failure.Failure) else waiter.errback(result)


def _draw(views: list[Section]) -> dict[str, str]:
    from rendezvous.node.results.charts import bar_chart

    return {s.chart_id: bar_chart(s.chart_id, s.bars, s.unit, s.vertical) for s in views}
