"""connect(report_outcome=True) on loopback: the caller's session outcome reaches the node's field test."""

import json
import sqlite3
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rendezvous.node.accounts import AccountStore
from rendezvous.peer.outcomes import outcome_document
from rendezvous.peer import nat_memory
from rendezvous.wire.results import parse_submission
from tests.conftest import free_port, start_node, stop_node
from tests.integration.test_sessions import close, pair

pytestmark = pytest.mark.integration


@pytest.fixture
def results_node(tmp_path):
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    for name in ("olga", "piet"):
        store.add(name, f"{name}-pw", "txrendezvous")
    store.request_buddy("olga", "piet")
    store.accept_buddy("piet", "olga")
    store.close()
    http_port = free_port()
    node = start_node(tmp_path, "--allow-peer", "127.0.0.0/8", "--http-port", str(http_port))
    node.http_port = http_port
    yield node
    stop_node(node)


def stored_outcomes(node) -> int:
    """Outcome rows in the node's database (exact, where the views are recounted at most every 5 s)."""
    db = sqlite3.connect(f"file:{node.state_dir / 'accounts.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM results WHERE kind='outcome'").fetchone()[0]
    finally:
        db.close()


def outcome_records(node) -> list[dict]:
    db = sqlite3.connect(f"file:{node.state_dir / 'accounts.sqlite'}?mode=ro", uri=True)
    try:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM results WHERE kind='outcome'")]
    finally:
        db.close()


async def the_outcome(node, seconds: float = 15.0) -> dict:
    """The one outcome record the node stores, once it is there."""
    for _ in range(int(seconds / 0.25)):
        if stored_outcomes(node):
            break
        await deferLater(reactor, 0.25)
    [record] = outcome_records(node)
    return record


def summary(node) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/api/results", timeout=5) as answer:
        return json.load(answer)


async def sessions_reported(node, count: int, seconds: float = 15.0) -> dict:
    for _ in range(int(seconds / 0.25)):
        found = summary(node)
        if found["sessions"] >= count:
            return found
        await deferLater(reactor, 0.25)
    return summary(node)


@pytest_twisted.ensureDeferred
async def test_the_caller_reports_its_session_once(results_node, tmp_path):
    """The caller's outcome (its attempts and the settled path) is stored once; the answering side sends none."""
    mine, theirs, listener = await pair(results_node, "olga", "piet", tmp_path, report_outcome=True)
    try:
        path = await mine.when_settled()
        found = await sessions_reported(results_node, 1)
        assert found["sessions"] == 1
        techniques = {technique for technique, _, _ in found["techniques"]}
        assert path in techniques and {a.technique for a in mine.attempts if a.outcome != "skipped"} == techniques
        assert found["direct_by_pair"] == [["endpoint-independent", "endpoint-independent", 1,
                                            0 if path.startswith("turn-") else 1]]
        await deferLater(reactor, 1.0)
        assert stored_outcomes(results_node) == 1  # the listener did not report too
    finally:
        await close(mine, theirs, listener)


@pytest_twisted.ensureDeferred
async def test_no_report_unless_asked(results_node, tmp_path):
    """Without report_outcome nothing is sent to the field test."""
    mine, theirs, listener = await pair(results_node, "olga", "piet", tmp_path)
    try:
        await mine.when_settled()
        await deferLater(reactor, 1.0)
        assert stored_outcomes(results_node) == 0
        # What would have been sent passes the node's schema as it is.
        side = {"nat_type": "symmetric", "mapping": "address-and-port-dependent", "filtering": None}
        assert parse_submission(json.dumps(outcome_document(mine, side, side)).encode())["path"] == mine.path
    finally:
        await close(mine, theirs, listener)



@pytest_twisted.ensureDeferred
async def test_this_sides_nat_is_named_by_its_last_nat_check(results_node, tmp_path):
    """A recent nat-check report in the caller's state directory names its NAT in the outcome."""
    nat_memory.save(tmp_path / "olga", {"nat_type": "port restricted cone", "mapping": "endpoint-independent",
                                        "filtering": "address-and-port-dependent", "mapped_address": "x"},
                    reactor.seconds())
    mine, theirs, listener = await pair(results_node, "olga", "piet", tmp_path, report_outcome=True)
    try:
        record = await the_outcome(results_node)
        assert record["local"] == {"nat_type": "port restricted cone", "mapping": "endpoint-independent",
                                   "filtering": "address-and-port-dependent"}
        assert record["remote"] == {"mapping": "endpoint-independent"}  # the peer reports nothing: no NAT type
    finally:
        await close(mine, theirs, listener)


@pytest_twisted.ensureDeferred
async def test_a_reporting_peer_sends_its_nat_type_for_the_callers_report(results_node, tmp_path):
    """When both sides report outcomes, the callee's checked NAT type comes with its answer and lands in
    the caller's record as the remote side's."""
    for name, nat_type in (("olga", "full cone"), ("piet", "symmetric UDP firewall")):
        nat_memory.save(tmp_path / name, {"nat_type": nat_type, "mapping": "endpoint-independent",
                                          "filtering": None}, reactor.seconds())
    mine, theirs, listener = await pair(results_node, "olga", "piet", tmp_path, report_outcome=True)
    try:
        record = await the_outcome(results_node)
        assert record["local"]["nat_type"] == "full cone"
        assert record["remote"] == {"nat_type": "symmetric UDP firewall", "mapping": "endpoint-independent"}
    finally:
        await close(mine, theirs, listener)
