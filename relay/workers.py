"""One relay process per core: shared listening ports, disjoint relay-port ranges.

``twistd relay --workers N`` runs N processes. The first spawns the others
(``--worker-index 1..N-1``) with the same arguments and restarts one that
dies; each binds the client-facing UDP, TCP and TLS ports with SO_REUSEPORT,
so the kernel spreads clients over them by their 4-tuple (a UDP client's
datagrams always reach the same worker), and each owns a disjoint slice of
``--relay-ports``, so a peer's datagram reaches the worker holding the
allocation. The workers share the nonce secret (passed in the environment,
never on the command line), so a challenge answered on another connection
still verifies. Children ask the kernel to end them when the first process
ends. SIGHUP and SIGUSR1 sent to the first process reach every worker; a
draining worker that ends is not restarted.
"""

import ctypes
import os
import signal
import socket
import sys

from twisted.application import service
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

log = Logger()

NONCE_SECRET_ENV = "TXRENDEZVOUS_NONCE_SECRET"
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


class ReusePortService(service.Service):
    """A listening UDP or TCP (optionally TLS) socket bound with SO_REUSEPORT."""

    def __init__(self, reactor, kind: str, ip: str, port: int, target, tls_options=None) -> None:
        self.reactor = reactor
        self.kind = kind
        self.ip, self.port_number = ip, port
        self.target = target  # a DatagramProtocol for UDP, a Factory for TCP
        self.tls_options = tls_options
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        kind = socket.SOCK_DGRAM if self.kind == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.ip, self.port_number))
            sock.setblocking(False)
            if self.kind == "udp":
                self.port = self.reactor.adoptDatagramPort(sock.fileno(), family, self.target, 65535)
            else:
                sock.listen(1024)
                factory = self.target
                if self.tls_options is not None:
                    factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
                self.port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        finally:
            sock.close()  # the reactor holds its own duplicate

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


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

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.workers):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        twistd = sys.argv[0]
        args = [sys.executable, twistd, "-n", "--pidfile=", "relay", *self.argv, "--worker-index", str(index)]
        self.processes[index] = self.reactor.spawnProcess(
            _Worker(self, index), sys.executable, args, env=self.env, childFDs={0: "w", 1: 1, 2: 2}
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
