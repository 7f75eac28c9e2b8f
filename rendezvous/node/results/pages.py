"""``/results``, ``/results/ID`` and ``/api/results``: the field test on the node's web ports.

    GET  /results              every view, a chart (inline SVG) beside a table of its numbers
    GET  /results/ID           one submission: the permanent link a submitter gets
    GET  /api/results          the views as JSON
    GET  /api/results/ID       one record as JSON
    POST /api/results          a submission (rendezvous.wire.results); 201 {"id", "link"},
                               400 {"error"} when refused, 429 past the per-network rate,
                               503 while the account database is away

Pages are rendered by ``twisted.web.template`` and need no JavaScript.
"""

from __future__ import annotations

import datetime
import json
import re

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.template import Tag, XMLString, flattenString, tags

from relay.limits import RateLimiter
from rendezvous.node.accounts import StoreUnavailable
from rendezvous.node.metrics import answer_later
from rendezvous.node.results.records import network_of, record_of
from rendezvous.node.results.view import GATEWAY_NAMES, ResultsView, sections
from rendezvous.wire.results import MAX_SUBMISSION_BYTES, SubmissionError, parse_submission

log = Logger()

# Per /24 or /48: a burst of 10 submissions, then one every 30 s.
SUBMIT_BURST, SUBMIT_PER_SECOND = 10, 1 / 30
_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_STYLE = """
body { font-family: sans-serif; max-width: 90em; margin: 1em auto; padding: 0 1em; color: #222; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(32em, 1fr)); gap: 0 3em; }
section { display: flex; flex-wrap: wrap; gap: 0.5em 2em; align-items: flex-start; margin: 1em 0; }
section h2 { flex-basis: 100%; margin: 0; font-size: 1.15em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
td.n { text-align: right; }
svg { max-width: 100%; height: auto; }
"""


def _document(title: str, *body) -> object:
    return tags.html(
        tags.head(tags.meta(charset="utf-8"), tags.meta(name="viewport", content="width=device-width"),
                  tags.title(title), tags.style(_STYLE)),
        tags.body(tags.h1(title), *body),
        lang="en")


def _table(headers: tuple, rows: list[tuple], table_id: str | None = None) -> object:
    cells = [tags.tr(*[tags.td(str(cell), class_="n" if isinstance(cell, (int, float)) else "") for cell in row])
             for row in rows]
    attributes = {"id": table_id} if table_id else {}
    return tags.table(tags.thead(tags.tr(*[tags.th(h) for h in headers])), tags.tbody(*cells), **attributes)


def _html(request, document) -> int:
    """Answer with document (tags, or a Deferred firing with them) once it is flattened."""
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
    ready = document if isinstance(document, Deferred) else succeed(document)  # flattened once it is whole
    body = ready.addCallback(lambda tree: flattenString(request, tree))
    body.addCallback(lambda html: b"<!DOCTYPE html>\n" + html)
    return answer_later(request, body.addErrback(_failed, request))


def _failed(failure, request) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if failure.check(StoreUnavailable):
        request.setResponseCode(503)
        return b"the results database is unavailable; try again later\n"
    log.failure("drawing a results page failed", failure)
    request.setResponseCode(500)
    return b"this page could not be drawn; see the node's log\n"


def _json(request, code: int, value) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def _json_later(request, answer: Deferred) -> int:
    """Answer with the (code, value) answer fires with; 503 while the database is away, 500 on a bug."""
    def failed(failure) -> bytes:
        if failure.check(StoreUnavailable):
            return _json(request, 503, {"error": "the results database is unavailable; try again later"})
        log.failure("a results API call failed", failure)
        return _json(request, 500, {"error": "internal error; see the node's log"})

    return answer_later(request, answer.addCallback(lambda done: _json(request, *done)).addErrback(failed))


class ResultsPage(resource.Resource):
    """GET /results (every view) and /results/ID (one submission)."""

    def __init__(self, view: ResultsView) -> None:
        super().__init__()
        self.view = view

    def getChild(self, path: bytes, request):
        if path == b"":
            return self
        return RecordPage(self.view, path.decode("ascii", "replace"))

    def render_GET(self, request):
        def page(built) -> object:
            summary, charts = built
            intro = tags.p(f"NAT checks: {summary['submissions']}. Reported sessions: {summary['sessions']}. "
                           f"Networks (/24 or /48) they came from: {summary['networks']}. The numbers as JSON: ",
                           tags.a("/api/results", href="/api/results"), ".")
            return _document("NAT field test: results", intro, Tag("main")(*[
                tags.section(tags.h2(s.title), XMLString(charts[s.chart_id]).load(),
                             _table(s.headers, s.rows, f"table-{s.chart_id}"), id=s.chart_id)
                for s in sections(summary)]))

        return _html(request, self.view.charts().addCallback(page))


