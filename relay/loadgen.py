"""The relay load generator: TURN clients pushing data through a relay and back.

Each client holds one allocation (RFC 8656 §7) and has a peer of its own: a
UDP socket on ``peer_ip`` that this generator owns, which counts every
datagram the relay delivers and echoes it back to the relayed address it came
from. A packet's round trip is client → relay → peer → relay → client, over
ChannelData (RFC 8656 §12) or Send/Data indications (§11), with the client
side on UDP, TCP or TLS. Both directions are counted: the peer counts what
the relay forwarded to it, the client what came back and how long it took.

The generator works against any TURN server (ours, coturn, ...), so runs can
be compared side by side. It stops by itself: sending ends after ``seconds``
or when the packet budget is spent (``max_packets`` over all clients, never
more than HARD_CAP_PACKETS), in-flight packets get ``drain_seconds`` to
arrive, and every phase has a deadline.

To reach high rates it batches and spreads: each worker sends its clients'
packets in bursts on a short tick (relay/loadgen_worker.py), and
``processes`` worker processes, each running its own reactor and a share of
the clients, keep the generator from being the bottleneck. Their results are
merged: counters add up and the round-trip times go into one log-linear
histogram (relay/loadgen_report.py).

Entry point: ``run(config)`` with a LoadConfig (relay/loadgen_config.py);
``txrendezvous load-test`` (rendezvous/cli/load_test.py) is its command line.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from relay.loadgen_config import LoadConfig
from relay.loadgen_report import Progress, WorkerResult
from relay.loadgen_worker import SPAWN_GRACE_SECONDS, TEARDOWN_SECONDS, Worker


class LoadTestFailed(RuntimeError):
    """The run could not measure anything (e.g. no allocation succeeded)."""


# -- running: in this process or in several --------------------------------------------


def split_clients(clients: int, processes: int) -> list[int]:
    """Share clients among processes as evenly as possible; no process gets none."""
    processes = max(1, min(processes, clients))
    base, extra = divmod(clients, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def hard_deadline_seconds(config: LoadConfig) -> float:
    """The longest a run may take from start to finish, whatever happens."""
    return (config.setup_timeout_seconds + SPAWN_GRACE_SECONDS + config.seconds
            + config.drain_seconds + 2 * TEARDOWN_SECONDS + 10)


def run_in_reactor(config: LoadConfig, first: int, count: int, report: Callable[[str, Any], Any],
                   go: Callable[[], bool], stop: Callable[[], bool]) -> WorkerResult:
    """Run one Worker on this process's (fresh) reactor until it is done.

    Bounded by hard_deadline_seconds: past it the reactor is stopped and
    LoadTestFailed raised.
    """
    from twisted.internet import reactor

    _raise_file_limit(4 * count + 64)
    outcome: dict[str, Any] = {}

    def start() -> None:
        worker = Worker(reactor, config, first, count, report, go, stop)
        done = worker.run()
        done.addCallbacks(lambda r: outcome.setdefault("result", r),
                          lambda f: outcome.setdefault("failure", f))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.callLater(hard_deadline_seconds(config), reactor.stop)
    reactor.run(installSignalHandlers=False)
    if "failure" in outcome:
        outcome["failure"].raiseException()
    if "result" not in outcome:
        raise LoadTestFailed(f"the run did not finish within {hard_deadline_seconds(config):.0f} s")
    return outcome["result"]


def _raise_file_limit(wanted: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def _worker_process(config: LoadConfig, worker: int, first: int, count: int, queue: Any, go: Any,
                    stop: Any) -> None:
    """The body of one worker process: its own reactor, its share of clients."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into ``stop``
    try:
        result = run_in_reactor(config, first, count, lambda kind, payload: queue.put((kind, worker, payload)),
                                go.is_set, stop.is_set)
    except BaseException as e:  # noqa: BLE001 (report anything: the parent must not wait in vain)
        queue.put(("error", worker, f"{type(e).__name__}: {e}"))
    else:
        queue.put(("result", worker, result))


