"""connect() between every pair of NAT kinds in one lab: direct where physics allows, relay otherwise.

One lab holds two sites of each kind and a super node with its TURN relay
and firewall ports; each pair runs a listener in one client namespace and a
connector in the other (tests/natlab/connect_client.py).
"""

import itertools
import json
import os
import subprocess
import sys

import pytest

from rendezvous.accounts import AccountStore

from .lab import ROOT, SERVER_IP, SERVER_PORT, Lab, LabError, unavailable_reason

KINDS = ("eim-eif", "eim-adf", "eim-apdf", "apdm-random", "udp-blocked")
WEB_ONLY = "tcp-web-only"
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two sites per kind (and one behind the TCP 80/443 firewall), buddies all, a node with TURN."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path_factory.mktemp("natlab-connect"))
    try:
        lab.build_public()
        sites = {}
        for kind in KINDS:
            sites[kind] = (lab.add_site(kind), lab.add_site(kind))
        sites[WEB_ONLY] = (lab.add_site(WEB_ONLY),)
        names = [site.name.replace("#", "-") for pair in sites.values() for site in pair]
        store = AccountStore(lab.workdir / f"twistd-{SERVER_PORT}-state" / "accounts.sqlite")
        for name in names:
            store.add(name, "pw-" + name, "txrendezvous")
        for a, b in itertools.combinations(names, 2):
            store.request_buddy(a, b)
            store.accept_buddy(b, a)
        store.close()
        lab.start_server(relay=True, web_ports=True)
        lab.kinds = sites
        yield lab
    except LabError as e:
        pytest.fail(f"the NAT lab could not be built: {e}")
    finally:
        lab.close()


def user(site) -> str:
    return site.name.replace("#", "-")


def client(site, mode: str, *extra: str) -> subprocess.Popen:
    web_only = site.kind == WEB_ONLY
    argv = site.exec_argv(sys.executable, "-m", "tests.natlab.connect_client", mode, SERVER_IP,
                          "443" if web_only else str(SERVER_PORT), "tls" if web_only else "tcp",
                          user(site), "pw-" + user(site), *extra)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def run_pair(caller, callee, *options: str) -> tuple[dict, dict]:
    """Listener in callee's namespace, connector in caller's (both with options); their reports."""
    listener = client(callee, "listen", *options)
    try:
        ready = json.loads(listener.stdout.readline() or "{}")
        assert ready.get("ready"), listener.stderr.read() if listener.poll() is not None else ready
        connector = client(caller, "connect", user(callee), *options)
        out, err = connector.communicate(timeout=60)
        mine = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
        line = listener.stdout.readline()
        theirs = json.loads(line) if line.strip() else {}
    finally:
        for process in (listener,):
            if process.poll() is None:
                process.terminate()
            process.wait(10)
    return mine, theirs


def expected(a: str, b: str) -> tuple[str, ...]:
    """The paths a pair may take: direct UDP unless UDP is blocked or both map at random;
    with UDP blocked, TCP hole punching unless one side maps TCP at random too."""
    if "udp-blocked" in (a, b) and "apdm-random" not in (a, b):
        return ("tcp-punch",)  # every other kind maps TCP endpoint-independently (masquerade keeps ports)
    if a == "udp-blocked":
        return ("turn-tcp",)
    if b == "udp-blocked":
        return ("turn-udp",)  # the caller reaches the blocked peer's relayed address over UDP
    if a == b == "apdm-random":
        return ("turn-udp",)
    if "apdm-random" in (a, b):
        return ("udp-direct", "udp-birthday")
    return ("udp-direct",)


@pytest.mark.parametrize("a, b", PAIRS)
def test_connect_pair(lab, a, b):
    """connect() succeeds for the pair, by direct UDP wherever one is physically possible."""
    caller, callee = lab.kinds[a][0], lab.kinds[b][1]
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], json.dumps([mine, theirs])
    assert mine["path"] in expected(a, b), mine
    assert theirs.get("path", "").split("-")[0] == mine["path"].split("-")[0], theirs


def test_tcp_punch_with_udp_off(lab):
    """With direct UDP off, two endpoint-independent NATs connect by TCP hole punching, not the relay."""
    mine, theirs = run_pair(lab.kinds["eim-apdf"][0], lab.kinds["eim-adf"][1], "direct=tcp")
    assert "error" not in mine, mine
    assert mine["path"] == theirs.get("path") == "tcp-punch" and mine["pong"], (mine, theirs)
    assert mine["remote"] == [lab.kinds["eim-adf"][1].wan_ip, theirs["local"][1]], (mine, theirs)


def test_behind_the_web_only_firewall_through_443(lab):
    """Behind a firewall that lets out only TCP 80/443, connect() goes through TURN over TLS on 443."""
    mine, theirs = run_pair(lab.kinds[WEB_ONLY][0], lab.kinds["eim-apdf"][1])
    assert "error" not in mine, mine
    assert mine["path"] == "turn-tls" and mine["pong"], mine
