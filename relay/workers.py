"""One relay process per core: shared listening ports, disjoint relay-port ranges.

``twistd relay --workers N`` runs N processes (by default one per core;
``--workers 1`` keeps one). The first spawns the others
(``--worker-index 1..N-1``) with the same arguments and restarts one that
dies; each binds the client-facing UDP, TCP and TLS ports with SO_REUSEPORT,
so the kernel spreads clients over them by their 4-tuple (a UDP client's
datagrams always reach the same worker), and each owns a disjoint slice of
``--relay-ports``, so a peer's datagram reaches the worker holding the
allocation. The first process binds every worker's listening sockets before
any serves and passes them down, so the groups never change while clients
are served (a UDP client would move to another worker). The workers share the nonce secret (passed in the environment,
never on the command line), so a challenge answered on another connection
still verifies. Children ask the kernel to end them when the first process
ends. SIGHUP and SIGUSR1 sent to the first process reach every worker; a
draining worker that ends is not restarted.
"""

import ctypes
import json
import os
import signal
import sys

from twisted.application import service
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from .listening import ListeningPort

log = Logger()

NONCE_SECRET_ENV = "TXRENDEZVOUS_NONCE_SECRET"
LISTENERS_ENV = "TXRENDEZVOUS_LISTENERS"
RESTART_DELAY_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1


def cores() -> int:
    """The CPUs this process may run on (the default number of workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def port_slice(low: int, high: int, workers: int, index: int) -> tuple[int, int]:
    """Worker index's share of [low, high]: disjoint, together the whole range."""
    size = (high - low + 1) // workers
    if size < 2:
        raise ValueError("the relay port range is too small for that many workers")
    start = low + index * size
    return start, high if index == workers - 1 else start + size - 1


def die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the spawning process exits."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warn("cannot set the parent-death signal; stop workers with their parent")


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: "WorkerSupervisor", index: int) -> None:
        self.supervisor = supervisor
        self.index = index

    def processEnded(self, reason) -> None:
        self.supervisor.ended(self.index, reason)


class WorkerSupervisor(service.Service):
    """Spawns workers 1..N-1 of ``twistd relay`` and restarts any that dies."""

    def __init__(self, reactor, workers: int, argv: list[str], nonce_secret: bytes) -> None:
        self.reactor = reactor
        self.workers = workers
        self.argv = argv
        self.env = dict(os.environ, **{NONCE_SECRET_ENV: nonce_secret.hex()})
        self.processes: dict[int, object] = {}
        self.draining = False
        self.listeners: list[ListeningPort] = []  # this process's; the others get copies
        self.sockets: dict[int, list] = {}  # worker index -> [(listener key, socket)]

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # Every worker's sockets join the SO_REUSEPORT groups now, before any
        # client arrives: a socket joining later would move UDP clients
        # (their 4-tuples hash over the group) to a worker without their
        # allocation. A restarted worker gets the same sockets again.
        for index in range(1, self.workers):
            self.sockets[index] = [(listener.key, listener.bind()) for listener in self.listeners]

    def startService(self) -> None:
        if not self.sockets and self.workers > 1 and self.listeners:
            self.privilegedStartService()
        super().startService()
        for index in range(1, self.workers):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        twistd = sys.argv[0]
        args = [sys.executable, twistd, "-n", "--pidfile=", "relay", *self.argv,
                "--workers", str(self.workers), "--worker-index", str(index)]
        child_fds = {0: "w", 1: 1, 2: 2}
        inherited = []
        for fd, (key, sock) in enumerate(self.sockets.get(index, []), start=3):
            child_fds[fd] = sock.fileno()
            inherited.append([*key, fd])
        env = dict(self.env, **{LISTENERS_ENV: json.dumps(inherited)})
        self.processes[index] = self.reactor.spawnProcess(
            _Worker(self, index), sys.executable, args, env=env, childFDs=child_fds
        )
        log.info("started relay worker {index}", index=index)

    def ended(self, index: int, reason) -> None:
        self.processes.pop(index, None)
        if self.draining:
            log.info("relay worker {index} ended while draining", index=index)
        elif self.running:
            log.error("relay worker {index} ended ({reason}); restarting", index=index, reason=reason.value)
            self.reactor.callLater(RESTART_DELAY_SECONDS, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if self.running and index not in self.processes:
            self.spawn(index)

    def signal_workers(self, number: int) -> None:
        """Send a signal (signal.SIGHUP, SIGUSR1, SIGTERM) to every running worker."""
        for process in list(self.processes.values()):
            try:
                process.signalProcess(number)
            except Exception:  # ProcessExitedAlready
                pass

    def drain(self) -> None:
        """Drain every worker (SIGUSR1) and restart none of them from now on."""
        self.draining = True
        self.signal_workers(signal.SIGUSR1)

    def stopService(self):
        super().stopService()
        self.signal_workers(signal.SIGTERM)
        for sockets in self.sockets.values():
            for _, sock in sockets:
                sock.close()
        self.sockets.clear()


def inherited_listeners() -> dict[tuple, int]:
    """In a worker: the listening descriptors the first process passed, by (kind, ip, port)."""
    return {(kind, ip, port): fd for kind, ip, port, fd in json.loads(os.environ.pop(LISTENERS_ENV, "[]"))}
