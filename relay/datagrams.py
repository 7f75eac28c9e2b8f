"""Socket helpers for the relay data path: UDP buffers, batched reads and writes, one poller.

The relay's UDP sockets (client-facing and relayed) carry every relayed
packet, so the per-datagram work of reading and writing them is kept to the
socket calls themselves, and those calls are batched: a read loop takes up
to 64 datagrams per ``recvmmsg`` and, while it handles them (a *read
pass*), what the handlers write queues per socket and leaves in one
``sendmmsg`` per socket when the pass ends (``relay._mmsg``, Linux); frames
for TCP and TLS clients gather the same way and leave in one write per
connection (``StreamOutbox``). The relay sockets share one reader of the
reactor (``DatagramPoller``), whose wakeup is one pass.

Within a pass, the extension relays in C what is plainly routed (RFC 8656
§11, §12; relay/_route.c): ChannelData from a client in a client-facing
socket's routes to its peer, and datagrams from permitted peers to UDP
clients as ChannelData or Data indications. It reads the tables and bumps
the counters the Python data path keeps (``relay.allocation``), and hands
Python whatever is not plain (a bandwidth limit, a stream client, a route
not yet made). ``bench/relay_datapath.py`` and ``bench/udp_floor.py`` time
it. Without the extension (not Linux) the same loops use ``recvfrom`` and
``sendto`` and Python relays everything.

After a wakeup of those sockets, ``Stay`` keeps waiting in C on the
reactor's own epoll (relay/_stay.c) and serves them again, until
something else needs the reactor: a wakeup then costs no turn of the
reactor's Python loop (about 4 µs, ``bench/reactor_wakeup.py``). Under a
steady light load, where each datagram would be a wakeup of its own, the
stay holds briefly before its waits so that one wakeup serves several
(``hold_wakeups``, the operator's ``--wakeup-hold``).
"""

import os
import select
import socket
import weakref
from functools import partial

from twisted.internet import tcp, udp
from twisted.logger import Logger
from twisted.python.failure import Failure

from rendezvous.stun.addresses import Address

try:
    from . import _mmsg
except ImportError:  # built on Linux only (setup.py)
    _mmsg = None

log = Logger()

# Room for a whole UDP datagram (RFC 8656 §12.4 ChannelData up to 65535 bytes
# of data; an IPv4 UDP payload is at most 65507): nothing is truncated.
MAX_DATAGRAM_BYTES = 65536
# Datagrams per recvmmsg, and read per wakeup before other sockets get their turn.
BATCH = 64
MAX_READS_PER_WAKEUP = 4 * BATCH
# Waits one Stay serves in C, and rounds of datagrams it hands Python, before the reactor has a turn anyway.
STAY_WAKEUPS = 1024
STAY_ROUNDS = 64
# What relay/_stay.c does with a ready descriptor: a client-facing socket's batch, or a DatagramPoller's pass.
_SERVE_SOCKET, _SERVE_RELAYS = 0, 1


