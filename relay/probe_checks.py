"""The checks of a relay self-test, each a coroutine over a ``relay.probe.Session`` returning verdicts.

- ``credentials``: an Allocate without credentials, and one with a wrong
  password, must not succeed (RFC 8656 §7.2 step 1, RFC 8489 §9.2.4).
- ``amplification``: the size of the answer to the smallest unauthenticated
  Allocates over UDP, against the request's (a 401 goes to an unverified,
  possibly spoofed, source).
- ``peer_ranges``: CreatePermission (§10), ChannelBind (§12) and Connect
  (RFC 6062 §5.2) towards each address of ``relay.probe_targets``; granted
  is OPEN, 403 closed (RFC 8656 §21: the relay must not reach the
  operator's internal network or metadata services).
- ``own_ports``: the relay host's own ports through the relay (the "TURN
  loop" and "reach what only listens locally" attacks): a STUN Binding
  request in a Send indication (§11) answered back in a Data indication,
  or a Connect that succeeds, is OPEN.
- ``quota``: one user's allocations up to a bound; a 486 (§7.2 step 8)
  before it is closed, none or only 508 is OPEN.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, TimeoutError, gatherResults

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.addresses import Address, address_text
from rendezvous.stun.attributes import encode_requested_transport
from rendezvous.stun.constants import Error

from .client import CHANNEL_MIN, ConnectionClosed, TransactionTimeout, TurnClient, TurnError
from .client_transactions import error_code, request, transact
from .probe_targets import TARGET_PORT, TARGETS, Target
from .probe_verdicts import CLOSED, OPEN, SKIPPED, Outcome, Verdict, amplification_verdict, combine, peer_outcome

if TYPE_CHECKING:
    from .probe import Session

_NOT_ANSWERED = (TimeoutError, TransactionTimeout, ConnectionClosed)
UDP, TCP = 17, 6  # REQUESTED-TRANSPORT values, RFC 8656 §18.7 and RFC 6062 §6.1


# -- credentials and amplification ---------------------------------------------------------


async def credentials(session: Session) -> list[Verdict]:
    """Allocate with no credentials, then with a wrong password: each must be refused."""
    verdicts = []
    client = await session.client()
    try:
        response = await session.ask(transact(client, _allocate_request(), None))
    except _NOT_ANSWERED:
        verdicts.append(Verdict("unauthenticated-allocate", "-", CLOSED, "no answer: the relay ignores it"))
    else:
        verdicts.append(_refused("unauthenticated-allocate", response))
    finally:
        await session.close([client])
    client = await session.client(password=session.config.password + "-wrong")
    try:
        await session.ask(client.allocate())
    except TurnError as e:
        verdicts.append(Verdict("wrong-password", "-", CLOSED, f"Allocate refused: {e.code} {e.reason}"))
    except _NOT_ANSWERED:
        verdicts.append(Verdict("wrong-password", "-", CLOSED, "no answer to the signed Allocate"))
    else:
        verdicts.append(Verdict("wrong-password", "-", OPEN, "an Allocate signed with a wrong password succeeded"))
    finally:
        await session.close([client])
    return verdicts


def _allocate_request(requested_transport: bool = True) -> bytes:
    """An unauthenticated Allocate: the bare 20-byte header, or with REQUESTED-TRANSPORT UDP (28 bytes)."""
    message = Message(Method.ALLOCATE, Class.REQUEST)
    if requested_transport:
        message.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport(UDP))
    return message.encode()


def _refused(check: str, response: Message) -> Verdict:
    if response.cls is Class.SUCCESS:
        return Verdict(check, "-", OPEN, "the relay allocated without credentials")
    return Verdict(check, "-", CLOSED, f"refused: {_error_text(response)}")


def _error_text(response: Message) -> str:
    code, reason = error_code(response)
    return f"{code} {reason}".rstrip()


async def amplification(session: Session) -> Verdict:
    """Answer size over request size for the smallest unauthenticated Allocates, over UDP."""
    try:
        client = await session.client("udp")
    except OSError as e:
        return Verdict("amplification", "-", SKIPPED, f"no UDP socket: {e}")
    sizes = []
    try:
        for bare in (True, False):
            data = _allocate_request(requested_transport=not bare)
            try:
                response = await session.ask(transact(client, data, None))
            except _NOT_ANSWERED:
                continue
            sizes.append((len(data), len(response.raw)))
    finally:
        await session.close([client])
    return amplification_verdict(sizes, session.config.max_amplification)


# -- peers in forbidden ranges ---------------------------------------------------------


async def peer_ranges(session: Session) -> list[Verdict]:
    """Each target address: CreatePermission, ChannelBind and Connect; one verdict per address."""
    asked = []
    for index, target in enumerate(TARGETS):
        asked.append([await _permission(session, target), await _channel(session, target, CHANNEL_MIN + index)])
    connects = await gatherResults([session.connects.run(_connect_outcome, session, t) for t in TARGETS])
    return [
        combine("peer-range", target.address, target.category, target.what, outcomes + [connect])
        for target, outcomes, connect in zip(TARGETS, asked, connects)
    ]


async def _permission(session: Session, target: Target) -> Outcome:
    """CreatePermission for the target. Granted for an IP on which this relay holds relayed addresses
    it proves nothing (RFC 8656 §9: permissions are per IP, and clients of one relay must reach each
    other's relayed addresses): ChannelBind and Connect then decide."""
    client, note = session.allocation(UDP, target.family)
    if client is None:
        return Outcome("CreatePermission", SKIPPED, note)
    outcome = await _outcome(session, "CreatePermission",
                             lambda: client.create_permission([(target.address, TARGET_PORT)]))
    if outcome.status == OPEN and _relayed_here(session, target.address):
        return Outcome("CreatePermission", SKIPPED, "granted: an IP of the relay's own relayed addresses")
    return outcome


def _relayed_here(session: Session, address: str) -> bool:
    """Whether this relay holds one of the probe's relayed addresses on ``address`` (any spelling)."""
    wanted = ipaddress.ip_address(address)
    return any(isinstance(c, TurnClient) and c.relayed_address is not None
               and ipaddress.ip_address(c.relayed_address[0]) == wanted for c in session.allocations.values())


async def _channel(session: Session, target: Target, channel: int) -> Outcome:
    client, note = session.allocation(UDP, target.family)
    if client is None:
        return Outcome("ChannelBind", SKIPPED, note)
    return await _outcome(session, "ChannelBind", lambda: client.channel_bind(channel, (target.address, TARGET_PORT)))


def _connect_outcome(session: Session, target: Target) -> Deferred:
    client, note = session.allocation(TCP, target.family)
    if client is None:
        return Deferred.fromCoroutine(_skipped("Connect", f"no TCP allocation: {note}"))
    return Deferred.fromCoroutine(_outcome(session, "Connect", lambda: connect_peer(client, (target.address, TARGET_PORT))))


async def _skipped(method: str, why: str) -> Outcome:
    return Outcome(method, SKIPPED, why)


async def _outcome(session: Session, method: str, make) -> Outcome:
    """Send one request towards a peer and classify the relay's answer (relay.probe_verdicts.peer_outcome)."""
    if session.time_left() <= 0:
        return Outcome(method, SKIPPED, "not sent: the run's time budget is spent")
    try:
        await session.ask(make())
    except TurnError as e:
        return peer_outcome(method, e.code, e.reason)
    except _NOT_ANSWERED:
        return peer_outcome(method, answered=False)
    return peer_outcome(method)


def connect_peer(client: TurnClient, peer: Address) -> Deferred:
    """Connect (RFC 6062 §5.2) on a TCP allocation: fires with the response once the relay has connected."""

    def build(message: Message) -> None:
        message.add_address(Attr.XOR_PEER_ADDRESS, peer)

    return Deferred.fromCoroutine(request(client, Method.CONNECT, build))


# -- the relay's own ports ------------------------------------------------------------


def own_addresses(session: Session) -> list[tuple[str, int, bool]]:
    """(host, port, stun) for the relay's own addresses and ports; stun: the port answers STUN over UDP."""
    config = session.config
    hosts = [session.server_ip]
    for protocol, family in ((UDP, 4), (UDP, 6)):
        client = session.allocations.get((protocol, family))
        if isinstance(client, TurnClient) and client.relayed_address is not None:
            hosts.append(client.relayed_address[0])
            hosts.append("127.0.0.1" if family == 4 else "::1")
    ports = [(config.server[1], True)] + [(p, True) for p in config.also_ports]
    if config.metrics_port:
        ports.append((config.metrics_port, False))
    seen, found = set(), []
    for host in hosts:
        for port, stun in ports:
            if (host, port) not in seen:
                seen.add((host, port))
                found.append((host, port, stun))
    return found


async def own_ports(session: Session) -> list[Verdict]:
    """Each of the relay's own (address, port): data through the relay and back, and a Connect."""
    verdicts = []
    for host, port, stun in own_addresses(session):
        family = 6 if ":" in host else 4
        outcomes = []
        if stun:
            outcomes.append(await _echo(session, host, port, family))
        client, note = session.allocation(TCP, family)
        if client is None:
            outcomes.append(Outcome("Connect", SKIPPED, f"no TCP allocation: {note}"))
        else:
            outcomes.append(await _own_connect(session, client, (host, port)))
        verdicts.append(combine("own-port", address_text((host, port)), "own", "", outcomes))
    return verdicts


async def _echo(session: Session, host: str, port: int, family: int) -> Outcome:
    """Permission for host, a Binding request to host:port in a Send indication; OPEN if answered back."""
    method = "Send Binding"
    client, note = session.allocation(UDP, family)
    if client is None:
        return Outcome(method, SKIPPED, note)
    permitted = await _outcome(session, "CreatePermission", lambda: client.create_permission([(host, port)]))
    if permitted.status != OPEN:
        return Outcome(method, permitted.status, f"not sent: CreatePermission {permitted.answer}")
    binding = Message(Method.BINDING, Class.REQUEST)
    answered = session.expect_answer(binding.transaction_id)
    data = binding.encode()
    for _ in range(2):  # once more in case the first is lost
        client.send_indication((host, port), data)
    try:
        peer = await session.ask(answered)
    except TimeoutError:
        return Outcome(method, CLOSED, "no answer came back (the permission alone is normal: "
                                       "clients of one relay reach each other through it)")
    return Outcome(method, OPEN, f"answered through the relay from {address_text(peer)}")


async def _own_connect(session: Session, client: TurnClient, peer: Address) -> Outcome:
    """Connect to the relay's own host:port: OPEN only when the relay connects."""
    if session.time_left() <= 0:
        return Outcome("Connect", SKIPPED, "not sent: the run's time budget is spent")
    try:
        await session.ask(connect_peer(client, peer))
    except TurnError as e:
        status = SKIPPED if e.code not in (Error.FORBIDDEN, Error.CONNECTION_TIMEOUT_OR_FAILURE,
                                           Error.PEER_ADDRESS_FAMILY_MISMATCH, Error.BAD_REQUEST) else CLOSED
        return Outcome("Connect", status, f"{e.code} {e.reason}".rstrip())
    except _NOT_ANSWERED:
        return Outcome("Connect", CLOSED, "no answer (nothing accepted the connection in time)")
    return Outcome("Connect", OPEN, "the relay connected to its own port")


# -- the per-user quota -----------------------------------------------------------------


async def quota(session: Session) -> Verdict:
    """Up to ``quota_check`` allocations for one user: closed if 486 stops them; all released after."""
    bound = session.config.quota_check
    clients: list[TurnClient] = []
    try:
        for made in range(bound):
            if session.time_left() <= 0:
                return Verdict("quota", f"{bound}", SKIPPED, f"the time budget ran out after {made} allocations")
            try:
                client = await session.client()
                clients.append(client)
                await session.ask(client.allocate())
            except TurnError as e:
                if e.code == Error.ALLOCATION_QUOTA_REACHED:
                    return Verdict("quota", f"{bound}", CLOSED,
                                   f"486 after {made} allocations (this user's other allocations count too)")
                if e.code == Error.INSUFFICIENT_CAPACITY:
                    return Verdict("quota", f"{bound}", OPEN,
                                   f"only the relay's total capacity (508) stopped one user, after {made}")
                return Verdict("quota", f"{bound}", SKIPPED, f"allocation {made + 1} failed: {e.code} {e.reason}")
            except (*_NOT_ANSWERED, OSError) as e:
                return Verdict("quota", f"{bound}", SKIPPED, f"allocation {made + 1} got no answer ({e})")
        return Verdict("quota", f"{bound}", OPEN, f"{bound} allocations granted to one user: no per-user quota below that")
    finally:
        await session.close(clients)

