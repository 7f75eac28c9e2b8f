"""Prometheus metrics and health endpoints (``--metrics``, default 127.0.0.1:9641).

``/metrics`` serves the Prometheus text format (version 0.0.4): counters and
gauges of the STUN, TURN and signaling cores. Labels are bounded (an error
code, a direction); nothing is labelled per user or per address, so the
series count cannot grow with traffic. ``/healthz`` says the process runs;
``/readyz`` says it accepts new work (it turns 503 while draining).
"""

from twisted.web import resource, server

_HELP = {
    "txr_stun_requests_total": ("counter", "STUN Binding requests received"),
    "txr_stun_answered_total": ("counter", "STUN Binding success responses sent"),
    "txr_stun_errors_total": ("counter", "STUN error responses sent"),
    "txr_malformed_total": ("counter", "malformed datagrams and streams dropped"),
    "txr_turn_requests_total": ("counter", "TURN requests received"),
    "txr_turn_errors_total": ("counter", "TURN error responses sent, by code"),
    "txr_turn_unauthorized_total": ("counter", "401 challenges sent"),
    "txr_turn_unauthorized_limited_total": ("counter", "401 challenges withheld by the per-source rate limit"),
    "txr_turn_allocations_created_total": ("counter", "allocations created"),
    "txr_turn_allocations": ("gauge", "allocations now"),
    "txr_turn_permissions": ("gauge", "permissions now"),
    "txr_turn_channels": ("gauge", "channel bindings now"),
    "txr_relayed_packets_total": ("counter", "relayed packets, by direction (to_peer, to_client)"),
    "txr_relayed_bytes_total": ("counter", "relayed payload bytes, by direction"),
    "txr_signaling_sessions": ("gauge", "logged-in signaling sessions"),
    "txr_signaling_logins_total": ("counter", "successful signaling logins"),
    "txr_workers_answering": ("gauge", "relay worker processes whose figures are included"),
    "txr_udp_receive_drops_total": ("counter", "datagrams the kernel dropped on our UDP sockets (receive queue full)"),
}


def collect(binding=None, turn=None, signaling=None, udp_drops=None) -> dict[str, list[tuple[dict, float]]]:
    """Samples by metric name: a list of (labels, value); udp_drops() counts kernel queue drops."""
    samples: dict[str, list[tuple[dict, float]]] = {}

    def put(name: str, value: float, **labels) -> None:
        samples.setdefault(name, []).append((labels, value))

    if binding is not None:
        c = binding.counters
        put("txr_stun_requests_total", c["requests"])
        put("txr_stun_answered_total", c["answered"])
        put("txr_stun_errors_total", c["errors"])
        put("txr_malformed_total", c["malformed"] + c["malformed_streams"])
    if turn is not None:
        c = turn.counters
        put("txr_turn_requests_total", c["requests"])
        for key, value in sorted(c.items()):
            if key.startswith("error_"):
                put("txr_turn_errors_total", value, code=key[6:])
        put("txr_turn_unauthorized_total", c["unauthorized"])
        put("txr_turn_unauthorized_limited_total", c["unauthorized_limited"])
        put("txr_turn_allocations_created_total", c["allocations"])
        allocations = list(turn.allocations.values())
        put("txr_turn_allocations", len(allocations))
        put("txr_turn_permissions", sum(a.permitted_hosts() for a in allocations))
        put("txr_turn_channels", sum(len(a.channels) for a in allocations))
        out_packets, out_bytes, in_packets, in_bytes = turn.relayed_totals()
        put("txr_relayed_packets_total", out_packets, direction="to_peer")
        put("txr_relayed_packets_total", in_packets, direction="to_client")
        put("txr_relayed_bytes_total", out_bytes, direction="to_peer")
        put("txr_relayed_bytes_total", in_bytes, direction="to_client")
    if signaling is not None:
        put("txr_signaling_sessions", len(signaling.sessions))
        put("txr_signaling_logins_total", signaling.logins)
    if udp_drops is not None:
        put("txr_udp_receive_drops_total", udp_drops())
    return samples


def render(samples: dict[str, list[tuple[dict, float]]]) -> bytes:
    """The Prometheus text exposition format."""
    lines = []
    for name, values in samples.items():
        kind, text = _HELP[name]
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in values:
            label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")
    return ("\n".join(lines) + "\n").encode("utf-8")


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, samples, combine=None) -> None:
        super().__init__()
        self.samples = samples
        self.combine = combine  # adds other workers' samples (a Deferred), or None

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        if self.combine is None:
            return render(self.samples())
        return answer_later(request, self.combine(self.samples()).addCallback(render))


class _Health(resource.Resource):
    isLeaf = True

    def __init__(self, ready=None, others=None) -> None:
        super().__init__()
        self.ready = ready
        self.others = others  # asks the other workers (a Deferred: a problem text, or None)

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.ready is not None and not self.ready():
            request.setResponseCode(503)
            return b"draining\n"
        if self.others is None:
            return b"ok\n"

        def answer(problem) -> bytes:
            if problem:
                request.setResponseCode(503)
                return f"{problem}\n".encode()
            return b"ok\n"

        return answer_later(request, self.others().addCallback(answer))


def answer_later(request, d):
    """Write d's bytes as the response when it fires (unless the client has gone)."""
    gone = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(body: bytes) -> None:
        if not gone:
            request.write(body)
            request.finish()

    d.addCallback(write)
    return server.NOT_DONE_YET


def metrics_site(binding=None, turn=None, signaling=None, ready=None, admin=None, workers=None,
                 udp_drops=None) -> server.Site:
    """/metrics, /healthz, /readyz and, given an admin resource, /admin/.

    With workers (a ``rendezvous.node.worker_view.WorkerFleet``), /metrics sums
    every worker's figures and the health endpoints ask every worker.
    """
    def samples():
        return collect(binding, turn, signaling, udp_drops)

    root = resource.Resource()
    root.putChild(b"metrics", _Metrics(samples, workers.combine if workers else None))
    root.putChild(b"healthz", _Health(others=workers.health("healthz") if workers else None))
    root.putChild(b"readyz", _Health(ready, workers.health("readyz") if workers else None))
    if admin is not None:
        root.putChild(b"admin", admin(samples))
    site = server.Site(root)
    site.noisy = False
    return site
