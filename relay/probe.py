"""A TURN relay's security self-test: what ``txrendezvous probe-relay`` runs against an operator's own relay.

It tries, as an ordinary client with valid credentials, what attackers try
on TURN servers (RFC 8656 §21, security considerations; the checks are in
``relay.probe_checks``): peers in internal and metadata ranges in every
address spelling, the relay's own ports, allocations without or with wrong
credentials, 401 amplification and, when asked, the per-user quota. Works
against any RFC 8656 server.

It never sends a packet to a forbidden address itself, and does not need
anything to live there: every request goes to the relay, and the verdict is
whether the relay *grants* the CreatePermission, ChannelBind or Connect
(403 Forbidden is closed). Only the relay's own ports get data, through the
relay, to see whether it comes back. Everything is bounded: one request at
a time per allocation but for Connects (at most CONCURRENT_CONNECTS), each
request by ``timeout_seconds``, the whole run by ``max_seconds``, the quota
check by QUOTA_CHECK_MAX allocations; every allocation made is deleted.

Front door::

    report = await probe(reactor, ProbeConfig(("203.0.113.7", 3478), "alice", "secret"))
    print(report.text())
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import Logger

from rendezvous.stun import Attr, Method
from rendezvous.stun.addresses import Address
from rendezvous.stun.attributes import encode_address_family, encode_requested_transport
from rendezvous.stun.constants import AddressFamily

from . import probe_checks
from .client import ConnectionClosed, RealmMismatch, TransactionTimeout, TurnClient, TurnError, connect
from .client_transactions import request
from .probe_checks import TCP, UDP
from .probe_verdicts import Report

log = Logger()

DEFAULT_METRICS_PORT = 9641
QUOTA_CHECK_MAX = 1000
CONCURRENT_CONNECTS = 8


class ProbeFailed(Exception):
    """The probe could not start: the relay did not answer, refused the credentials, or allocated nothing."""


@dataclass(frozen=True)
class ProbeConfig:
    """What to probe and how far to go."""

    server: tuple[str, int]
    username: str
    password: str
    realm: str | None = None
    transport: str = "udp"  # how the probe's allocations are made: udp, tcp or tls
    also_ports: tuple[int, ...] = ()  # more of the relay host's own ports to try through it
    metrics_port: int | None = DEFAULT_METRICS_PORT
    quota_check: int = 0  # allocations to try for the per-user quota; 0 skips the check
    max_amplification: float = 5.0
    timeout_seconds: float = 3.0
    max_seconds: float = 180.0
    tls_verify: bool = True
    tls_ca_file: str | None = None
    tls_hostname: str | None = None

    def validate(self) -> ProbeConfig:
        """Return self, or raise ValueError naming the bad setting."""
        host, port = self.server
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad server address {host}:{port}")
        if self.transport not in ("udp", "tcp", "tls"):
            raise ValueError("the transport must be udp, tcp or tls")
        if not 0 <= self.quota_check <= QUOTA_CHECK_MAX:
            raise ValueError(f"--quota-check must be between 0 and {QUOTA_CHECK_MAX}")
        for extra in self.also_ports:
            if not 0 < extra < 65536:
                raise ValueError(f"--also-port {extra} is not a port")
        if not 0.1 <= self.timeout_seconds <= 60 or not 1 <= self.max_seconds <= 3600:
            raise ValueError("--timeout must be 0.1-60 s and --max-seconds 1-3600 s")
        if self.max_amplification <= 0:
            raise ValueError("--max-amplification must be positive")
        return self


class Session:
    """One run's clients and allocations, its clock and its deadline; the checks work through it."""

    def __init__(self, reactor: Any, config: ProbeConfig, server_ip: str) -> None:
        self.reactor = reactor
        self.config = config
        self.server_ip = server_ip
        self.deadline = reactor.seconds() + config.max_seconds
        self.clients: list[TurnClient] = []
        # Allocations by (protocol, family): the client, or the reason there is none.
        self.allocations: dict[tuple[int, int], TurnClient | str] = {}
        self.connects = DeferredSemaphore(CONCURRENT_CONNECTS)
        self._answers: dict[bytes, Deferred] = {}  # own-port echoes waited for, by transaction id

    def time_left(self) -> float:
        return self.deadline - self.reactor.seconds()

    def timeout(self) -> float:
        return max(0.0, min(self.config.timeout_seconds, self.time_left()))

    async def client(self, transport: str | None = None, password: str | None = None) -> TurnClient:
        """A new client of the relay (closed by ``close``); fails like relay.client.connect."""
        config = self.config
        host = self.server_ip if (transport or config.transport) == "udp" else config.server[0]
        client = await connect(
            self.reactor, (host, config.server[1]), transport or config.transport,
            username=config.username, password=config.password if password is None else password,
            realm=config.realm, tls_verify=config.tls_verify, tls_ca_file=config.tls_ca_file,
            tls_hostname=config.tls_hostname, connect_timeout_seconds=config.timeout_seconds,
            keep_alive=False,
        )
        self.clients.append(client)
        client.on_data = self._data
        return client

    async def ask(self, call: Deferred) -> Any:
        """Wait for a request's Deferred, within ``timeout()``; TimeoutError past it."""
        call.addTimeout(self.timeout(), self.reactor)
        return await call

    async def allocate(self, protocol: int, family: int) -> None:
        """Make the (protocol, family) allocation, or record why the relay would not."""
        transport = self.config.transport
        if protocol == TCP:
            transport = "tls" if transport == "tls" else "tcp"  # RFC 6062 §4.1: over TCP or TLS
        try:
            client = await self.client(transport)
            await self.ask(Deferred.fromCoroutine(allocate(client, protocol, family)))
        except TurnError as e:
            self.allocations[(protocol, family)] = f"{e.code} {e.reason}".rstrip()
        except (TimeoutError, TransactionTimeout, ConnectionClosed, ConnectError, OSError) as e:
            self.allocations[(protocol, family)] = f"no allocation: {e.__class__.__name__}"
        else:
            self.allocations[(protocol, family)] = client

    def allocation(self, protocol: int, family: int) -> tuple[TurnClient | None, str]:
        """The allocation for peers of family (or, failing that, the IPv4 one), and a note when there is none."""
        found = self.allocations.get((protocol, family))
        if not isinstance(found, TurnClient):
            found = self.allocations.get((protocol, 4))
        if isinstance(found, TurnClient):
            return found, ""
        return None, str(found or "not tried")

    def expect_answer(self, transaction_id: bytes) -> Deferred:
        """A Deferred that fires with the peer when data carrying this STUN transaction comes back."""
        waiter: Deferred = Deferred(lambda _: self._answers.pop(transaction_id, None))
        self._answers[transaction_id] = waiter
        return waiter

    def _data(self, peer: Address, data: bytes) -> None:
        waiter = self._answers.pop(data[8:20], None) if len(data) >= 20 else None
        if waiter is not None:
            waiter.callback(peer)

    async def close(self, clients: list[TurnClient] | None = None) -> None:
        """Delete the allocations of clients (default: all) and close them; never fails."""
        closing = list(self.clients) if clients is None else clients
        for client in closing:
            self.clients.remove(client)
        await DeferredList([c.close(timeout_seconds=self.config.timeout_seconds) for c in closing],
                           consumeErrors=True)


