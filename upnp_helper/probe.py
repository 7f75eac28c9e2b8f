"""Which port-mapping protocols the LAN's gateway answers, in bounded time.

``probe(reactor)`` asks, side by side, for a UPnP Internet Gateway Device
(SSDP discovery, then GetExternalIPAddress), a NAT-PMP gateway (RFC 6886
§3.2 external address) and a PCP server (RFC 6887 ANNOUNCE, then a short
MAP of the probe's own port, deleted at once). It fires with one
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
from .pmp import discover_natpmp, discover_pcp

IGD = "igd"
NATPMP = "natpmp"
PCP = "pcp"
PROTOCOLS = (IGD, NATPMP, PCP)
NAMES = {IGD: "UPnP IGD", NATPMP: "NAT-PMP", PCP: "PCP"}


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


async def _ask(protocol: str, find, reactor, timeout_seconds: float) -> GatewayAnswer:
    try:
        gateway = await find(reactor, timeout_seconds=timeout_seconds)
    except UpnpError as e:
        return GatewayAnswer(protocol, False, error=str(e))
    try:
        return GatewayAnswer(protocol, True, await gateway.external_address(), gateway.control_url)
    except UpnpError as e:
        return GatewayAnswer(protocol, True, gateway=gateway.control_url, error=str(e))
    finally:
        gateway.close()


_FINDERS = {IGD: discover, NATPMP: discover_natpmp, PCP: discover_pcp}


def probe(reactor, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
          protocols: tuple[str, ...] = PROTOCOLS) -> Deferred:
    """Ask the LAN's gateway over each protocol at once.

    Fires with a dict of protocol name -> GatewayAnswer (never fails).
    """
    unknown = set(protocols) - set(_FINDERS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    runs = [Deferred.fromCoroutine(_ask(name, _FINDERS[name], reactor, timeout_seconds)) for name in protocols]
    return gatherResults(runs, consumeErrors=True).addCallback(
        lambda answers: {answer.protocol: answer for answer in answers})
