"""The views of ``/results``: counts over every stored record (docs/NAT_CHECK.md, the field test).

Pure functions of the records, so the page, its charts and ``/api/results``
show the same numbers. Each count view is a list of ``[label, count]``,
largest first; "unknown" counts what a check could not determine.
"""

from __future__ import annotations

from collections import Counter, defaultdict

UNKNOWN = "unknown"
BINDING_BINS_SECONDS = (10, 30, 60, 120, 300)
SUCCEEDED = ("succeeded", "selected")
RANKED = 20


def summarize(records: list[dict], networks: int) -> dict:
    """Every view of the results page, JSON-ready."""
    checks = [r for r in records if r["kind"] == "nat-check"]
    sessions = [r for r in records if r["kind"] == "outcome"]
    return {
        "submissions": len(checks),
        "sessions": len(sessions),
        "networks": networks,
        "nat_types": _counts(r["nat_type"] for r in checks),
        "mapping": _counts(r["mapping"] for r in checks),
        "filtering": _counts(r["filtering"] for r in checks),
        "port_preservation": _counts(_yes_no(r["port_preservation"]) for r in checks),
        "port_allocation": _counts(r["port_allocation"] for r in checks),
        "port_prediction": _counts(r["port_prediction"] for r in checks),
        "hairpinning": _counts(_yes_no(r["hairpinning"]) for r in checks),
        "alg": _counts(_yes_no(r["alg"]) for r in checks),
        "gateways": _gateways(checks),
        "binding_timeouts": _binding_histogram(checks),
        "techniques": _techniques(sessions),
        "direct_by_pair": _direct_by_pair(sessions),
        "routers": _ranking(checks, "router"),
        "providers": _ranking(checks, "isp"),
    }


def _counts(values) -> list[list]:
    counter = Counter(UNKNOWN if v is None else v for v in values)
    return [[label, n] for label, n in sorted(counter.items(), key=lambda item: (-item[1], item[0]))]


def _yes_no(flag: bool | None) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


def _gateways(checks: list[dict]) -> list[list]:
    """[protocol, asked, answered] for each port-mapping protocol (UPnP IGD, NAT-PMP, PCP)."""
    asked, answered = Counter(), Counter()
    for record in checks:
        for protocol, ok in (record["gateways"] or {}).items():
            asked[protocol] += 1
            answered[protocol] += bool(ok)
    return [[protocol, asked[protocol], answered[protocol]] for protocol in sorted(asked)]


def binding_bin(seconds: float) -> str:
    """The histogram bin a binding lifetime falls in."""
    low = 0
    for high in BINDING_BINS_SECONDS:
        if seconds < high:
            return f"{low}-{high} s"
        low = high
    return f"≥{low} s"


def _binding_histogram(checks: list[dict]) -> list[list]:
    counter = Counter(binding_bin(r["binding_lifetime_seconds"]) for r in checks
                      if r["binding_lifetime_seconds"] is not None)
    labels = [binding_bin(edge - 1) for edge in BINDING_BINS_SECONDS] + [binding_bin(BINDING_BINS_SECONDS[-1])]
    return [[label, counter[label]] for label in labels]


def _techniques(sessions: list[dict]) -> list[list]:
    """[technique, tried, succeeded] over every attempt of every reported session."""
    tried, worked = Counter(), Counter()
    for session in sessions:
        for attempt in session["attempts"]:
            if attempt["outcome"] == "skipped":
                continue
            tried[attempt["technique"]] += 1
            worked[attempt["technique"]] += attempt["outcome"] in SUCCEEDED
    return [[t, tried[t], worked[t]] for t in sorted(tried, key=lambda t: (-tried[t], t))]


def is_direct(path: str | None) -> bool:
    """Whether a session's winning path avoided the relay."""
    return path is not None and not path.startswith("turn-")


def _direct_by_pair(sessions: list[dict]) -> list[list]:
    """[NAT kind, NAT kind, sessions, direct] per unordered pair of the two sides' NAT kinds: the
    NAT type where known, else the mapping behaviour (what connect() measures)."""
    total, direct = Counter(), Counter()
    for session in sessions:
        pair = tuple(sorted(_kind(session[side]) for side in ("local", "remote")))
        total[pair] += 1
        direct[pair] += is_direct(session["path"])
    return [[*pair, total[pair], direct[pair]] for pair in sorted(total, key=lambda p: (-total[p], p))]


def _kind(side: dict) -> str:
    return side.get("nat_type") or side.get("mapping") or UNKNOWN


def _ranking(checks: list[dict], field: str) -> list[list]:
    """[name, submissions, endpoint-independent mapping, hairpinning] for the most named form values.

    Names are grouped case-insensitively and shown as most often spelled.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in checks:
        name = record["form"].get(field)
        if name:
            groups[name.casefold()].append(record)
    rows = []
    for members in groups.values():
        spelling = Counter(r["form"][field] for r in members).most_common(1)[0][0]
        rows.append([spelling, len(members),
                     sum(r["mapping"] == "endpoint-independent" for r in members),
                     sum(r["hairpinning"] is True for r in members)])
    rows.sort(key=lambda row: (-row[1], row[0].casefold()))
    return rows[:RANKED]
