"""Port mapping for clients behind a home router: UPnP IGD, NAT-PMP and PCP.

    from upnp_helper import discover, PortMappingService, MappingRequest

    gateway = await discover(reactor, timeout_seconds=2)
    address = await gateway.external_address()
    mapping = await gateway.add_mapping(40000, "UDP", lease_seconds=3600)
    await gateway.delete_mapping(40000, "UDP")
    gateway.close()

``upnp_helper.igd`` is the only module of the suite that imports miniupnpc;
its blocking calls run in a thread pool of its own. NAT-PMP (RFC 6886) and
PCP (RFC 6887) are sans-IO codecs (``natpmp``, ``pcp``) driven over Twisted
UDP (``pmp``); ``discover_gateway(reactor, method="auto")`` tries PCP, then
NAT-PMP, then UPnP IGD. Failures are NoGateway,
MappingRefused(code, text) and UpnpError (``upnp_helper.errors``). See
docs/UPNP.md.
"""

from .errors import MappingRefused, NoGateway, UpnpError, UpnpErrorCode
from .igd import Gateway, PortMapping, discover
from .pmp import NatPmpGateway, PcpGateway, discover_natpmp, discover_pcp
from .service import LeaseKeeper, MappingRequest, PortMappingService, discover_gateway

__all__ = [
    "Gateway",
    "LeaseKeeper",
    "MappingRefused",
    "MappingRequest",
    "NatPmpGateway",
    "NoGateway",
    "PcpGateway",
    "PortMapping",
    "PortMappingService",
    "UpnpError",
    "UpnpErrorCode",
    "discover",
    "discover_gateway",
    "discover_natpmp",
    "discover_pcp",
]
