"""``--log-format json``: a real super node writes one JSON object per event, secrets left out."""

import json
import time

import pytest
import pytest_twisted

from rendezvous.node.accounts import AccountStore
from rendezvous.stun import Class
from tests.conftest import PRIMARY_IP, TURN_PASSWORD, TURN_REALM, TURN_SECRET, TURN_USER, start_node, stop_node
from tests.signaling_helpers import login
from tests.turn_helpers import UdpTurnClient

pytestmark = pytest.mark.integration
SIGNALING_PASSWORD = "dave-pw"  # what tests.signaling_helpers.login sends


def records(node) -> list[dict]:
    """Every line the node wrote, each parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in node.log().splitlines() if line.strip()]


def wait_for(node, predicate, what: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while not any(predicate(r) for r in records(node)):
        assert time.monotonic() < deadline, f"no {what} in:\n{node.log()}"
        time.sleep(0.1)
    return records(node)


@pytest_twisted.ensureDeferred
async def test_json_events_carry_client_session_allocation_and_no_secrets(tmp_path):
    """A login and a TURN allocation are logged as JSON with client, session and allocation, never a secret."""
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    store.add("dave", SIGNALING_PASSWORD, "txrendezvous")
    store.close()
    node = start_node(tmp_path, "--log-format", "json", "--realm", TURN_REALM,
                      "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--auth-secret", TURN_SECRET, alternate=False)
    try:
        signaling = await login(node, "dave")
        welcome = signaling.welcome
        turn = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
        turn.sock.bind((PRIMARY_IP, 0))
        assert turn.allocate().cls == Class.SUCCESS
        turn_client = "%s:%d" % turn.sock.getsockname()
        handed_out = welcome["turn"]["password"]
        await signaling.close()
        turn.close()
        logged = wait_for(node, lambda r: "session" in r and "logged in" in r["text"], "login event")
        logged = wait_for(node, lambda r: "allocation" in r and r.get("client"), "allocation event")
    finally:
        stop_node(node)
    login_event = next(r for r in logged if "logged in" in r["text"])
    assert login_event["session"] == welcome["session"] and login_event["client"] == PRIMARY_IP
    allocation = next(r for r in logged if r["text"].startswith("allocation "))
    assert allocation["client"] == turn_client
    assert allocation["user"] == TURN_USER and allocation["allocation"].startswith("0-")
    assert all({"time", "level", "namespace", "text"} <= set(r) for r in logged)
    text = node.log()
    for secret in (SIGNALING_PASSWORD, TURN_PASSWORD, TURN_SECRET, handed_out):
        assert secret not in text