def run(config: LoadConfig, progress: Callable[[str], Any] | None = None, *, stopping: StopFlag | None = None,
        spawn: bool = False, short_progress: bool = False) -> WorkerResult:
    """Run a whole load test and return the merged result.

    ``progress`` receives one line a second while packets flow (the CLI
    prints them to stderr; ``short_progress`` makes it just the rates).
    With ``processes`` > 1, or ``spawn``, the clients are shared among that
    many spawned processes, started together once all are set up (a ramp
    spawns even one: a reactor runs once per process). Ctrl-C ends sending
    early and still reports; a caller running several tests passes its own
    ``stopping`` flag, already installed. Raises LoadTestFailed when no
    client could be set up.
    """
    config.validate()
    shares = split_clients(config.clients, config.processes)
    printer = Progress(progress or (lambda line: None), len(shares), short=short_progress)
    if stopping is None:
        stopping = StopFlag()
        with stopping.on_interrupt():
            result = _run_shares(config, shares, printer, stopping, spawn)
    else:
        result = _run_shares(config, shares, printer, stopping, spawn)
    if not result.allocated:
        reasons = "; ".join(f"{message} (x{count})" for message, count in result.errors.items())
        raise LoadTestFailed(f"no allocation succeeded: {reasons or 'no reason given'}")
    return result


def _run_shares(config: LoadConfig, shares: list[int], printer: Progress, stopping: StopFlag,
                spawn: bool) -> WorkerResult:
    if len(shares) == 1 and not spawn:
        return _run_here(config, printer, stopping)
    return _run_processes(config, shares, printer, stopping)


class StopFlag:
    """Set by the first Ctrl-C; a second one interrupts as usual."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set

    def on_interrupt(self):
        import contextlib

        @contextlib.contextmanager
        def installed():
            def handler(signum: int, frame: Any) -> None:
                if self.set:
                    raise KeyboardInterrupt
                self.set = True
                sys.stderr.write("stopping: finishing up and reporting (Ctrl-C again to abort)\n")

            try:
                previous = signal.signal(signal.SIGINT, handler)
            except ValueError:  # not the main thread
                yield
                return
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)

        return installed()


def _run_here(config: LoadConfig, printer: Progress, stopping: StopFlag) -> WorkerResult:
    def report(kind: str, payload: Any) -> None:
        if kind == "progress":
            printer.update(0, payload)

    return run_in_reactor(config, 0, config.clients, report, lambda: True, stopping)


def _run_processes(config: LoadConfig, shares: list[int], printer: Progress,
                   stopping: StopFlag) -> WorkerResult:
    import multiprocessing
    import queue as queue_module

    # "spawn": each worker starts a clean interpreter and installs its own
    # reactor; forking a process that already has one shares its epoll fd.
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    go, stop = context.Event(), context.Event()
    processes = []
    first = 0
    for worker, count in enumerate(shares):
        process = context.Process(target=_worker_process, name=f"load-test-{worker}", daemon=True,
                                  args=(config, worker, first, count, messages, go, stop))
        process.start()
        processes.append(process)
        first += count
    merged = WorkerResult()
    ready: set[int] = set()
    finished: set[int] = set()
    deadline = time.monotonic() + hard_deadline_seconds(config) + SPAWN_GRACE_SECONDS
    try:
        while len(finished) < len(processes) and time.monotonic() < deadline:
            if stopping():
                stop.set()
            if not go.is_set() and len(ready | finished) == len(processes):
                go.set()
            try:
                kind, worker, payload = messages.get(timeout=0.1)
            except queue_module.Empty:
                kind = None
                for worker, process in enumerate(processes):
                    if worker not in finished and not process.is_alive() and process.exitcode not in (None, 0):
                        finished.add(worker)
                        message = f"worker process exited with code {process.exitcode}"
                        merged.errors[message] = merged.errors.get(message, 0) + shares[worker]
            if kind == "ready":
                ready.add(worker)
            elif kind == "progress":
                printer.update(worker, payload)
            elif kind == "result":
                finished.add(worker)
                merged.merge(payload)
            elif kind == "error":
                finished.add(worker)
                merged.clients += shares[worker]
                merged.errors[payload] = merged.errors.get(payload, 0) + shares[worker]
    finally:
        stop.set()
        go.set()
        for process in processes:
            process.join(timeout=TEARDOWN_SECONDS + 2)
        for process in processes:
            if process.is_alive():  # our own child, ended by its own handle
                process.terminate()
                process.join(timeout=2)
    return merged
