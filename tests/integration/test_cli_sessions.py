"""The command line as a new user tries it: two fresh accounts become buddies, then talk over a session.

``txrendezvous buddies`` makes the buddy relation that connect needs;
``txrendezvous listen`` / ``connect`` carry stdin to the peer's stdout over
an encrypted session's stream and both exit cleanly at the end of input,
on a direct path and through the relay.
"""

import json
import os
import subprocess
import sys

import pytest

from rendezvous.node.accounts import AccountStore
from tests.conftest import ROOT, start_node, stop_node

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A super node with fresh accounts that are nobody's buddies yet."""
    tmp = tmp_path_factory.mktemp("cli")
    store = AccountStore(tmp / "state" / "accounts.sqlite")
    for name in ("ann", "ben", "cat", "dan"):
        store.add(name, f"{name}-pw", "txrendezvous")
    store.close()
    started = start_node(tmp, "--allow-peer", "127.0.0.0/8")
    yield started
    stop_node(started)


def cli(tmp_path, *args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp_path / "state"))
    return [sys.executable, "-m", "rendezvous.cli.main", *args], env


def run(tmp_path, *args, timeout=30):
    argv, env = cli(tmp_path, *args)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def buddies(tmp_path, server, a, b):
    """a asks, b accepts; both lists then show the other as accepted."""
    asked = run(tmp_path, "buddies", server, a, f"{a}-pw", "add", b)
    assert asked.returncode == 0 and asked.stdout.strip() == f"{b}: requested", asked
    accepted = run(tmp_path, "buddies", server, b, f"{b}-pw", "accept", a)
    assert accepted.returncode == 0 and accepted.stdout.strip() == f"{a}: accepted", accepted
    listed = run(tmp_path, "buddies", server, a, f"{a}-pw", "list", "--json")
    assert {"user": b, "relation": "accepted", "state": "offline"} in json.loads(listed.stdout)["buddies"]


@pytest.mark.parametrize("route, a, b", [("direct", "ann", "ben"), ("relay", "cat", "dan")])
def test_fresh_accounts_become_buddies_and_relay_stdin_over_a_session(node, tmp_path, route, a, b):
    """Both sides send their stdin, receive the other's on stdout and exit 0 when both inputs end."""
    server = f"{node.ip}:{node.port}"
    buddies(tmp_path, server, a, b)
    extra = ["--loopback", "--json"] + (["--relay-only"] if route == "relay" else [])
    argv, env = cli(tmp_path, "listen", server, b, f"{b}-pw", *extra)
    listener = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        assert json.loads(listener.stderr.readline())["event"] == "listening"
        from_caller = os.urandom(50_000) + b"\nthe end\n"
        argv, env = cli(tmp_path, "connect", server, a, f"{a}-pw", b, *extra)
        caller = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        listener.stdin.write(b"from the listener\n")
        listener.stdin.close()
        out, err = caller.communicate(from_caller, timeout=30)
        assert caller.returncode == 0, err
        assert out == b"from the listener\n"
        events = [json.loads(line) for line in err.decode().splitlines()]
        connected = events[0]
        final = [e["path"] for e in events if e["event"] in ("connected", "path")][-1]
        # relay first: a session this short may end before it moves to the direct pair
        assert final in (("udp-direct", "turn-udp") if route == "direct" else ("turn-udp",)), events
        assert connected["fingerprint"].startswith("sha-256 ")
        heard = listener.stdout.read()
        assert listener.wait(20) == 0, listener.stderr.read()
        assert heard == from_caller
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(10)


def test_connect_to_a_stranger_says_why(node, tmp_path):
    """Without the buddy relation, connect fails with the node's reason and exit status 1."""
    result = run(tmp_path, "connect", f"{node.ip}:{node.port}", "ann", "ann-pw", "dan", "--loopback")
    assert result.returncode == 1 and "buddy" in result.stderr, result
