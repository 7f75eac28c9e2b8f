"""A presence directory and message router shared by super nodes through Redis.

With ``--redis URL`` super nodes keep

- ``txr:presence`` (hash): user -> {node, state, nat_type} of online users;
- ``txr:nodes`` (hash): node -> {host, port, load, seen, ips?} (ips: every
  public address, both families, of a dual-stack node), refreshed every
  5 s; a node not seen for 30 s is dropped from host caches and its users
  count as offline; a node that finds its own entry gone (Redis restarted
  without its data) publishes its users' presence again;
- channel ``txr:presence``: every presence change, so each node answers
  ``locate`` from memory;
- channel ``txr:node:NAME``: envelopes other nodes route to NAME (a message,
  a presence push, a connect answer for a token this node issued).

redis-py (blocking, maintained) runs in threads of this module's own: one
for commands, in order, and one reading the subscription; results come back
to the reactor thread with ``callFromThread``. The signaling core sees only
``publish_presence``, ``locate`` and ``route``.
"""

import json
import threading
import time

import redis
from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

PREFIX = "txr:"
NODE_REFRESH_SECONDS = 5
NODE_STALE_SECONDS = 30


class RedisDirectory(service.Service):
    """The shared directory of one super node (see the module docstring)."""

    def __init__(self, reactor, url: str, node_name: str, host: str, port: int) -> None:
        self.reactor = reactor
        self.url = url
        self.node_name = node_name
        self.host, self.port = host, port
        self.node = None  # the SignalingNode, set after both exist
        self.presence: dict[str, dict] = {}
        self.nodes: dict[str, dict] = {}
        self._client = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        self._commands = ThreadPool(minthreads=1, maxthreads=1, name="redis-commands")
        self._listening = threading.Event()
        self._stopping = threading.Event()
        self._registered = False  # this node's registry entry has been written once
        self._refresh = LoopingCall(self.refresh_nodes)
        self._refresh.clock = reactor

    # -- the three methods the signaling core calls -------------------------

    def publish_presence(self, user: str, state: str, nat_type: str | None) -> None:
        entry = {"node": self.node_name, "state": state, "nat_type": nat_type}
        self._run(self._store_presence, user, entry)

    def locate(self, user: str) -> dict | None:
        entry = self.presence.get(user)
        if entry is None or entry.get("node") not in self.nodes:
            return None
        return entry

    def route(self, node: str, envelope: dict) -> None:
        self._run(self._client.publish, f"{PREFIX}node:{node}", json.dumps(envelope))

    # -- threads ----------------------------------------------------------

    def _run(self, function, *args):
        d = deferToThreadPool(self.reactor, self._commands, function, *args)
        d.addErrback(lambda failure: log.error("redis: {error}", error=failure.getErrorMessage()))
        return d

    def _store_presence(self, user: str, entry: dict) -> None:
        pipe = self._client.pipeline()
        if entry["state"] == "offline":
            pipe.hdel(f"{PREFIX}presence", user)
        else:
            pipe.hset(f"{PREFIX}presence", user, json.dumps(entry))
        pipe.publish(f"{PREFIX}presence", json.dumps({"user": user, **entry}))
        pipe.execute()

    def _listen(self) -> None:
        """The subscriber thread: hand each message to the reactor thread."""
        while not self._stopping.is_set():
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(f"{PREFIX}presence", f"{PREFIX}node:{self.node_name}")
                self._listening.set()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self.reactor.callFromThread(self._received, message["channel"], message["data"])
                pubsub.close()
            except redis.RedisError as e:
                log.error("redis subscription lost ({error}); retrying", error=str(e))
                time.sleep(1)

    def _received(self, channel: str, data: str) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        if channel == f"{PREFIX}presence":
            user = payload.pop("user", None)
            node = payload.get("node")
            if isinstance(node, str) and node != self.node_name:
                # A presence event is proof of life until the next registry read.
                self.nodes.setdefault(node, {"seen": time.time()})
            if isinstance(user, str) and node != self.node_name:
                if payload.get("state") == "offline":
                    self.presence.pop(user, None)
                else:
                    self.presence[user] = payload
        elif self.node is not None:
            self.node.handle_routed(payload)

    # -- nodes and the host cache --------------------------------------------

    def refresh_nodes(self):
        me = self.node.own_entry() if self.node is not None else {"host": self.host, "port": self.port, "load": 0}
        me = {**me, "seen": time.time()}

        def exchange() -> tuple[bool, dict, dict]:
            known = self._client.hexists(f"{PREFIX}nodes", self.node_name)
            self._client.hset(f"{PREFIX}nodes", self.node_name, json.dumps(me))
            return known, self._client.hgetall(f"{PREFIX}nodes"), self._client.hgetall(f"{PREFIX}presence")

        return self._run(exchange).addCallback(self._refreshed)

    def _refreshed(self, result) -> None:
        if result is None:
            return
        known, nodes, presence = result
        if not known and self._registered and self.node is not None:
            self._republish()
        self._registered = True
        now = time.time()
        fresh = {}
        for name, text in nodes.items():
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if now - entry.get("seen", 0) <= NODE_STALE_SECONDS and "host" in entry:
                fresh[name] = entry
        self.nodes = fresh
        for user, text in presence.items():
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if entry.get("node") != self.node_name:
                self.presence.setdefault(user, entry)
        if self.node is not None:
            self.node.learn_hosts([e for name, e in sorted(fresh.items()) if name != self.node_name])

    def _republish(self) -> None:
        """Redis lost this node's registry entry (a restart without persistence, a flush): write the
        presence of this node's users again, so the other nodes and the directory have them."""
        sessions = list(self.node.sessions.values())
        log.warn("redis lost the directory; publishing the presence of this node's {count} users again",
                 count=len(sessions))
        for session in sessions:
            self.publish_presence(session.user, session.state, session.nat_type)

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._commands.start()
        threading.Thread(target=self._listen, name="redis-subscriber", daemon=True).start()
        self._refresh.start(NODE_REFRESH_SECONDS, now=True)

    def stopService(self):
        super().stopService()
        if self._refresh.running:
            self._refresh.stop()
        self._stopping.set()
        try:
            self._client.hdel(f"{PREFIX}nodes", self.node_name)
        except redis.RedisError:
            pass
        self._commands.stop()
