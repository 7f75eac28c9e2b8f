"""Serving the relay's sockets between reactor turns (relay.datagrams.Stay, relay/_stay.c), on a real epoll reactor.

Each test runs its own ``EPollReactor`` in the test's thread, with the
traffic sent from a second thread over loopback, and counts the reactor's
turns (``doIteration``).
"""

import select
import socket
import threading
import time

import pytest
from twisted.application import service
from twisted.internet.protocol import DatagramProtocol

from relay import datagrams
from relay.datagrams import DatagramPoller, read_loop
from relay.service import add_listeners
from rendezvous.stun import Class, Message, Method
from rendezvous.stun.binding import Addresses, BindingServer

pytestmark = pytest.mark.skipif(datagrams._mmsg is None or not hasattr(select, "epoll"),
                                reason="the stay needs the relay._mmsg extension and epoll (Linux)")

REQUESTS = 300
SAFETY_SECONDS = 20  # every reactor here stops by then whatever happens


def make_reactor():
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    reactor.turns = 0
    turn = reactor.doIteration

    def counted(timeout):
        reactor.turns += 1
        turn(timeout)

    reactor.doIteration = counted
    reactor.callLater(SAFETY_SECONDS, reactor.stop)
    return reactor


def run(reactor, traffic) -> None:
    """Run reactor until traffic(), started in a thread once it runs, has ended; re-raise its failure."""
    failures = []

    def target():
        try:
            traffic()
        except BaseException as e:  # noqa: BLE001 (reported below)
            failures.append(e)
        finally:
            reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(threading.Thread(target=target, daemon=True).start)
    reactor.run(installSignalHandlers=False)
    if failures:
        raise failures[0]


class BindingListener(DatagramProtocol):
    """A client-facing socket as the relay reads it: plain Binding requests answered in C, the rest handled."""

    def __init__(self) -> None:
        self.handled: list[bytes] = []
        self.answered: list[int] = []

    def startProtocol(self) -> None:
        local = self.transport.getHost()
        local = (local.host, local.port)
        self.server = BindingServer(Addresses(*local))
        read_loop(self.transport, self.datagramReceived, self.server.plain_answer_tail(local), self.answered.append)

    def datagramReceived(self, data: bytes, addr) -> None:
        self.handled.append(data)


