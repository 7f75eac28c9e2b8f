"""One view of all relay workers, served by the first (``twistd relay --workers N``).

Workers 1..N-1 serve their metrics, health and admin calls on a private
unix socket in ``STATE_DIR/run/`` (mode 0600); the first worker serves the
public ``--metrics`` port and answers there for all of them: ``/metrics``
sums every worker's counters and gauges, ``/healthz`` and ``/readyz`` are
200 only when every worker says so, and the admin listings and calls cover
every worker (an allocation id starts with its worker's index).
"""

import json
from pathlib import Path

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from rendezvous.node.admin import LocalView, page

TIMEOUT_SECONDS = 5


def socket_path(state_dir: Path, supervisor_pid: int, index: int, kind: str = "http") -> Path:
    """Where worker index of the relay started by supervisor_pid listens (kind: http or fd)."""
    return Path(state_dir) / "run" / f"relay-{supervisor_pid}-{index}.{kind}.sock"


def worker_of(item_id: str) -> int | None:
    """The worker index an allocation id starts with."""
    prefix, sep, _ = item_id.partition("-")
    return int(prefix) if sep and prefix.isdigit() else None


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    def __init__(self, reactor, paths: dict[bytes, Path]) -> None:
        self.reactor = reactor
        self.paths = paths

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self.reactor, str(self.paths[uri.host]), timeout=TIMEOUT_SECONDS)


class WorkerFleet:
    """Asks workers 1..N-1 over their unix sockets and merges their answers with ours."""

    def __init__(self, reactor, local: LocalView, paths: dict[int, Path], token: str) -> None:
        self.reactor = reactor
        self.local = local
        self.indexes = sorted(paths)
        self.token = token
        hosts = {f"worker{i}".encode(): path for i, path in paths.items()}
        self.agent = Agent.usingEndpointFactory(reactor, _UnixEndpoints(reactor, hosts))

    def _call(self, index: int, path: str, method: bytes = b"GET") -> defer.Deferred:
        """Fires with (status, body bytes); a worker that does not answer in time fails it."""
        headers = Headers({b"authorization": [f"Bearer {self.token}".encode()]})
        d = self.agent.request(method, f"http://worker{index}{path}".encode(), headers)
        d.addCallback(lambda response: readBody(response).addCallback(lambda body: (response.code, body)))
        d.addTimeout(TIMEOUT_SECONDS, self.reactor)
        return d

    def _json(self, index: int, path: str) -> defer.Deferred:
        def decode(answer):
            code, body = answer
            if code != 200:
                raise ValueError(f"worker {index} answered {code}")
            return json.loads(body)

        return self._call(index, path).addCallback(decode)

    def _all(self, path: str) -> defer.Deferred:
        """Fires with {index: decoded JSON or None for a worker that failed}."""
        calls = [self._json(i, path).addErrback(lambda _: None) for i in self.indexes]
        return defer.gatherResults(calls).addCallback(lambda results: dict(zip(self.indexes, results)))

    # -- metrics and health -------------------------------------------------

    def combine(self, samples: dict) -> defer.Deferred:
        """Our samples plus every answering worker's, summed per series."""
        def add(answers) -> dict:
            ours = [(name, labels, value) for name, values in samples.items() for labels, value in values]
            totals: dict[tuple, float] = {}
            for answer in [ours, *answers.values()]:
                for name, labels, value in answer or ():
                    key = (name, tuple(sorted(labels.items())))
                    totals[key] = totals.get(key, 0) + value
            combined: dict[str, list] = {}
            for (name, labels), value in totals.items():
                combined.setdefault(name, []).append((dict(labels), value))
            combined["txr_workers_answering"] = [({}, 1 + sum(a is not None for a in answers.values()))]
            return combined

        return self._all("/admin/samples").addCallback(add)

    def health(self, kind: str):
        """A callable asking every worker's /healthz or /readyz: fires with a problem text or None."""
        def check() -> defer.Deferred:
            def one(index):
                return self._call(index, f"/{kind}").addCallbacks(
                    lambda answer: None if answer[0] == 200 else f"worker {index}: {answer[1].decode().strip()}",
                    lambda failure: f"worker {index}: not answering")

            d = defer.gatherResults([one(i) for i in self.indexes])
            return d.addCallback(lambda problems: "; ".join(p for p in problems if p) or None)

        return check

    # -- the admin view -----------------------------------------------------

    def allocations(self, offset: int, limit: int) -> defer.Deferred:
        """One page over all workers, in worker order (ours first)."""
        first = self.local.allocations(0, 0)

        def pages(totals: dict) -> defer.Deferred:
            wanted, skip, left = [], offset, limit
            for index, total in [(0, first["total"])] + [(i, (totals[i] or {}).get("total", 0))
                                                         for i in self.indexes]:
                take = max(0, min(left, total - skip))
                if take:
                    wanted.append((index, skip, take))
                skip, left = max(0, skip - total), left - take
            calls = [
                defer.succeed(self.local.allocations(start, count)) if index == 0
                else self._json(index, f"/admin/allocations?offset={start}&limit={count}")
                for index, start, count in wanted
            ]
            grand = first["total"] + sum((t or {}).get("total", 0) for t in totals.values())
            return defer.gatherResults(calls).addCallback(
                lambda parts: {"total": grand, "offset": offset, "limit": limit,
                               "items": [item for part in parts for item in part["items"]],
                               "workers_answering": 1 + sum(t is not None for t in totals.values())})

        return self._all("/admin/allocations?limit=0").addCallback(pages)

    def sessions(self, offset: int, limit: int) -> dict:
        return page([], offset, limit)  # relays have no signaling sessions

    def end_allocation(self, allocation_id: str):
        index = worker_of(allocation_id)
        if index is None or index == 0:
            return self.local.end_allocation(allocation_id)
        if index not in self.indexes:
            return False
        return self._call(index, f"/admin/allocations/{allocation_id}", b"DELETE").addCallback(
            lambda answer: answer[0] == 200)

    def end_session(self, session_id: str) -> bool:
        return False
