"""Super nodes exchange host caches (docs/PROTOCOL.md, op "hosts").

Every 60 s (and shortly after start) a node connects to up to three super
nodes from its cache (the ``--peer-node`` bootstrap entries first), sends
``hosts`` with its own address and load, and merges the cache each one
answers with. Entries age out of the cache after an hour unseen
(``SignalingNode.host_cache``). Each exchange is bounded: one frame each way
and a 10 s timeout.
"""

import random

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rendezvous.node.signaling import SignalingNode
from rendezvous.wire.frames import FrameError, FrameReader, encode

log = Logger()

GOSSIP_SECONDS = 60
FIRST_ROUND_SECONDS = 1.0
FANOUT = 3
TIMEOUT_SECONDS = 10


class _Exchange(Protocol):
    def __init__(self, request: dict, done: defer.Deferred) -> None:
        self.request = request
        self.done = done
        self.reader = FrameReader()

    def connectionMade(self) -> None:
        self.transport.write(encode(self.request))

    def dataReceived(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            if isinstance(message, FrameError) and message.fatal:
                self.transport.abortConnection()
                return
            if isinstance(message, dict) and message.get("op") == "hosts" and not self.done.called:
                self.done.callback(message.get("hosts"))
                self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.done.called:
            self.done.errback(reason)


class GossipService(service.Service):
    """Periodic host-cache exchange with other super nodes."""

    def __init__(self, reactor, node: SignalingNode) -> None:
        self.reactor = reactor
        self.node = node
        self._loop = LoopingCall(self.round)
        self._loop.clock = reactor
        self._first = None

    def exchange(self, host: str, port: int) -> defer.Deferred:
        """One exchange with host:port; fires with the hosts it knows."""
        node = self.node
        request = {"op": "hosts", "node": node.config.node_name, "port": node.config.address[1],
                   "load": len(node.sessions)}
        done: defer.Deferred = defer.Deferred()
        factory = Factory.forProtocol(lambda: _Exchange(request, done))
        factory.noisy = False
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=TIMEOUT_SECONDS)
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda failure: done.called or done.errback(failure))
        timer = self.reactor.callLater(TIMEOUT_SECONDS, lambda: done.called or done.cancel())
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return done

    def round(self) -> defer.Deferred:
        cache = self.node.host_cache()
        chosen = cache[:1] + random.sample(cache[1:], min(FANOUT - 1, max(0, len(cache) - 1)))
        attempts = []
        for entry in chosen:
            d = self.exchange(entry["host"], entry["port"])
            d.addCallback(self.node.learn_hosts)
            d.addErrback(lambda failure, e=entry: log.debug("host exchange with {host}:{port} failed: {error}",
                                                             host=e["host"], port=e["port"],
                                                             error=failure.getErrorMessage()))
            attempts.append(d)
        return defer.DeferredList(attempts)

    def startService(self) -> None:
        super().startService()
        self._first = self.reactor.callLater(FIRST_ROUND_SECONDS, self._loop.start, GOSSIP_SECONDS, now=True)

    def stopService(self):
        super().stopService()
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._loop.running:
            self._loop.stop()