class Recorder(DatagramProtocol):
    """A plain reactor reader: what it received, and an event set at the first datagram."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.got = threading.Event()

    def datagramReceived(self, data: bytes, addr) -> None:
        self.received.append(data)
        self.got.set()


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def ask(sock: socket.socket, address) -> bytes:
    """One Binding request to address, its answer awaited."""
    request = Message(Method.BINDING, Class.REQUEST)
    sock.sendto(request.encode(), address)
    answer = Message.decode(sock.recv(2048))
    assert answer.transaction_id == request.transaction_id
    return answer


def test_binding_requests_are_answered_without_a_reactor_turn_each():
    """Requests sent one after another are each answered in C, and the reactor turns a few times, not once a
    request; every answer is counted when the stay ends."""
    reactor = make_reactor()
    listener = BindingListener()
    port = reactor.listenUDP(0, listener, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    answers = []

    def traffic():
        with client() as sock:
            for _ in range(REQUESTS):
                answers.append(ask(sock, address))

    run(reactor, traffic)
    assert len(answers) == REQUESTS and listener.handled == []
    assert sum(listener.answered) == REQUESTS
    assert reactor.turns < REQUESTS // 10, f"{reactor.turns} reactor turns for {REQUESTS} requests"


def test_datagrams_left_to_python_reach_the_handler_within_the_stay():
    """A datagram C does not answer goes to the handler, in order among the answered ones, without a reactor
    turn of its own."""
    reactor = make_reactor()
    listener = BindingListener()
    port = reactor.listenUDP(0, listener, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)

    def traffic():
        with client() as sock:
            for i in range(REQUESTS):
                if i % 3 == 0:
                    sock.sendto(b"not stun %d" % i, address)
                ask(sock, address)
            deadline = time.monotonic() + 5
            while len(listener.handled) < REQUESTS // 3 and time.monotonic() < deadline:
                time.sleep(0.01)

    run(reactor, traffic)
    assert listener.handled == [b"not stun %d" % i for i in range(0, REQUESTS, 3)]
    assert reactor.turns < REQUESTS // 10, f"{reactor.turns} reactor turns for {REQUESTS} requests"


def test_timed_calls_and_other_readers_are_served_while_traffic_flows():
    """Steady traffic to a C-served socket holds back neither a timed call nor another reader's datagram: each
    is served within a second, long before the stay's bound of waits would end it (a request every 2 ms)."""
    reactor = make_reactor()
    listener, other = BindingListener(), Recorder()
    port = reactor.listenUDP(0, listener, interface="127.0.0.1")
    other_port = reactor.listenUDP(0, other, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    fired = threading.Event()
    asked = []
    reactor.callLater(0.1, lambda: (asked.append(len(asked)), fired.set()))

    def traffic():
        with client() as sock:
            deadline = time.monotonic() + 10
            while not fired.is_set() and time.monotonic() < deadline:
                ask(sock, address)
                asked.append(None)
                time.sleep(0.002)
            sock.sendto(b"for the other reader", ("127.0.0.1", other_port.getHost().port))
            for _ in range(250):
                if other.got.is_set():
                    break
                ask(sock, address)
                time.sleep(0.002)
            asked.append("other" if other.got.is_set() else "not yet")

    assert datagrams.STAY_WAKEUPS > 500
    run(reactor, traffic)
    timer = next(i for i, value in enumerate(asked) if value is not None and value != "other")
    assert timer < 500, f"the timed call due at 0.1 s came after {timer} requests"
    assert asked[-1] == "other" and other.received == [b"for the other reader"]


def test_a_stop_from_a_thread_ends_the_stay():
    """reactor.stop() called from another thread while requests keep coming stops the reactor."""
    reactor = make_reactor()
    listener = BindingListener()
    port = reactor.listenUDP(0, listener, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    flowing = threading.Event()
    ended = threading.Event()

    def keep_asking():
        with client() as sock:
            sock.settimeout(0.5)
            deadline = time.monotonic() + 10
            while not ended.is_set() and time.monotonic() < deadline:
                try:
                    ask(sock, address)
                except socket.timeout:
                    return
                flowing.set()

    asker = threading.Thread(target=keep_asking, daemon=True)

    def traffic():
        asker.start()
        assert flowing.wait(5)
        time.sleep(0.1)  # the run() helper's callFromThread(stop) follows, under traffic

    started = time.monotonic()
    try:
        run(reactor, traffic)
    finally:
        ended.set()
        asker.join(5)
    assert time.monotonic() - started < SAFETY_SECONDS / 2, "the reactor ran until its safety stop"


class PortWithoutAllocation:
    """A relay socket stand-in the poller's C pass leaves to Python (no ``allocation``): doRead drains it."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.read: list[bytes] = []

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        while True:
            try:
                self.read.append(self.socket.recv(100))
            except BlockingIOError:
                return


def test_the_relay_sockets_poller_is_served_between_turns():
    """Datagrams to the relay sockets' poller are read within the stay (here each is left to Python), and the
    poller stops being served when idle() finds its last socket gone."""
    reactor = make_reactor()
    poller = DatagramPoller(reactor)
    relay = PortWithoutAllocation()
    poller.add(relay)
    stay = datagrams.stay_for(reactor)
    assert poller.fileno() in stay.served

    def traffic():
        with client() as sock:
            for i in range(REQUESTS):
                sock.sendto(b"%d" % i, relay.socket.getsockname())
                deadline = time.monotonic() + 5
                while len(relay.read) <= i and time.monotonic() < deadline:
                    time.sleep(0.0002)

    try:
        run(reactor, traffic)
        assert relay.read == [b"%d" % i for i in range(REQUESTS)]
        assert reactor.turns < REQUESTS // 10, f"{reactor.turns} reactor turns for {REQUESTS} datagrams"
        poller.remove(relay)
        poller.idle()
        assert poller.fileno() not in stay.served
    finally:
        relay.socket.close()


HOLD_SECONDS = 0.001  # the most --wakeup-hold allows
BURST = 32  # requests at once: a wakeup after them reads more than relay/_stay.c's BUSY


def steady(address, requests: int, spacing: float, burst_every: int = 0) -> int:
    """Send requests Binding requests to address spacing seconds apart, without waiting on each (and after
    every burst_every-th, BURST more at once); the answers."""
    def waiting(sock) -> int:
        got = 0
        while True:
            try:
                got += len(sock.recv(2048)) > 0
            except BlockingIOError:
                return got

    answers = 0
    with client() as sock:
        sock.setblocking(False)
        request = Message(Method.BINDING, Class.REQUEST).encode()
        for index in range(requests):
            sock.sendto(request, address)
            if burst_every and index % burst_every == burst_every - 1:
                datagrams._mmsg.send(sock.fileno(), socket.AF_INET, [(request, address)] * BURST)
                requests += BURST
            time.sleep(spacing)
            answers += waiting(sock)
        deadline = time.monotonic() + 5
        while answers < requests and time.monotonic() < deadline:
            time.sleep(0.001)
            answers += waiting(sock)
    return answers


def held(hold: float, traffic) -> tuple[int, BindingListener]:
    """Run traffic(address) against a Binding listener on a reactor whose stay may hold hold seconds; the holds
    made meanwhile, and the listener."""
    reactor = make_reactor()
    datagrams.hold_wakeups(reactor, hold)
    listener = BindingListener()
    port = reactor.listenUDP(0, listener, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    before = datagrams._receiver.holds
    run(reactor, lambda: traffic(address))
    return datagrams._receiver.holds - before, listener


@pytest.mark.parametrize("hold", [HOLD_SECONDS, 0.0])
def test_a_steady_light_load_is_served_in_held_wakeups(hold):
    """Requests that come one per wakeup, steadily, make the stay hold before its waits (each hold gathering
    several), when a hold is allowed; every request is answered either way."""
    sent = REQUESTS * 5
    answers = []
    holds, listener = held(hold, lambda address: answers.append(steady(address, sent, 0.0001)))
    assert answers == [sent] and sum(listener.answered) == sent
    if hold:
        assert REQUESTS // 10 < holds < sent // 2, f"{holds} holds for {sent} requests"
    else:
        assert holds == 0


@pytest.mark.skipif(datagrams._mmsg is None, reason="relay._mmsg is built on Linux only")
def test_a_burst_within_a_steady_load_is_served_at_once_and_the_holds_go_on():
    """A burst in a steady light load is read without a hold after the wakeup that found it (a backlog waits
    for nothing), and the holds go on after it, where a burst used to end them for a window of unheld
    wakeups."""
    sent = REQUESTS * 5
    answers = []
    holds, listener = held(HOLD_SECONDS, lambda address: answers.append(steady(address, sent, 0.0001, 40)))
    total = sent + sent // 40 * BURST
    assert answers == [total] and sum(listener.answered) == total
    assert holds > sent // 10, f"{holds} holds for {sent} steady requests with a burst every 40"


def test_holds_back_off_for_a_client_waiting_on_each_answer():
    """A client that sends its next request only after the answer gains nothing from a hold: the stay tries
    holds, finds they gather one request each, and backs off, holding before fewer than one in fifteen."""
    asked = REQUESTS * 5

    def traffic(address):
        with client() as sock:
            for _ in range(asked):
                ask(sock, address)

    holds, listener = held(HOLD_SECONDS, traffic)
    assert sum(listener.answered) == asked
    assert 0 < holds < asked // 15, f"{holds} holds for {asked} requests, each awaited"


def test_the_listeners_set_the_reactors_hold():
    """add_listeners gives its reactor's stay the operator's --wakeup-hold."""
    reactor = make_reactor()
    addresses = Addresses(ip="127.0.0.1", port=0)
    add_listeners(service.MultiService(), [addresses], BindingServer(addresses), None, reactor=reactor,
                  wakeup_hold_us=250)
    assert datagrams.stay_for(reactor).hold == pytest.approx(250e-6)