class RecordPage(resource.Resource):
    """One submission as a page: what was found, never where from."""

    isLeaf = True

    def __init__(self, view: ResultsView, record_id: str) -> None:
        super().__init__()
        self.view = view
        self.record_id = record_id

    def render_GET(self, request):
        return _html(request, Deferred.fromCoroutine(self._page(request)))

    async def _page(self, request):
        record = await self.view.store.get(self.record_id) if _ID.fullmatch(self.record_id) else None
        if record is None:
            request.setResponseCode(404)
            return _document("No such result", tags.p("There is no result with this link."),
                             tags.p(tags.a("All results", href="/results")))
        when = datetime.datetime.fromtimestamp(record["received"], datetime.timezone.utc).strftime("%Y-%m-%d")
        body = [tags.p(f"Received {when}. ", tags.a("All results", href="/results"), " · ",
                       tags.a("JSON", href=f"/api/results/{record['id']}")),
                _table(("finding", "value"), _record_rows(record), "record")]
        if record["kind"] == "outcome":
            body.append(_table(("technique", "outcome", "ms"), [
                (a["technique"], a["outcome"], round(a["duration_ms"])) for a in record["attempts"]], "attempts"))
        return _document(f"Result {record['id']}", *body)


def _word(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _record_rows(record: dict) -> list[tuple]:
    if record["kind"] == "outcome":
        return [("this side's NAT", _word(record["local"].get("nat_type"))),
                ("other side's NAT", _word(record["remote"].get("nat_type"))),
                ("path", _word(record["path"]))]
    rows = [("NAT type", _word(record["nat_type"])), ("UDP blocked", _word(record["udp_blocked"])),
            ("NAT present", _word(record["nat_present"])), ("mapping", _word(record["mapping"])),
            ("filtering", _word(record["filtering"])), ("port preservation", _word(record["port_preservation"])),
            ("port allocation", _word(record["port_allocation"])), ("port prediction",
                                                                    _word(record["port_prediction"])),
            ("hairpinning", _word(record["hairpinning"])),
            ("UDP binding lifetime (s)", _word(record["binding_lifetime_seconds"])),
            ("TCP mapping", _word(record["tcp_mapping"])), ("ALG", _word(record["alg"]))]
    rows += [(GATEWAY_NAMES.get(name, name), "answered" if ok else "no answer")
             for name, ok in sorted((record["gateways"] or {}).items())]
    rows += [(name, value) for name, value in record["form"].items()]
    return rows


class ResultsApi(resource.Resource):
    """GET /api/results[/ID] as JSON; POST /api/results takes a submission."""

    def __init__(self, view: ResultsView, clock) -> None:
        super().__init__()
        self.view = view
        self.clock = clock
        self.limiter = RateLimiter(SUBMIT_BURST, SUBMIT_PER_SECOND)

    def getChild(self, path: bytes, request):
        if path == b"":
            return self
        return RecordApi(self.view, path.decode("ascii", "replace"))

    def render_GET(self, request) -> int:
        return _json_later(request, self.view.summary().addCallback(lambda summary: (200, summary)))

    def render_POST(self, request) -> int:
        return _json_later(request, Deferred.fromCoroutine(self._take(request)))

    async def _take(self, request) -> tuple[int, dict]:
        network = network_of(request.getClientAddress().host)
        if not self.limiter.allow(network, self.clock.seconds()):
            request.setHeader(b"retry-after", str(round(1 / SUBMIT_PER_SECOND)).encode())
            return 429, {"error": "too many submissions from your network; try again later"}
        try:
            submission = parse_submission(request.content.read(MAX_SUBMISSION_BYTES + 1))
        except SubmissionError as e:
            return 400, {"error": str(e)}
        record_id = await self.view.store.add(record_of(submission), network, self.clock.seconds())
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        log.info("field-test {kind} submission {id} from {network}", kind=submission["kind"], id=record_id,
                 network=network)
        return 201, {"id": record_id, "link": f"{scheme}://{host}/results/{record_id}"}


class RecordApi(resource.Resource):
    isLeaf = True

    def __init__(self, view: ResultsView, record_id: str) -> None:
        super().__init__()
        self.view = view
        self.record_id = record_id

    def render_GET(self, request) -> int:
        if not _ID.fullmatch(self.record_id):
            return _json_later(request, succeed((404, {"error": "no such result"})))
        found = self.view.store.get(self.record_id)
        return _json_later(request, found.addCallback(
            lambda record: (404, {"error": "no such result"}) if record is None else (200, record)))


def add_results(root: resource.Resource, view: ResultsView, clock) -> None:
    """Put /results and /api/results under root."""
    root.putChild(b"results", ResultsPage(view))
    api = resource.Resource()
    api.putChild(b"results", ResultsApi(view, clock))
    root.putChild(b"api", api)