def set_buffers(sock: socket.socket, size: int) -> None:
    """Enlarge a UDP socket's buffers, forcing past rmem_max when privileged."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


class _ReadPass:
    """The outboxes written during the read pass under way (None: no pass)."""

    dirty: list | None = None


_pass = _ReadPass()
# The buffers of every recvmmsg in this process (the reactor reads one socket at a time).
_receiver = None if _mmsg is None else _mmsg.Receiver(BATCH, MAX_DATAGRAM_BYTES)


def read_pass(read) -> None:
    """Call read() with writes queued, then send every queue; a pass inside a pass joins it."""
    if _pass.dirty is not None:
        read()
        return
    _pass.dirty = dirty = []
    try:
        read()
    finally:
        _pass.dirty = None
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:  # one socket's failure must not strand the others' queues
                log.failure("sending what was queued for {outbox}", outbox=outbox)


class Outbox:
    """One UDP socket's outgoing datagrams: sent at once, or at the end of a read pass.

    UDP may drop, so a send error is not raised.
    """

    __slots__ = ("socket", "family", "queue")

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.family = int(sock.family)  # socket.family builds an enum on every read
        self.queue: list = []

    def write(self, data: bytes, addr: Address) -> None:
        dirty = _pass.dirty
        if dirty is None:
            try:
                self.socket.sendto(data, addr)
            except (OSError, OverflowError):
                pass  # an ICMP error, a full buffer or an unusable address: UDP may drop
            return
        if not self.queue:
            dirty.append(self)
        self.queue.append((data, addr))

    def sender(self, addr: Address) -> "Sender":
        """A callable writing one datagram to addr (an allocation's way to its UDP client)."""
        return Sender(self, addr)

    def flush(self) -> None:
        queue, self.queue = self.queue, []
        sock = self.socket
        fd = sock.fileno()
        if fd < 0:
            return  # closed during the pass: the datagrams die with it
        if _mmsg is not None:
            _mmsg.send(fd, self.family, queue)
            return
        for data, addr in queue:
            try:
                sock.sendto(data, addr)
            except (OSError, OverflowError):
                pass


class Sender:
    """One UDP client's address through one socket's ``Outbox``: called with a datagram, it writes it.

    An object rather than a closure so the C read pass can see the socket and
    the address it names (relay/_route.c).
    """

    __slots__ = ("outbox", "addr")

    def __init__(self, outbox: Outbox, addr: Address) -> None:
        self.outbox = outbox
        self.addr = addr

    def __call__(self, data: bytes) -> None:
        self.outbox.write(data, self.addr)


if _mmsg is not None:
    _mmsg.recognize(Outbox.write, Sender)


class StreamOutbox:
    """One TCP or TLS client connection's relayed frames: during a read pass they gather
    and leave in one write when it ends.

    On plain TCP, when Twisted has nothing queued for the connection, that
    write is a direct ``send``: Twisted's own would register the socket for
    writing and send on the reactor's next turn (two ``epoll_ctl`` calls and
    a turn per write). What ``send`` does not take goes to Twisted's
    buffer, behind which every later write queues.
    """

    __slots__ = ("transport", "queue", "eager")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.queue: list = []
        self.eager = isinstance(transport, tcp.Connection)  # TLS writes go through its own layer

    def __repr__(self) -> str:
        return f"<StreamOutbox {self.transport!r}>"

    def write(self, data: bytes) -> None:
        dirty = _pass.dirty
        if dirty is None:
            self.transport.write(data)
            return
        if not self.queue:
            dirty.append(self)
        self.queue.append(data)

    def flush(self) -> None:
        queue, self.queue = self.queue, []
        data = b"".join(queue)
        transport = self.transport
        if not (self.eager and transport.connected and not transport.disconnecting
                and not transport.dataBuffer and not transport._tempDataBuffer):
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.write(data)  # Twisted's write path reports the broken connection
            return
        if sent < len(data):
            transport.write(data[sent:])


def read_loop(port, handler, binding_tail: bytes | None = None, answered=None, routes: dict | None = None,
              answer=None) -> None:
    """Make a listening ``twisted.internet.udp.Port`` (or a ``RelaySocket``: anything with ``socket`` and
    ``addressFamily``) hand datagrams straight to handler(data, addr).

    It replaces the port's ``doRead`` with one read pass doing what
    Twisted's does (read until the socket is empty, at most
    MAX_READS_PER_WAKEUP datagrams; ignore EAGAIN, EINTR and ECONNREFUSED;
    log an exception from the handler and go on), with addresses reduced to
    (host, port) and up to BATCH datagrams per system call.

    With ``binding_tail`` (``BindingServer.plain_answer_tail``) and the
    extension, plain STUN Binding requests are answered in C inside each
    batch (relay/_binding.c) and ``answered(count)`` is told how many; with
    ``routes`` (a client-facing socket's client address -> Allocation),
    routed ChannelData is relayed in C (relay/_route.c); with ``answer``
    (a client-facing socket's ``ServerDatagramProtocol.answer``), a TURN
    request is handed to answer(data, addr) inside the batch and the
    response it returns sent from C, with no read pass (relay/_mmsg.c).
    Only the other datagrams reach handler.
    """
    sock = port.socket
    ipv6 = port.addressFamily == socket.AF_INET6

    def take() -> tuple[int, list]:
        """One batch: how many datagrams were read, and those left for handler."""
        if binding_tail is None and routes is None and answer is None:
            batch = _receiver.recv(sock)
            return len(batch), batch
        received, fast, batch = _receiver.recv_serving(sock, binding_tail, routes, answer)
        if fast:
            answered(fast)
        return received, batch

    def handle(received: int, batch: list) -> None:
        """Hand batch to handler and read on until the socket is empty (MAX_READS_PER_WAKEUP in all)."""
        for reads in range(MAX_READS_PER_WAKEUP // BATCH):
            if reads:
                received, batch = take()
            for data, addr in batch:
                try:
                    handler(data, addr)
                except Exception:
                    log.failure("handling a datagram from {addr}", addr=addr)
            if received < BATCH:
                return  # the socket is empty

    def read_batches() -> None:
        # C sends what it answers and relays itself, so the pass (its bookkeeping) is paid only when
        # Python has datagrams to handle or more wait.
        received, batch = take()
        if batch or received == BATCH:
            read_pass(lambda: handle(received, batch))
        if stay is not None:
            stay()

    def read_one_by_one() -> None:
        recvfrom = sock.recvfrom
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, addr = recvfrom(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                return
            if ipv6:
                addr = addr[:2]
            try:
                handler(data, addr)
            except Exception:
                log.failure("handling a datagram from {addr}", addr=addr)

    stay = None
    if _mmsg is None:
        port.doRead = lambda: read_pass(read_one_by_one)
        return
    port.doRead = read_batches
    if binding_tail is not None or routes is not None or answer is not None:
        stay = stay_for(getattr(port, "reactor", None))
    if stay is not None:
        stay.serve(port, (port, _SERVE_SOCKET, binding_tail, routes, answered, answer), lambda rest: handle(0, rest))
        lost = port.connectionLost

        def connection_lost(reason=None) -> None:
            stay.forget(port)
            lost(reason)

        port.connectionLost = connection_lost


class Stay:
    """One reactor's wait, done in C while only sockets C serves are ready (relay/_stay.c).

    A reader C serves (a client-facing socket's ``read_loop``, a
    ``DatagramPoller``) calls it at the end of its ``doRead``. It waits on
    the reactor's epoll with the reactor's timeout and serves those readers
    in C while nothing else is ready; the datagrams C leaves are handled
    here, in a read pass, and the wait goes on with the timeout taken again
    (their handlers may have scheduled calls). It returns to the reactor
    when anything else is ready, a timed call is due, a thread queued a
    call, a TURN request handed to Python in C scheduled a timed call, the
    reactor was told to stop, or after ``STAY_ROUNDS`` rounds: the
    reactor's next poll finds that event still ready. Only Twisted's epoll
    reactor is waited on (``stay_for``).
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.epoll_fd = reactor._poller.fileno()
        self.served: dict[int, tuple] = {}  # descriptor -> (reader, what C does, its arguments)
        self.leftovers: dict[int, object] = {}  # descriptor -> what handles the datagrams C left
        self.hold = 0.0  # seconds; hold_wakeups

    def serve(self, reader, entry: tuple, leftovers) -> None:
        """Serve reader (entry: see relay/_stay.c) between turns; leftovers(rest) handles what C leaves."""
        fd = reader.fileno()
        self.served[fd] = entry
        self.leftovers[fd] = leftovers

    def forget(self, reader) -> None:
        """Stop serving reader (before its descriptor closes)."""
        fd = reader.fileno()
        entry = self.served.get(fd)
        if entry is not None and entry[0] is reader:
            del self.served[fd], self.leftovers[fd]

    def __call__(self) -> None:
        reactor = self.reactor
        for _ in range(STAY_ROUNDS):
            # A stop() during this turn is seen by the reactor's loop, not by a wait.
            if not (reactor.running and reactor._started) or reactor._justStopped:
                return
            timeout = reactor.timeout()
            if timeout is not None and timeout <= 0:
                return
            try:
                left = _receiver.stay(self.epoll_fd, -1.0 if timeout is None else timeout, reactor._selectables,
                                      self.served, reactor.threadCallQueue, STAY_WAKEUPS, self.hold,
                                      reactor._newTimedCalls)
            except Exception:  # out of memory, say: the reactor's next turn reads on
                log.failure("serving the relay's sockets between reactor turns")
                return
            if left is None:
                return
            fd, rest = left
            handle = self.leftovers.get(fd)
            if handle is not None:
                read_pass(partial(handle, rest))


_stays: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def hold_wakeups(reactor, seconds: float) -> None:
    """Let reactor's Stay hold up to seconds before a wait under a steady light load (relay/_stay.c); 0: never."""
    stay = stay_for(reactor)
    if stay is not None:
        stay.hold = seconds


def stay_for(reactor) -> Stay | None:
    """reactor's Stay: None without the extension or for a reactor other than Twisted's epoll reactor."""
    if _mmsg is None or not isinstance(getattr(reactor, "_poller", None), select.epoll):
        return None
    stay = _stays.get(reactor)
    if stay is None:
        stay = _stays[reactor] = Stay(reactor)
    return stay


class DatagramPoller:
    """Many UDP sockets behind one reader of the reactor: an epoll of their own (Linux).

    What it reads has ``fileno`` and ``doRead`` (a ``RelaySocket`` of
    ``relay.relay_ports``, whose ``doRead`` is a ``read_loop``). With the
    extension, a wakeup is one call into C that reads every ready
    ``RelaySocket`` and relays what its ``allocation`` routes plainly
    (relay/_route.c); the rest goes to the socket's ``handler``.

    The reactor dispatches each ready descriptor through
    ``log.callWithLogger``, about 2 µs a time here; with the relay sockets
    behind one epoll, a wakeup pays that once however many of them are
    ready, plus one ``epoll_wait`` that does not block.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._epoll = select.epoll()
        self._ports: dict = {}  # descriptor -> what reads it
        self._stay = stay_for(reactor)
        self._reading = False  # a reader of the reactor (and served by its stay)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "relay sockets"

    def add(self, port) -> None:
        fd = port.fileno()
        if fd in self._ports:
            return
        self._ports[fd] = port
        self._epoll.register(fd, select.EPOLLIN)
        if not self._reading:
            self._reading = True
            self.reactor.addReader(self)
            if self._stay is not None:
                entry = (self, _SERVE_RELAYS, self._ports, MAX_READS_PER_WAKEUP // BATCH)
                self._stay.serve(self, entry, self._handle)

    def descriptors(self) -> list[int]:
        """The file descriptors of the sockets it reads."""
        return list(self._ports)

    def remove(self, port) -> None:
        """Stop reading port (before it closes: its descriptor finds it).

        The poller stays a reader of the reactor without sockets until
        ``idle``: at a paced allocation rate each allocation is often the
        only one, and leaving and joining the reactor cost two ``epoll_ctl``
        and the stay's bookkeeping a cycle (``bench/allocation_rate.py``).
        """
        fd = port.fileno()
        if self._ports.get(fd) is not port:
            return
        del self._ports[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # already closed: the kernel dropped it

    def idle(self) -> None:
        """Stop being a reader of the reactor if no socket is left (``RelayPorts`` asks once a second)."""
        if self._ports or not self._reading:
            return
        self._reading = False
        self.reactor.removeReader(self)
        if self._stay is not None:
            self._stay.forget(self)

    def doRead(self) -> None:
        if _mmsg is None:
            read_pass(self._read_ready)
            return
        # C sends what it relays itself: a read pass is needed only for what it leaves to Python.
        try:
            rest = _receiver.poll_relays(self._epoll.fileno(), self._ports, MAX_READS_PER_WAKEUP // BATCH)
        except Exception:  # out of memory, say: what was read is lost, the sockets stay read
            log.failure("relaying from the relay sockets")
            return
        if rest:
            read_pass(lambda: self._handle(rest))
        if self._stay is not None:
            self._stay()

    def _read_ready(self) -> None:
        ports = self._ports
        for fd, _ in self._epoll.poll(0):
            port = ports.get(fd)
            if port is None:
                continue
            try:
                port.doRead()
            except Exception:
                # Twisted would close a port whose read failed; stop reading it.
                log.failure("reading {port}", port=port)
                self.remove(port)

    def _handle(self, rest: list) -> None:
        """What the C pass left: datagrams to handlers, ports to read, failures."""
        for port, data, addr in rest:
            if addr is not None and data is None:
                # Twisted would close a port whose read failed; stop reading it.
                log.failure("reading {port}", Failure(addr), port=port)
                self.remove(port)
                continue
            try:
                if data is None:
                    port.doRead()
                else:
                    port.handler(data, addr)
            except Exception:
                log.failure("reading {port}", port=port)
                if data is None:
                    self.remove(port)

    def connectionLost(self, reason) -> None:
        if self._stay is not None:
            self._stay.forget(self)
        self._ports.clear()
        self._reading = False


def receive_drops(reactor) -> int:
    """Datagrams the kernel dropped, since each socket opened, on the UDP sockets this process reads.

    The ``drops`` column of /proc/self/net/udp and udp6 (full receive
    buffers, mostly), summed over the sockets the reactor or a
    ``DatagramPoller`` reads; 0 where /proc is missing.
    """
    fds = []
    for reader in reactor.getReaders():
        if isinstance(reader, DatagramPoller):
            fds.extend(reader.descriptors())
        elif getattr(getattr(reader, "socket", None), "type", None) == socket.SOCK_DGRAM:
            fds.append(reader.fileno())  # a udp.Port, or a relay socket the reactor reads (no epoll)
    inodes = set()
    for fd in fds:
        try:
            inodes.add(str(os.fstat(fd).st_ino))
        except OSError:
            pass
    drops = 0
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] in inodes:
                        drops += int(fields[12])
        except OSError:
            continue
    return drops
