"""connect() between every pair of NAT kinds in one lab: direct where physics allows, relay otherwise.

One lab holds two sites of each kind and a super node with its TURN relay
and firewall ports; each pair runs a listener in one client namespace and a
connector in the other (tests/natlab/connect_client.py).
"""

import itertools
import json
import shutil
import subprocess
import sys
import time

import pytest

from .connect_client import add_buddies, client, run_pair, user
from .lab import ENV, ROOT, SERVER_IP, SERVER_PORT, Lab, LabError, run, unavailable_reason

KINDS = ("eim-eif", "eim-adf", "eim-apdf", "apdm-random", "udp-blocked")
WEB_ONLY = "tcp-web-only"
UPNP = "eim-apdf+upnp"
CGN = "eim-apdf+cgn-eim-apdf"  # a home NAT behind a carrier NAT (100.64.0.0/10)
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two sites per kind (and behind the TCP 80/443 firewall), one behind a carrier NAT, one behind a
    UPnP gateway; buddies all; a node with TURN."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path_factory.mktemp("natlab-connect"))
    try:
        lab.build_public()
        sites = {}
        for kind in KINDS:
            sites[kind] = (lab.add_site(kind), lab.add_site(kind))
        sites[WEB_ONLY] = (lab.add_site(WEB_ONLY), lab.add_site(WEB_ONLY))
        sites[CGN] = (lab.add_site("eim-apdf", carrier="eim-apdf"),)
        add_buddies(lab, [user(site) for pair in sites.values() for site in pair] + [UPNP.replace("+", "-")])
        lab.start_server(relay=True, web_ports=True)
        sites[UPNP] = (lab.add_site("eim-apdf", upnp=True),)  # miniupnpd asks the node for its address
        lab.kinds = sites
        yield lab
    except LabError as e:
        pytest.fail(f"the NAT lab could not be built: {e}")
    finally:
        lab.close()


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
    assert mine["path"] in expected(a, b), json.dumps([mine, theirs])
    assert theirs.get("path", "").split("-")[0] == mine["path"].split("-")[0], theirs
    if mine["path"] == "tcp-punch":
        # Direct UDP cannot work with UDP blocked: the stream is taken without waiting
        # relay_wait_seconds (4 s) for it.
        [selected] = [duration for technique, duration, outcome, _ in mine["attempts"] if outcome == "selected"]
        assert selected < 4000, mine


@pytest.mark.parametrize("b", KINDS)
def test_connect_from_behind_a_carrier_nat(lab, b):
    """Behind a home NAT and a carrier NAT (both endpoint-independent mapping), paths are as for one such NAT."""
    mine, theirs = run_pair(lab.kinds[CGN][0], lab.kinds[b][1])
    assert "error" not in mine, mine
    assert mine["pong"], json.dumps([mine, theirs])
    assert mine["path"] in expected("eim-apdf", b), mine


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


def test_both_behind_web_only_firewalls(lab):
    """Two clients that can each reach only TLS on 443 connect through two allocations on the node's relay."""
    mine, theirs = run_pair(lab.kinds[WEB_ONLY][0], lab.kinds[WEB_ONLY][1])
    assert "error" not in mine, mine
    assert mine["path"] == theirs.get("path") == "turn-tls" and mine["pong"], json.dumps([mine, theirs])


def test_upnp_mapping_reaches_a_random_mapping_nat(lab):
    """Behind a UPnP gateway, connect() maps its port and a random-mapping peer comes in through it; unmapped after."""
    site = lab.kinds[UPNP][0]
    mine, theirs = run_pair(site, lab.kinds["apdm-random"][1])
    assert "error" not in mine, mine
    assert mine["path"] == theirs.get("path") == "udp-upnp" and mine["pong"], json.dumps([mine, theirs])
    assert theirs["remote"][0] == site.wan_ip, theirs
    assert ["upnp", "succeeded"] == [a[0] for a in mine["attempts"] if a[0] == "upnp"] + [
        a[2] for a in mine["attempts"] if a[0] == "upnp"], mine
    rules = subprocess.run(["ip", "netns", "exec", site.routers[0], "nft", "list", "chain", "inet", "filter",
                            "prerouting_miniupnpd"], capture_output=True, text=True, check=True).stdout
    assert "dnat" not in rules, rules  # the connection's close removed the mapping



