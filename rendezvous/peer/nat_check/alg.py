"""ALG detection: a SIP INVITE carrying our private address, sent over UDP and
TCP to the super node's echo service (``rendezvous.node.echo``, port 5060 by
default; ``--echo-port`` on the node), which sends back the copy it saw;
``rendezvous.peer.sip_probe`` names the fields an ALG on the path rewrote.
Without an echo service the report says ``alg: null`` with the reason
rather than guessing.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol

from rendezvous.peer import sip_probe
from rendezvous.peer.nat_check.probes import Checker, local_ip_toward, show
from rendezvous.peer.nat_check.tcp import TCP_FAILURES
from rendezvous.stun.addresses import Address
from rendezvous.wire.echo_probe import MAX_PROBE_BYTES, EchoCodecError
from rendezvous.wire.echo_probe import decode_reply as decode_echo
from rendezvous.wire.echo_probe import probe as echo_probe

DEFAULT_ECHO_PORT = 5060


class _EchoSocket(DatagramProtocol):
    """A UDP socket whose next echo answer fires ``next_answer()``."""

    def __init__(self) -> None:
        self._waiting: Deferred | None = None

    def next_answer(self) -> Deferred:
        self._waiting = Deferred()
        return self._waiting

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            answer = decode_echo(data)
        except EchoCodecError:
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.callback(answer)


class _EchoStream(Protocol):
    """Fires ``closed`` with all that came back."""

    def __init__(self) -> None:
        self.closed: Deferred = Deferred()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_PROBE_BYTES:
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        if not self.closed.called:
            self.closed.callback(self.buffer)


async def detect_alg(checker: Checker) -> None:
    """A SIP INVITE with our private address through the echo service, over
    UDP and TCP; which fields came back rewritten."""
    report = checker.report
    echo = (checker.server[0], checker.echo_port)
    checker.progress(f"ALG: a SIP INVITE to the echo service at {show(echo)} over UDP and TCP")
    results = await defer.gatherResults([Deferred.fromCoroutine(_echo_udp(checker, echo)),
                                         Deferred.fromCoroutine(_echo_tcp(checker, echo))])
    report.alg_rewritten = dict(zip(("udp", "tcp"), results))
    answered = [fields for fields in results if fields is not None]
    if not answered:
        report.alg_reason = f"no echo service answered at port {checker.echo_port}"
        return
    report.alg = any(answered)
    report.alg_reason = None


async def _echo_udp(checker: Checker, echo: Address) -> list[str] | None:
    listening = checker.reactor.listenUDP(0, _EchoSocket())
    checker.ports.append(listening)
    socket_ = listening.protocol
    local = (local_ip_toward(echo), listening.getHost().port)
    sent = sip_probe.invite(local[0], local[1], echo[0], echo[1], local[1] + 2)
    wait = checker.timing["rto_seconds"]
    for _ in range(4):
        listening.write(echo_probe(sent), echo)
        try:
            payload, _ = await socket_.next_answer().addTimeout(wait, checker.reactor)
        except defer.TimeoutError:
            wait *= 2
            continue
        return sip_probe.rewritten_fields(sent, payload)
    return None


async def _echo_tcp(checker: Checker, echo: Address) -> list[str] | None:
    stream = _EchoStream()
    endpoint = TCP4ClientEndpoint(checker.reactor, echo[0], echo[1], timeout=5)
    try:
        await connectProtocol(endpoint, stream).addTimeout(checker.probe_seconds + 2, checker.reactor)
        local = stream.transport.getHost()
        sent = sip_probe.invite(local.host, local.port, echo[0], echo[1], local.port + 2)
        stream.transport.write(echo_probe(sent))
        payload, _ = decode_echo(await stream.closed.addTimeout(checker.probe_seconds + 2, checker.reactor))
    except (*TCP_FAILURES, EchoCodecError):
        return None
    finally:
        if stream.transport is not None:
            stream.transport.loseConnection()
    return sip_probe.rewritten_fields(sent, payload)
