"""Which port-mapping protocols the LAN's gateway answers, in bounded time.

``probe(reactor)`` asks, side by side, for a UPnP Internet Gateway Device
(SSDP discovery, then GetExternalIPAddress). It fires with one
``GatewayAnswer`` per protocol; it never fails, so a caller such as the NAT
analyzer can report "no gateway" as a finding. Discovery waits
``timeout_seconds``; the one SOAP call that follows is bounded by
miniupnpc's own HTTP timeout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from twisted.internet.defer import Deferred, gatherResults

from .errors import UpnpError
from .igd import DEFAULT_TIMEOUT_SECONDS, discover

IGD = "igd"
PROTOCOLS = (IGD,)
NAMES = {IGD: "UPnP IGD"}


@dataclass(frozen=True)
class GatewayAnswer:
    """Whether a gateway answered one protocol, and what it said.

    ``gateway`` is where it answered (a control URL or an address), ``error``
    why it did not (or what went wrong after it did).
    """

    protocol: str
    answered: bool
    external_address: str | None = None
    gateway: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


async def _probe_igd(reactor, timeout_seconds: float) -> GatewayAnswer:
    try:
        gateway = await discover(reactor, timeout_seconds=timeout_seconds)
    except UpnpError as e:
        return GatewayAnswer(IGD, False, error=str(e))
    try:
        return GatewayAnswer(IGD, True, await gateway.external_address(), gateway.control_url)
    except UpnpError as e:
        return GatewayAnswer(IGD, True, gateway=gateway.control_url, error=str(e))
    finally:
        gateway.close()


_PROBES = {IGD: _probe_igd}


def probe(reactor, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
          protocols: tuple[str, ...] = PROTOCOLS) -> Deferred:
    """Ask the LAN's gateway over each protocol at once.

    Fires with a dict of protocol name -> GatewayAnswer (never fails).
    """
    unknown = set(protocols) - set(_PROBES)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    runs = [Deferred.fromCoroutine(_PROBES[name](reactor, timeout_seconds)) for name in protocols]
    return gatherResults(runs, consumeErrors=True).addCallback(
        lambda answers: {answer.protocol: answer for answer in answers})
