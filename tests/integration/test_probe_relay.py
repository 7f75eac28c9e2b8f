"""``txrendezvous probe-relay`` against our ``twistd relay`` and coturn's turnserver.

Each server and the probe run together in a network namespace with only
loopback up (tests/integration/probe_netns.py): a relay that grants a
forbidden peer may try to reach it, and there it finds no route.
"""

import json
import shutil
import subprocess
import sys

import pytest

from relay.probe_targets import TARGETS
from tests.conftest import ROOT, free_port
from tests.integration.probe_netns import METRICS_PORT, PASSWORD, USER, netns_available

pytestmark = pytest.mark.integration

WHY_NOT = netns_available()
needs_netns = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# Every range coturn's own options name, as its denied-peer-ip takes them.
COTURN_DENIED = [
    "0.0.0.0-0.255.255.255", "10.0.0.0-10.255.255.255", "100.64.0.0-100.127.255.255",
    "169.254.0.0-169.254.255.255", "172.16.0.0-172.31.255.255", "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255", "198.18.0.0-198.19.255.255", "240.0.0.0-255.255.255.255",
    "192.0.2.0-192.0.2.255", "192.88.99.0-192.88.99.255", "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
]


def probe_in_netns(kind: str, server_args=(), probe_args=()) -> dict:
    """Start the server and run the probe in a fresh network namespace; the helper's JSON."""
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "tests.integration.probe_netns", kind,
         *server_args, "--", *probe_args],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["report"] is not None, result
    return result


def verdicts(result: dict, check: str) -> dict[str, dict]:
    return {v["target"]: v for v in result["report"]["verdicts"] if v["check"] == check}


def statuses(result: dict, check: str) -> set[str]:
    return {v["status"] for v in verdicts(result, check).values()}


@pytest.fixture(scope="module")
def default_relay() -> dict:
    """The probe against our relay as it ships (IPv6 relaying on, metrics on 127.0.0.1:9641)."""
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    return probe_in_netns("ours")


@needs_netns
def test_default_relay_refuses_every_forbidden_peer(default_relay):
    """Every target address, in every IPv6 spelling, gets 403 to CreatePermission, ChannelBind and Connect."""
    peers = verdicts(default_relay, "peer-range")
    assert set(peers) == {t.address for t in TARGETS}
    assert statuses(default_relay, "peer-range") == {"closed"}
    for address, verdict in peers.items():
        assert [o["method"] for o in verdict["outcomes"]] == ["CreatePermission", "ChannelBind", "Connect"]
        answers = [o["answer"][:3] for o in verdict["outcomes"]]
        if address in ("127.0.0.1", "::1"):  # the relay's own relayed IPs here: permissions are per IP
            assert answers[1:] == ["403", "403"] and verdict["outcomes"][0]["status"] != "OPEN", verdict
        else:
            assert answers == ["403"] * 3, verdict


@needs_netns
def test_default_relay_keeps_its_own_ports_and_credentials_closed(default_relay):
    """Its STUN and metrics ports are unreachable through it, and Allocates without the password fail."""
    own = verdicts(default_relay, "own-port")
    assert {f"127.0.0.1:{METRICS_PORT}", f"[::1]:{METRICS_PORT}"} <= set(own) and len(own) == 4
    assert statuses(default_relay, "own-port") == {"closed"}
    assert verdicts(default_relay, "unauthenticated-allocate")["-"]["status"] == "closed"
    assert verdicts(default_relay, "wrong-password")["-"]["status"] == "closed"
    assert default_relay["allocations_left"] == 0


@needs_netns
def test_default_relay_passes_the_whole_probe(default_relay):
    """Under its default configuration the relay has nothing OPEN and the probe exits 0."""
    assert [v for v in default_relay["report"]["verdicts"] if v["status"] == "OPEN"] == []
    assert default_relay["exit"] == 0


