"""Keeping port mappings: finding a gateway by any protocol, lease renewal at
half-life, and a Service that maps on start and unmaps on stop.

``discover_gateway(method="auto")`` asks PCP first (RFC 6887); a gateway
that answers in NAT-PMP instead (RFC 6887 §9) is used over NAT-PMP (RFC
6886); silence on port 5351 means neither, so UPnP IGD is tried next.

A mapping made with a lease (IGD:2 caps leases at 604800 s; many IGD:1
gateways take any) is renewed by adding it again when half the lease has
passed. A failed renewal is tried again at half of what is left, until the
lease has run out; a permanent mapping (lease 0, e.g. after error 725) is
never renewed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .errors import NoGateway, UpnpError
from .igd import DEFAULT_DESCRIPTION, DEFAULT_TIMEOUT_SECONDS, Gateway, PortMapping, discover, normal_protocol
from .pmp import SpeaksNatPmp, discover_natpmp, discover_pcp

log = Logger()

DEFAULT_LEASE_SECONDS = 3600
MIN_RETRY_SECONDS = 1.0
METHODS = ("auto", "pcp", "natpmp", "upnp")


async def _discover_any(reactor, timeout_seconds: float):
    try:
        return await discover_pcp(reactor, timeout_seconds=timeout_seconds)
    except SpeaksNatPmp:
        return await discover_natpmp(reactor, timeout_seconds=timeout_seconds)
    except NoGateway as e:
        log.debug("no PCP/NAT-PMP gateway ({error}); trying UPnP IGD", error=str(e))
    try:
        return await discover(reactor, timeout_seconds=timeout_seconds)
    except NoGateway as e:
        raise NoGateway(f"no gateway answered PCP, NAT-PMP or UPnP IGD ({e})") from None


def discover_gateway(reactor, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, method: str = "auto") -> Deferred:
    """A gateway by ``method``: "pcp", "natpmp", "upnp" (IGD) or "auto" (PCP, then
    NAT-PMP when it answers so, else UPnP IGD).

    Fires with an ``igd.Gateway``, ``pmp.PcpGateway`` or ``pmp.NatPmpGateway``
    (the same mapping calls; ``close`` when done); fails with NoGateway,
    MappingRefused or UpnpError.
    """
    if method == "upnp":
        return discover(reactor, timeout_seconds=timeout_seconds)
    if method == "pcp":
        return discover_pcp(reactor, timeout_seconds=timeout_seconds)
    if method == "natpmp":
        return discover_natpmp(reactor, timeout_seconds=timeout_seconds)
    if method != "auto":
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return Deferred.fromCoroutine(_discover_any(reactor, timeout_seconds))


@dataclass(frozen=True)
class MappingRequest:
    """A mapping wanted: internal_port/protocol, on external_port (default the same)."""

    internal_port: int
    protocol: str = "UDP"
    external_port: int | None = None
    description: str = DEFAULT_DESCRIPTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", normal_protocol(self.protocol))


def renewal_delay_seconds(lease_seconds: float) -> float | None:
    """When to renew a lease just granted: at half-life; None for a permanent one."""
    if not lease_seconds:
        return None
    return lease_seconds / 2


def retry_delay_seconds(seconds_left: float) -> float | None:
    """When to retry a failed renewal: half of what is left, None once too little is left."""
    if seconds_left < 2 * MIN_RETRY_SECONDS:
        return None
    return seconds_left / 2


class LeaseKeeper:
    """Holds one mapping on a gateway, re-adding it at half-life until ``stop``.

    ``clock`` is an IReactorTime; ``on_lost`` is called with the mapping when
    renewal kept failing until the lease ran out.
    """

    def __init__(self, clock, gateway: Gateway, mapping: PortMapping,
                 on_lost: Callable[[PortMapping], None] | None = None) -> None:
        self._clock = clock
        self._gateway = gateway
        self.mapping = mapping
        self._on_lost = on_lost
        self._call = None
        self._expires_at = clock.seconds() + mapping.lease_seconds
        self.renewals = 0
        self.lost = False

    def start(self) -> None:
        """Schedule the first renewal (nothing for a permanent mapping)."""
        self._schedule(renewal_delay_seconds(self.mapping.lease_seconds))

    def stop(self) -> None:
        """Cancel any pending renewal."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, delay: float | None) -> None:
        self.stop()
        if delay is not None:
            self._call = self._clock.callLater(delay, self._renew)

    def _renew(self) -> None:
        self._call = None
        m = self.mapping
        d = self._gateway.add_mapping(m.external_port, m.protocol, m.internal_port, internal_host=m.internal_host,
                                      description=m.description, lease_seconds=m.lease_seconds)
        d.addCallbacks(self._renewed, self._failed)

    def _renewed(self, mapping: PortMapping) -> None:
        self.renewals += 1
        self.mapping = mapping
        self._expires_at = self._clock.seconds() + mapping.lease_seconds
        log.debug("renewed {mapping}", mapping=str(mapping))
        self._schedule(renewal_delay_seconds(mapping.lease_seconds))

    def _failed(self, failure) -> None:
        left = self._expires_at - self._clock.seconds()
        delay = retry_delay_seconds(left)
        log.warn("renewing {mapping} failed ({error}); {next}", mapping=str(self.mapping),
                 error=failure.getErrorMessage(),
                 next=f"retrying in {delay:.0f} s" if delay is not None else "the mapping is lost")
        if delay is not None:
            self._schedule(delay)
            return
        self.lost = True
        if self._on_lost is not None:
            self._on_lost(self.mapping)


