"""One worker of the load generator: on one reactor, it sets up a share of the clients (each
an allocation, RFC 8656 §7, with an echoing peer socket of its own), sends, drains and tears
down.

Sending runs on one LoopingCall that ticks every ``tick_seconds`` (1-10 ms, longer with more
clients); on each tick every client sends the packets it owes (its rate times the time since
the start, minus what it sent) in one burst, with no Message objects on the data path.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall, deferLater

from relay.client import (
    ConnectionClosed,
    RealmMismatch,
    TransactionTimeout,
    TurnClient,
    TurnError,
    connect,
    set_socket_buffers,
)
from relay.datagrams import read_loop
from relay.loadgen_config import LoadConfig
from relay.loadgen_report import MICROSECOND, WorkerResult

MAX_CATCH_UP_SECONDS = 0.05  # a late tick sends at most this much backlog at once
MIN_TICK_SECONDS = 0.001
MAX_TICK_SECONDS = 0.010
SETUP_CONCURRENCY = 64
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
CHANNEL = 0x4000
TEARDOWN_SECONDS = 3.0
SPAWN_GRACE_SECONDS = 30.0

_STAMP = struct.Struct("!Qd")  # sequence number, send time (clock seconds)
_SENT_AT = struct.Struct("!d")


# -- the send schedule ------------------------------------------------------------------


def burst_size(sent: int, elapsed_seconds: float, rate: float, budget: int, max_burst: int) -> int:
    """How many packets a client sends on this tick.

    It owes floor(elapsed x rate) + 1 packets by now (the first goes at
    t = 0), minus what it sent; never more than max_burst at once (a late
    tick does not turn into a flood) nor past its budget.
    """
    owed = min(int(elapsed_seconds * rate) + 1, budget) - sent
    if owed <= 0:
        return 0
    return min(owed, max_burst)


def auto_tick_seconds(clients: int) -> float:
    """The send-loop period for a worker with this many clients: 1-10 ms.

    Short ticks mean small bursts, so the generator's own queueing adds
    little to the measured round trip; each tick costs about a microsecond
    per client, so many clients get a longer tick (10 µs per client).
    """
    return min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, clients * 10 * MICROSECOND))


def max_burst_for(rate: float, tick_seconds: float) -> int:
    """The largest burst one client may send in one tick: MAX_CATCH_UP_SECONDS of traffic."""
    return max(1, math.ceil(rate * max(MAX_CATCH_UP_SECONDS, 2 * tick_seconds)))


# -- the worker: one reactor, a share of the clients ---------------------------------------


class EchoPeer(DatagramProtocol):
    """A client's peer: counts what the relay delivers and echoes it back where it came from."""

    noisy = False

    def __init__(self) -> None:
        self.received = 0
        self.received_bytes = 0
        self.echo_errors = 0
        self._sendto: Callable[[bytes, Any], Any] | None = None

    def startProtocol(self) -> None:
        self._sendto = self.transport.getHandle().sendto
        read_loop(self.transport, self.datagramReceived)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received += 1
        self.received_bytes += len(data)
        try:
            self._sendto(data, addr)
        except OSError:
            self.echo_errors += 1


