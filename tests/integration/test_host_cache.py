"""Super nodes exchange host caches: C, bootstrapped with A only, learns of B through A."""

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rendezvous.node.accounts import AccountStore
from tests.conftest import start_node, stop_node
from tests.signaling_helpers import login

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_gossip_spreads_the_host_cache(tmp_path):
    """Each node's welcome lists the others after the first exchange round."""
    accounts = tmp_path / "accounts.sqlite"
    store = AccountStore(accounts)
    store.add("alice", "alice-pw", "txrendezvous")
    store.close()
    nodes = {}
    try:
        for name, peer in (("b", None), ("a", "b"), ("c", "a")):
            (tmp_path / name).mkdir()
            extra = ["--accounts", str(accounts), "--node-name", name]
            if peer:
                extra += ["--peer-node", f"127.0.0.1:{nodes[peer].port}"]
            nodes[name] = start_node(tmp_path / name, *extra, alternate=False)
        wanted = {"c": {"a", "b"}, "b": {"a"}}
        deadline = time.monotonic() + 20
        for name, expected in wanted.items():
            ports = {nodes[other].port for other in expected}
            while True:
                client = await login(nodes[name], "alice")
                await client.close()
                welcome = client.welcome
                seen = {entry["port"] for entry in welcome["host_cache"]}
                if ports <= seen:
                    break
                assert time.monotonic() < deadline, (name, welcome["host_cache"])
                await deferLater(reactor, 0.3)
            assert nodes[name].port not in seen  # a node never lists itself
    finally:
        for node in nodes.values():
            stop_node(node)