class PortMappingService(service.Service):
    """Maps ports through the LAN's gateway on start, keeps their leases, and
    deletes them on stop. ``method`` picks the protocol (see
    ``discover_gateway``; "auto" by default).

    ``mappings`` holds the PortMappings made; ``external_address`` the
    gateway's external address. ``when_ready()`` fires with the list of
    PortMappings once all are made, or fails with NoGateway, MappingRefused
    or UpnpError (also logged).
    """

    def __init__(self, reactor, requests: Sequence[MappingRequest], *,
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 discover: Callable[..., Deferred] | None = None, method: str = "auto") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self._reactor = reactor
        self.requests = list(requests)
        self.lease_seconds = lease_seconds
        self.timeout_seconds = timeout_seconds
        self._discover = discover or (lambda reactor, **kw: discover_gateway(reactor, method=method, **kw))
        self.gateway: Gateway | None = None
        self.external_address: str | None = None
        self.mappings: list[PortMapping] = []
        self._keepers: list[LeaseKeeper] = []
        self._starting: Deferred | None = None
        self._result = None
        self._waiting: list[Deferred] = []

    def when_ready(self) -> Deferred:
        """A Deferred of the mappings (see the class docstring)."""
        if self._result is not None:
            return succeed(None).addCallback(lambda _: self._result_value())
        d = Deferred()
        self._waiting.append(d)
        return d

    def _result_value(self):
        if isinstance(self._result, Exception):
            raise self._result
        return list(self._result)

    def startService(self) -> None:
        super().startService()
        self._result = None
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addBoth(self._settle)

    async def _start(self) -> list[PortMapping]:
        self.gateway = await self._discover(self._reactor, timeout_seconds=self.timeout_seconds)
        self.external_address = await self.gateway.external_address()
        for request in self.requests:
            mapping = await self.gateway.add_mapping(
                request.external_port or request.internal_port, request.protocol, request.internal_port,
                description=request.description, lease_seconds=self.lease_seconds)
            self.mappings.append(mapping)
            keeper = LeaseKeeper(self._reactor, self.gateway, mapping)
            keeper.start()
            self._keepers.append(keeper)
            log.info("mapped {mapping} on {external}", mapping=str(mapping), external=self.external_address)
        return list(self.mappings)

    def _settle(self, result):
        if not isinstance(result, list):
            error = result.value
            if isinstance(error, UpnpError):
                log.warn("UPnP port mapping failed: {error}", error=str(error))
            else:
                log.failure("UPnP port mapping failed unexpectedly", result)
                error = UpnpError(str(error))
            result = error
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(list(result))
        return None

    def stopService(self) -> Deferred:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            await self._starting  # never fails: _settle absorbs the outcome
        for keeper in self._keepers:
            keeper.stop()
        self._keepers.clear()
        gateway, self.gateway = self.gateway, None
        mappings, self.mappings = self.mappings, []
        if gateway is None:
            return
        for mapping in mappings:
            try:
                await gateway.delete_mapping(mapping.external_port, mapping.protocol)
                log.info("unmapped {mapping}", mapping=str(mapping))
            except UpnpError as e:
                log.warn("unmapping {mapping} failed: {error}", mapping=str(mapping), error=str(e))
        gateway.close()