class _Flow:
    """One client, its peer socket and its counters."""

    __slots__ = (
        "client",
        "echo",
        "index",
        "peer",
        "peer_port",
        "received",
        "received_bytes",
        "send",
        "send_errors",
        "sent",
        "sent_bytes",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.client: TurnClient | None = None
        self.peer_port: Any = None
        self.peer: tuple[str, int] | None = None
        self.echo = EchoPeer()
        self.send: Callable[[bytes], None] | None = None
        self.sent = 0
        self.sent_bytes = 0
        self.send_errors = 0
        self.received = 0
        self.received_bytes = 0


class Worker:
    """Sets up a share of the clients, sends, drains and tears down, on one reactor.

    ``report(kind, payload)`` is told "ready" (the number of clients set up)
    after setup and "progress" (a Snapshot) each second; ``go()`` says when
    to start sending, so several processes start together, and ``stop()``
    when to end early. ``run()`` fires with a WorkerResult.
    """

    def __init__(
        self,
        reactor: Any,
        config: LoadConfig,
        first: int,
        count: int,
        report: Callable[[str, Any], Any] = lambda kind, payload: None,
        go: Callable[[], bool] = lambda: True,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.all_flows = [_Flow(first + i) for i in range(count)]
        self.flows: list[_Flow] = []
        self.report = report
        self.go = go
        self.stop = stop
        self.result = WorkerResult(clients=count)
        self.budget = config.packets_per_client
        self.tick_seconds = config.tick_seconds or auto_tick_seconds(count)
        self.max_burst = max_burst_for(config.rate, self.tick_seconds)
        self.filler = bytes(config.size - _STAMP.size)
        self.start = 0.0
        self.finished_sending = 0.0
        self.cpu_clock: Callable[[], float] = time.process_time
        self._cpu_at_start = 0.0
        self._cpu_seconds = 0.0
        self._ticker: LoopingCall | None = None

    def run(self) -> Deferred:
        """Fires with the WorkerResult once everything is closed again."""
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> WorkerResult:
        try:
            await self._setup()
            self.flows = [flow for flow in self.all_flows if flow.send is not None]
            self.result.allocated = len(self.flows)
            self.report("ready", len(self.flows))
            if self.flows:
                await self._wait_for_go()
                if not self.stop():
                    await self._send_and_drain()
        finally:
            await self._teardown()
        return self._collect()

    # -- setup: connect, allocate, permission or channel -------------------------------

    async def _setup(self) -> None:
        semaphore = DeferredSemaphore(SETUP_CONCURRENCY)
        attempts = [semaphore.run(self._setup_flow, flow) for flow in self.all_flows]

        def give_up() -> None:
            for attempt in attempts:
                if not attempt.called:
                    attempt.cancel()

        timer = self.reactor.callLater(self.config.setup_timeout_seconds, give_up)
        outcomes = await DeferredList(attempts, consumeErrors=True)
        if timer.active():
            timer.cancel()
        for (ok, value), flow in zip(outcomes, self.all_flows):
            if not ok:
                flow.send = None
                message = _describe(value, self.config)
                self.result.errors[message] = self.result.errors.get(message, 0) + 1

    def _setup_flow(self, flow: _Flow) -> Deferred:
        return Deferred.fromCoroutine(self._setup_flow_steps(flow))

    async def _setup_flow_steps(self, flow: _Flow) -> None:
        config = self.config
        flow.peer_port = self.reactor.listenUDP(0, flow.echo, interface=config.peer_ip, maxPacketSize=65536)
        set_socket_buffers(flow.peer_port.getHandle(), SOCKET_BUFFER_BYTES)
        flow.peer = peer = (config.peer_ip, flow.peer_port.getHost().port)
        flow.client = client = await connect(
            self.reactor, config.server, config.transport,
            username=config.username, password=config.password, realm=config.realm,
            tls_verify=config.tls_verify, tls_ca_file=config.tls_ca_file, tls_hostname=config.tls_hostname,
            connect_timeout_seconds=config.setup_timeout_seconds, socket_buffer_bytes=SOCKET_BUFFER_BYTES,
            software="txrendezvous load-test", rc=5, rm=4,
        )
        await client.allocate(int(min(3600, max(600, config.seconds + 120))))
        client.on_data = self._receiver(flow)
        if config.mode == "channel":
            await client.channel_bind(CHANNEL, peer)
            send_channel_data = client.send_channel_data
            flow.send = lambda data: send_channel_data(CHANNEL, data)
        else:
            await client.create_permission([peer])
            send_indication = client.send_indication
            flow.send = lambda data: send_indication(peer, data)

    def _receiver(self, flow: _Flow) -> Callable[[tuple[str, int], bytes], None]:
        seconds = self.reactor.seconds
        sent_at = _SENT_AT.unpack_from
        record = self.result.rtt.record
        minimum = _STAMP.size

        def on_data(peer: tuple[str, int], data: bytes) -> None:
            if len(data) < minimum:
                return
            flow.received += 1
            flow.received_bytes += len(data)
            record(seconds() - sent_at(data, 8)[0])

        return on_data

    async def _wait_for_go(self) -> None:
        deadline = self.reactor.seconds() + self.config.setup_timeout_seconds + SPAWN_GRACE_SECONDS
        while not self.go() and not self.stop() and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.01)

    # -- sending and draining ------------------------------------------------------------

    async def _send_and_drain(self) -> None:
        self.start = self.reactor.seconds()
        self._cpu_at_start = self.cpu_clock()
        progress = LoopingCall(self._progress)
        progress.clock = self.reactor
        progress.start(1.0, now=False)
        try:
            self._ticker = LoopingCall(self._tick)
            self._ticker.clock = self.reactor
            await self._ticker.start(self.tick_seconds, now=True)
            self.finished_sending = self.reactor.seconds()
            self._cpu_seconds = self.cpu_clock() - self._cpu_at_start
            # Wait for packets in flight; end early once everything is back.
            deadline = self.finished_sending + self.config.drain_seconds
            while self.reactor.seconds() < deadline and not self.stop():
                if sum(f.received for f in self.flows) >= sum(f.sent for f in self.flows):
                    break
                await deferLater(self.reactor, 0.02)
        finally:
            if progress.running:
                progress.stop()

    def _tick(self) -> None:
        """Each client sends the burst it owes; ends the ticker when time or budget is up."""
        seconds = self.reactor.seconds
        elapsed = seconds() - self.start
        finished = elapsed >= self.config.seconds or self.stop()
        if finished:
            if self.stop():
                self._ticker.stop()
                return
            elapsed = self.config.seconds  # a last burst: what is owed up to the end
        rate, budget, max_burst = self.config.rate, self.budget, self.max_burst
        pack, filler, size = _STAMP.pack, self.filler, self.config.size
        pending = False
        for flow in self.flows:
            if flow.sent >= budget:
                continue
            pending = True
            n = burst_size(flow.sent, elapsed, rate, budget, max_burst)
            if not n:
                continue
            if n == max_burst and max_burst > 1:
                self.result.late_ticks += 1
            if flow.client.write_paused:
                self.result.paused_ticks += 1
                continue
            send, seq, done = flow.send, flow.sent, 0
            try:
                while done < n:
                    send(pack(seq + done, seconds()) + filler)
                    done += 1
            except OSError:  # UDP send buffer full: this packet is lost, the rest wait
                flow.send_errors += 1
                done += 1
            except ConnectionClosed:  # the TCP/TLS connection is gone: count the rest as lost
                flow.send_errors += budget - flow.sent - done
                done = budget - flow.sent
            flow.sent += done
            flow.sent_bytes += done * size
        if finished or not pending:
            self._ticker.stop()

    def _progress(self) -> None:
        flows = self.flows
        self.report("progress", (
            self.reactor.seconds() - self.start,
            sum(f.sent for f in flows),
            sum(f.sent_bytes for f in flows),
            sum(f.echo.received for f in flows),
            sum(f.received for f in flows),
            sum(f.received_bytes for f in flows),
        ))

    # -- teardown and results -----------------------------------------------------------

    async def _teardown(self) -> None:
        closing = [f.client.close(timeout_seconds=TEARDOWN_SECONDS) for f in self.all_flows if f.client]
        if closing:
            await DeferredList(closing, consumeErrors=True)
        stopping = [f.peer_port.stopListening() for f in self.all_flows if f.peer_port is not None]
        await DeferredList([d for d in stopping if isinstance(d, Deferred)], consumeErrors=True)

    def _collect(self) -> WorkerResult:
        result = self.result
        for flow in self.flows:
            result.sent += flow.sent
            result.sent_bytes += flow.sent_bytes
            result.send_errors += flow.send_errors
            result.received += flow.received
            result.received_bytes += flow.received_bytes
            result.peer_received += flow.echo.received
            result.peer_bytes += flow.echo.received_bytes
        if self.start:
            end = self.finished_sending or self.reactor.seconds()
            result.duration_seconds = max(0.001, end - self.start)
            result.busiest_cpu_percent = self._cpu_seconds / result.duration_seconds * 100
            per_client = min(self.budget, int(self.config.rate * result.duration_seconds) + 1)
            result.offered = per_client * len(self.flows)
        return result


def _describe(failure: Any, config: LoadConfig) -> str:
    """A short, stable message for a failed client setup (identical ones are counted)."""
    error = failure.value
    if isinstance(error, CancelledError):
        return f"not set up within --setup-timeout {config.setup_timeout_seconds:g} s"
    if isinstance(error, (TurnError, RealmMismatch)):
        return str(error)
    if isinstance(error, TransactionTimeout):
        return f"no response from {config.server[0]}:{config.server[1]} over {config.transport}"
    text = str(error).strip() or type(error).__name__
    message = f"{type(error).__name__}: {text}"[:300]
    if config.transport == "tls" and type(error).__module__.split(".")[0] in ("OpenSSL", "service_identity"):
        message += " (a self-signed server needs --tls-ca FILE, or --tls-insecure)"
    return message