@pytest.mark.parametrize("again", [False, True])
def test_a_stream_selected_late_carries_data_both_ways(lab, again):
    """With UDP between two endpoint-independent NATs dropped, the punched stream is selected only
    once relay_wait_seconds pass without a direct UDP pair: the peer learns it (its path is tcp-punch
    too), also when the connector closes the session in the tick it moved, and a stream opened after
    the move is answered over it."""
    caller, callee = lab.kinds["eim-apdf"][0], lab.kinds["eim-apdf"][1]
    router = caller.routers[0]
    added = run("ip", "netns", "exec", router, "nft", "--echo", "--handle", "insert", "rule", "ip", "natlab",
                "forward", "ip", "daddr", callee.wan_ip, "meta", "l4proto", "udp", "drop")
    handle = added.rsplit("# handle", 1)[1].split()[0]
    try:
        mine, theirs = run_pair(caller, callee, "relay_wait=1.5", *(("again=1",) if again else ()))
    finally:
        run("ip", "netns", "exec", router, "nft", "delete", "rule", "ip", "natlab", "forward", "handle", handle)
    assert "error" not in mine, mine
    assert mine["first_path"] == "turn-udp" and mine["path"] == "tcp-punch" and mine["pong"], mine
    [selected] = [duration for technique, duration, outcome, _ in mine["attempts"] if outcome == "selected"]
    assert selected >= 1500, mine  # late: after relay_wait_seconds, not as soon as the stream was proven
    assert theirs.get("path") == "tcp-punch", json.dumps([mine, theirs])
    if again:
        assert mine["pong_again"], mine


@pytest.mark.parametrize("a", ["eim-apdf", "udp-blocked"])
def test_a_listener_behind_blocked_udp_does_not_wait_for_stun_again(lab, a):
    """A listener behind a UDP-blocking NAT learned at listen() that STUN over UDP goes unanswered: it
    answers a connect without waiting for that request again, and TCP hole punching still meets."""
    mine, theirs = run_pair(lab.kinds[a][0], lab.kinds["udp-blocked"][1])
    assert "error" not in mine, mine
    assert mine["path"] == theirs.get("path") == "tcp-punch" and mine["pong"], json.dumps([mine, theirs])
    assert ("srflx", "skipped") in [(technique, outcome) for technique, _, outcome, _ in theirs["attempts"]], theirs


@pytest.mark.parametrize("path, options, protocol, reason", [
    ("udp-direct", (), "udp", "consent expired: no answer to a consent check for 3 s (RFC 7675)"),
    ("tcp-punch", ("direct=tcp", "relay="), "tcp", "the TCP connection closed"),
])
def test_a_cut_path_is_noticed(lab, path, options, protocol, reason):
    """Connected through two NATs, then the callee's router drops all UDP (or TCP): both sides report
    the path lost about consent_timeout_seconds later (RFC 7675 consent checks; TCP keepalives on the
    punched stream)."""
    caller, callee = lab.kinds["eim-eif"][0], lab.kinds["eim-eif"][1]
    router = callee.routers[0]
    watch = ("consent=3", "watch=20", *options)
    listener = client(callee, "listen", *watch)
    connector = None
    handle = None
    try:
        assert json.loads(listener.stdout.readline() or "{}").get("ready"), listener.stderr.read()
        connector = client(caller, "connect", user(callee), *watch)
        mine = json.loads(connector.stdout.readline() or "{}")
        assert mine.get("path") == path and mine["pong"], (mine, connector.stderr.read())
        assert json.loads(listener.stdout.readline()).get("path") == path
        added = run("ip", "netns", "exec", router, "nft", "--echo", "--handle", "insert", "rule", "ip", "natlab",
                    "forward", "meta", "l4proto", protocol, "drop")
        handle = added.rsplit("# handle", 1)[1].split()[0]
        cut = time.monotonic()
        lost_mine = json.loads(connector.stdout.readline() or "{}")
        after = time.monotonic() - cut
        lost_theirs = json.loads(listener.stdout.readline() or "{}")
        assert lost_mine.get("lost") == reason and lost_theirs.get("lost") == reason, (lost_mine, lost_theirs)
        assert after < 3 + 1.5, after  # the timeout, plus at most one check interval and start-up
    finally:
        if handle is not None:
            run("ip", "netns", "exec", router, "nft", "delete", "rule", "ip", "natlab", "forward", "handle", handle)
        for process in (connector, listener):
            if process is not None:
                if process.poll() is None:
                    process.terminate()
                process.wait(10)


