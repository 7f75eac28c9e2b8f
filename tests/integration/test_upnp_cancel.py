"""Cancelling a UPnP IGD discovery that is blocked in miniupnpc's thread, on the real reactor.

miniupnpc stands in as a module whose discovery blocks until the test
releases it (no SSDP leaves the machine); the thread pool is upnp_helper's own.
"""

import sys
import threading
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater

from upnp_helper.igd import discover

pytestmark = pytest.mark.integration


def upnp_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "upnp_helper" in t.name]


@pytest_twisted.ensureDeferred
async def test_cancelling_a_blocked_discovery_stops_waiting_and_frees_the_thread_later(monkeypatch):
    """A cancelled discovery fails with CancelledError at once while miniupnpc still blocks its thread;
    when the thread returns, its result is let go and the pool's thread ends (nothing waits on it)."""
    release = threading.Event()

    class BlockingUPnP:
        discoverdelay, multicastif, lanaddr = 0, None, "192.168.1.2"

        def discover(self):
            release.wait(10)
            return 1

        def selectigd(self):
            return "http://192.168.1.1:5000/ctl"

    monkeypatch.setitem(sys.modules, "miniupnpc", SimpleNamespace(UPnP=BlockingUPnP))
    search = discover(reactor, timeout_seconds=0.5)
    await deferLater(reactor, 0.05, lambda: None)
    assert upnp_threads()  # blocked in discovery
    search.cancel()
    with pytest.raises(CancelledError):
        await search
    assert not release.is_set() and upnp_threads()  # the reactor did not wait for the thread
    release.set()
    for _ in range(100):
        if not upnp_threads():
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert not upnp_threads()
