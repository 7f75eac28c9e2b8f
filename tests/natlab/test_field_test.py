"""The field test behind real NATs: nat-check --submit from lab sites, stored without addresses."""

import ipaddress
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from rendezvous.node.results.view import REBUILD_SECONDS
from rendezvous.peer.nat_check import ADDRESS_AND_PORT_DEPENDENT as APDM
from rendezvous.peer.nat_check import ENDPOINT_INDEPENDENT as EIM

from .connect_client import add_buddies, run_pair, user
from .lab import ENV, MINIUPNPD, ROOT, SERVER_HTTP_PORT, SERVER_IP, SERVER_PORT

pytestmark = pytest.mark.natlab

RESULTS = f"http://{SERVER_IP}:{SERVER_HTTP_PORT}"


def submit_behind(site, *form: str) -> dict:
    """Run nat-check --submit inside a site; the report with its submission link."""
    argv = site.exec_argv(sys.executable, "-m", "rendezvous.cli.main", "nat-check", f"{SERVER_IP}:{SERVER_PORT}",
                          "--json", "--lifetime-max-seconds", "0", "--no-tcp", "--submit", RESULTS, *form)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False, cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fetch(site, path: str) -> dict:
    """GET a JSON path of the node from inside a site (through its NAT)."""
    code = ("import json, sys, urllib.request; "
            "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
    done = subprocess.run(site.exec_argv(sys.executable, "-c", code, f"{RESULTS}{path}"), capture_output=True,
                          text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def views_after(site, ready, seconds: float = 3 * REBUILD_SECONDS) -> dict:
    """/api/results once ready(summary) holds (the views are recounted at most every REBUILD_SECONDS)."""
    deadline = time.monotonic() + seconds
    while not ready(summary := fetch(site, "/api/results")) and time.monotonic() < deadline:
        time.sleep(0.5)
    return summary


def stored_rows(lab) -> list[tuple[str, str]]:
    """(network, body) of every stored result, read from the node's SQLite file."""
    path = lab.workdir / f"twistd-{SERVER_PORT}-state" / "accounts.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT network, body FROM results"))
    finally:
        db.close()


def test_submissions_from_behind_nats(natlab):
    """Checks submitted from a port-restricted cone (with a UPnP gateway) and a symmetric NAT are stored
    with the NAT's /24 only, counted in the views, and shown at their permanent links."""
    if not os.path.exists(MINIUPNPD):
        pytest.skip(f"no {MINIUPNPD} (apt-get install miniupnpd-nftables)")
    cone, symmetric = natlab("eim-apdf", upnp=True), natlab("apdm-random")
    before = fetch(cone, "/api/results")
    first = submit_behind(cone, "--router", "Lab Router", "--isp", "Lab ISP", "--connection", "veth")
    second = submit_behind(symmetric, "--router", "lab router")
    assert first["nat_type"] == "port restricted cone" and second["nat_type"] == "symmetric"

    record = fetch(cone, f"/api/results/{first['submission']['id']}")
    assert record["nat_type"] == "port restricted cone" and record["mapping"] == "endpoint-independent"
    assert record["gateways"] == {"igd": True, "natpmp": True, "pcp": True}
    assert record["form"] == {"router": "Lab Router", "isp": "Lab ISP", "connection": "veth"}

    after = views_after(symmetric, lambda found: found["submissions"] >= before["submissions"] + 2)
    counts = dict(map(tuple, after["nat_types"]))
    old = dict(map(tuple, before["nat_types"]))
    assert counts["symmetric"] == old.get("symmetric", 0) + 1
    assert counts["port restricted cone"] == old.get("port restricted cone", 0) + 1
    assert after["routers"][0][:2] == ["Lab Router", before_count(before, "Lab Router") + 2]

    rows = stored_rows(natlab.lab)
    networks = {network for network, _ in rows}
    for site in (cone, symmetric):
        assert str(ipaddress.ip_network(f"{site.wan_ip}/24", strict=False)) in networks
        for network, body in rows:
            assert site.wan_ip not in body and site.client_ip not in body and site.wan_ip != network


def before_count(summary: dict, name: str) -> int:
    return next((n for router, n, *_ in summary["routers"] if router.casefold() == name.casefold()), 0)


def test_connect_outcomes_from_behind_nats(natlab):
    """connect(report_outcome=True) between a cone and a random-mapping NAT, and between two random-mapping
    NATs, reports what was tried and the path that won; the views count one session per connect."""
    # hop=True: a second site of the kind (the factory keeps one per kind and options), one router further out.
    cone, random_a, random_b = natlab("eim-eif"), natlab("apdm-random"), natlab("apdm-random", hop=True)
    add_buddies(natlab.lab, [user(site) for site in (cone, random_a, random_b)])
    before = fetch(cone, "/api/results")
    reports = []
    for caller, callee in ((cone, random_a), (random_a, random_b)):
        mine, theirs = run_pair(caller, callee, "report=1")
        assert mine.get("pong") and mine.get("reported"), mine
        record = fetch(cone, f"/api/results/{mine['reported']['id']}")
        assert record["path"] == mine["path"]
        assert [a["technique"] for a in record["attempts"]] == [a[0] for a in mine["attempts"]]
        reports.append((record, mine))
    (direct, _), (relayed, _) = reports
    # Each side's mapping: this side's from its gathering, the peer's from its presence during the checks
    # (the listener may have logged out by the time the report goes).
    assert (direct["local"]["mapping"], direct["remote"]["mapping"]) == (EIM, APDM), direct
    assert (relayed["local"]["mapping"], relayed["remote"]["mapping"]) == (APDM, APDM), relayed
    assert relayed["path"] == "turn-udp"
    after = views_after(cone, lambda found: found["sessions"] >= before["sessions"] + 2)
    assert after["sessions"] == before["sessions"] + 2
    pairs = {(a, b): (n, d) for a, b, n, d in after["direct_by_pair"]}
    old = {(a, b): (n, d) for a, b, n, d in before["direct_by_pair"]}
    relayed_pair = tuple(sorted(side.get("nat_type") or side.get("mapping") or "unknown"
                                for side in (relayed["local"], relayed["remote"])))
    assert pairs[relayed_pair][0] == old.get(relayed_pair, (0, 0))[0] + 1
    assert pairs[relayed_pair][1] == old.get(relayed_pair, (0, 0))[1]  # the relay is not direct