def stream_client(site, mode: str, *extra: str) -> subprocess.Popen:
    """tests/natlab/stream_client.py run in the site's namespace."""
    argv = site.exec_argv(sys.executable, "-m", "tests.natlab.stream_client", mode, SERVER_IP, str(SERVER_PORT),
                          "tcp", user(site), "pw-" + user(site), *extra)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)


def test_a_session_moves_relay_direct_relay_without_losing_a_byte(lab):
    """While the callee's router drops the caller's UDP, the session starts on the relay and streams;
    once the drop is lifted the checks confirm the direct pair and the session moves there; when the drop
    comes back, consent expires and the caller restarts ICE, which finds the relay again (and then the
    punched TCP stream, which the drop leaves open). Every chunk of the stream arrives once, in order,
    intact."""
    caller, callee = lab.kinds["eim-eif"]
    router = callee.routers[0]

    def drop_caller_udp() -> str:
        added = run("ip", "netns", "exec", router, "nft", "--echo", "--handle", "insert", "rule", "ip", "natlab",
                    "forward", "ip", "saddr", caller.wan_ip, "meta", "l4proto", "udp", "drop")
        return added.rsplit("# handle", 1)[1].split()[0]

    def lift(handle: str) -> None:
        run("ip", "netns", "exec", router, "nft", "delete", "rule", "ip", "natlab", "forward", "handle", handle)

    options = ("relay_wait=10", "consent=2")
    handle = drop_caller_udp()
    listener = stream_client(callee, "listen", *options)
    connector = None
    try:
        assert json.loads(listener.stdout.readline() or "{}").get("ready"), listener.stderr.read()
        connector = stream_client(caller, "connect", user(callee), "12", *options)
        up = json.loads(connector.stdout.readline() or "{}")
        assert up.get("path", "").startswith("turn-"), (up, connector.stderr.read())
        lift(handle)
        handle = None
        assert json.loads(connector.stdout.readline() or "{}").get("moved") == "udp-direct"
        handle = drop_caller_udp()
        back = json.loads(connector.stdout.readline() or "{}")
        assert back.get("moved", "").startswith("turn-"), back
        out, err = connector.communicate(timeout=60)
        final = json.loads(out.strip().splitlines()[-1])
        assert final["paths"][0].startswith("turn-") and final["paths"][1] == "udp-direct", (final, err[-2000:])
        # the restart starts on the relay again; TCP still passes, so it may then move to the punched stream
        # (and stays there: the released relay's silence no longer counts against it)
        assert final["paths"][2].startswith("turn-") and final["paths"][3:] in ([], ["tcp-punch"]), final
        assert final["summary"] == {"chunks": final["sent"], "first_bad": None}, final
    finally:
        if handle is not None:
            lift(handle)
        for process in (connector, listener):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)


TAMPERING_PORT = 3490