async def allocate(client: TurnClient, protocol: int, family: int) -> Address:
    """Allocate (RFC 8656 §7.1): UDP or, over TCP/TLS, TCP (RFC 6062 §5.1), IPv4 or IPv6 (§7.1 REQUESTED-ADDRESS-FAMILY)."""
    if protocol == UDP and family == 4:
        return await client.allocate()

    def build(message) -> None:
        message.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(protocol))
        if family == 6:
            message.add(Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6))

    response = await request(client, Method.ALLOCATE, build)
    client.relayed_address = response.address(Attr.XOR_RELAYED_ADDRESS)  # so close() deletes it
    return client.relayed_address


async def run(reactor: Any, config: ProbeConfig) -> Report:
    """Run every check against the relay; the Report. Fails with ProbeFailed when it cannot start."""
    started = reactor.seconds()
    host, port = config.server
    try:
        server_ip = str(ipaddress.ip_address(host))
    except ValueError:
        try:
            server_ip = await reactor.resolve(host)
        except DNSLookupError as e:
            raise ProbeFailed(f"cannot resolve {host}: {e}") from None
    session = Session(reactor, config, server_ip)
    report = Report(f"{host}:{port}", config.transport)
    try:
        await _start(session)
        report.verdicts += await probe_checks.credentials(session)
        report.verdicts.append(await probe_checks.amplification(session))
        for protocol, family in ((UDP, 6), (TCP, 4), (TCP, 6)):
            await session.allocate(protocol, family)
            if not isinstance(session.allocations[(protocol, family)], TurnClient):
                report.notes.append(_missing(protocol, family, session.allocations[(protocol, family)]))
        report.verdicts += await probe_checks.peer_ranges(session)
        report.verdicts += await probe_checks.own_ports(session)
        await session.close()
        if config.quota_check:
            report.verdicts.append(await probe_checks.quota(session))
    finally:
        await session.close()
    report.seconds = reactor.seconds() - started
    return report


def _missing(protocol: int, family: int, why: str) -> str:
    """What a run without the (protocol, family) allocation asks instead, for the report's notes."""
    kind = f"{'UDP' if protocol == UDP else 'TCP'} IPv{family}"
    if protocol == UDP:
        return f"no {kind} allocation ({why}): IPv6 peers were asked for on the IPv4 allocation"
    if family == 6:
        return f"no {kind} allocation ({why}): IPv6 Connects went to the IPv4 TCP allocation, if any"
    return f"no {kind} allocation ({why}): Connect (RFC 6062) was not tried"


def probe(reactor: Any, config: ProbeConfig) -> Deferred:
    """Probe the relay; fires with a Report, fails with ProbeFailed (or ValueError for a bad config)."""
    return Deferred.fromCoroutine(run(reactor, config.validate()))


async def _start(session: Session) -> None:
    """The main allocation (UDP, IPv4) every other check stands on; ProbeFailed without it."""
    config = session.config
    where = f"{config.server[0]}:{config.server[1]} over {config.transport}"
    try:
        client = await session.client()
        await session.ask(client.allocate())
    except TurnError as e:
        raise ProbeFailed(f"{where}: the relay refused the allocation: {e.code} {e.reason}") from None
    except RealmMismatch as e:
        raise ProbeFailed(f"{where}: {e}") from None
    except (TimeoutError, TransactionTimeout) as e:
        raise ProbeFailed(f"{where}: no answer ({e.__class__.__name__})") from None
    except (ConnectError, ConnectionClosed) as e:
        raise ProbeFailed(f"{where}: cannot connect: {e}") from None
    except Exception as e:  # noqa: BLE001 (a TLS handshake error, ...: said, not raised)
        raise ProbeFailed(f"{where}: {e.__class__.__name__}: {e}") from None
    session.allocations[(UDP, 4)] = client
    log.debug("probe allocation {relayed} on {server}", relayed=client.relayed_address, server=where)