@needs_netns
def test_permissive_relay_is_reported_open_except_its_own_host():
    """--allow-peer over everything: every forbidden range is OPEN and the probe exits 1; the relay's own
    ports and the unspecified address (which Linux delivers to the host itself) stay closed whatever
    --allow-peer says; nothing is left allocated."""
    result = probe_in_netns("ours", ["--allow-peer", "0.0.0.0/0", "--allow-peer", "::/0"], ["--quota-check", "8"])
    assert result["exit"] == 1
    peers = verdicts(result, "peer-range")
    assert len(peers) == len(TARGETS)
    closed = {address for address, verdict in peers.items() if verdict["status"] != "OPEN"}
    # the unspecified address and the IPv6 spellings that carry 0.0.0.0 to this host (issue 14)
    assert closed == {"0.0.0.0", "::", "::ffff:0.0.0.0", "64:ff9b::0.0.0.0", "2002::1", "2001::ffff:ffff"}, closed
    own = verdicts(result, "own-port")
    assert statuses(result, "own-port") == {"closed"}, own
    assert "403" in own[f"127.0.0.1:{METRICS_PORT}"]["detail"]
    assert verdicts(result, "quota")["8"]["status"] == "OPEN"
    assert result["allocations_left"] == 0


@needs_netns
def test_quota_check_sees_the_per_user_quota():
    """With --user-quota 3, the quota check is stopped by 486 after 3 allocations and releases them all."""
    result = probe_in_netns("ours", ["--user-quota", "3"], ["--quota-check", "10"])
    quota = verdicts(result, "quota")["10"]
    assert quota["status"] == "closed"
    assert quota["detail"].startswith("486 after 3 allocations")
    assert result["allocations_left"] == 0


needs_coturn = pytest.mark.skipif(shutil.which("turnserver") is None,
                                  reason="coturn's turnserver is not installed (Debian package coturn)")


@needs_netns
@needs_coturn
def test_coturn_default_peers_are_reported_open():
    """coturn without denied-peer-ip relays to RFC 1918, CGN, link-local and metadata peers: OPEN, exit 1."""
    result = probe_in_netns("coturn")
    assert result["exit"] == 1
    peers = verdicts(result, "peer-range")
    for address in ("10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1", "169.254.169.254"):
        assert peers[address]["status"] == "OPEN", peers[address]
    assert peers["127.0.0.1"]["status"] == "closed"  # coturn refuses loopback peers unless allowed


@needs_netns
@needs_coturn
def test_coturn_hardened_passes_the_probe():
    """coturn with denied-peer-ip over the ranges, no-multicast-peers and user-quota has nothing OPEN."""
    hardened = ["no-multicast-peers", "user-quota=4"] + [f"denied-peer-ip={r}" for r in COTURN_DENIED]
    result = probe_in_netns("coturn", hardened, ["--quota-check", "10"])
    assert [v for v in result["report"]["verdicts"] if v["status"] == "OPEN"] == []
    assert verdicts(result, "quota")["10"]["detail"].startswith("486")
    assert result["exit"] == 0


def test_unreachable_relay_exits_2():
    """A relay that does not answer is a connection error: exit 2 with a message, no report."""
    port = free_port(("127.0.0.1",))
    done = subprocess.run(
        [sys.executable, "-m", "rendezvous.cli.main", "probe-relay", f"127.0.0.1:{port}",
         "--user", f"{USER}:{PASSWORD}", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no answer" in done.stderr


def test_bad_options_exit_2():
    """A malformed HOST:PORT or a missing password is a usage error: exit 2 with a message."""
    for args in (["nowhere", "--user", "a:b"], ["127.0.0.1:3478", "--user", "alice"]):
        done = subprocess.run([sys.executable, "-m", "rendezvous.cli.main", "probe-relay", *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                              env={"PYTHONPATH": str(ROOT)})
        assert done.returncode == 2, done.stderr
        assert "error:" in done.stderr