@pytest.fixture(scope="module")
def tampering_node(lab):
    """A second node in the lab that swaps the fingerprints it passes on (tests/tampering_node.py), with
    the same accounts; (port, the attacker's fingerprint)."""
    from rendezvous.peer.identity import Identity

    attacker = Identity.generate("mallory").fingerprint
    state = lab.workdir / f"twistd-{TAMPERING_PORT}-state"
    state.mkdir()
    shutil.copy(lab.workdir / f"twistd-{SERVER_PORT}-state" / "accounts.sqlite", state / "accounts.sqlite")
    lab.start_server(port=TAMPERING_PORT, alternate=False, relay=True, echo=False,
                     launcher=[sys.executable, "-m", "tests.tampering_node", attacker])
    return TAMPERING_PORT, attacker


def pair_via(caller, callee, port: int, caller_state=None, callee_state=None) -> dict:
    """connect_client listen/connect between two sites through the node on ``port`` (each side keeping its
    keys and pins in its state directory, if given); the caller's report."""
    def start(site, state, *argv: str) -> subprocess.Popen:
        command = site.exec_argv(sys.executable, "-m", "tests.natlab.connect_client", argv[0], SERVER_IP, str(port),
                                 "tcp", user(site), "pw-" + user(site), *argv[1:],
                                 *([f"state={state}"] if state else []))
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=ENV)

    listener = start(callee, callee_state, "listen")
    try:
        assert json.loads(listener.stdout.readline() or "{}").get("ready"), listener.stderr.read()
        out, err = start(caller, caller_state, "connect", user(callee)).communicate(timeout=60)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
    finally:
        listener.terminate()
        listener.wait(10)


def test_a_tampering_node_is_refused_through_real_nats(lab, tampering_node, tmp_path):
    """Through two NATs: a node that swaps fingerprints fails the first handshake (the real peer cannot
    prove the attacker's key); once the peers have met through an honest node, it is refused before any
    handshake: the callee declines the request, and a caller that alone pinned its peer refuses the punch."""
    port, attacker = tampering_node
    caller, callee = lab.kinds["eim-apdf"]
    mine = pair_via(caller, callee, port)
    assert "fingerprint" in mine.get("error", ""), mine
    caller_state, callee_state = tmp_path / "caller", tmp_path / "callee"
    honest = pair_via(caller, callee, SERVER_PORT, caller_state, callee_state)  # each pins the other
    assert honest.get("pong"), honest
    mine = pair_via(caller, callee, port, caller_state, callee_state)
    assert "refused: the fingerprint the node passed on for you" in mine.get("error", ""), mine
    mine = pair_via(caller, callee, port, caller_state, tmp_path / "callee-anew")  # only the caller pins
    assert "fingerprint changed" in mine.get("error", "") and attacker in mine["error"], mine


def test_a_peer_that_vanishes_ends_the_session_soon(lab):
    """The listener is killed in the middle of a stream: the caller's consent checks go unanswered, its
    ICE restart finds the peer offline, and its session ends with that reason within seconds."""
    caller, callee = lab.kinds["eim-adf"]
    options = ("consent=2",)
    listener = stream_client(callee, "listen", *options)
    connector = None
    try:
        assert json.loads(listener.stdout.readline() or "{}").get("ready"), listener.stderr.read()
        connector = stream_client(caller, "connect", user(callee), "30", *options)
        assert json.loads(connector.stdout.readline() or "{}").get("up"), connector.stderr.read()
        listener.kill()  # SIGKILL: no goodbye on any channel
        killed = time.monotonic()
        try:
            out, err = connector.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            connector.kill()
            out, err = connector.communicate()
            pytest.fail(f"the caller's session outlived its peer by 30 s: {out[-1000:]} {err[-3000:]}")
        ended = time.monotonic() - killed
        final = json.loads(out.strip().splitlines()[-1])
        assert "offline" in final["summary"].get("error", ""), (final, err[-2000:])
        assert ended < 2 + 1.5 + 3, ended  # consent timeout, a check interval, the restart's exchange
    finally:
        for process in (connector, listener):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
