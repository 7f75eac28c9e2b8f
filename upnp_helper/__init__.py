"""UPnP IGD port mapping for clients behind a home router.

    from upnp_helper import discover, PortMappingService, MappingRequest

    gateway = await discover(reactor, timeout_seconds=2)
    address = await gateway.external_address()
    mapping = await gateway.add_mapping(40000, "UDP", lease_seconds=3600)
    await gateway.delete_mapping(40000, "UDP")
    gateway.close()

``upnp_helper.igd`` is the only module of the suite that imports miniupnpc;
its blocking calls run in a thread pool of its own. Failures are NoGateway,
MappingRefused(code, text) and UpnpError (``upnp_helper.errors``). See
docs/UPNP.md.
"""

from .errors import MappingRefused, NoGateway, UpnpError, UpnpErrorCode
from .igd import Gateway, PortMapping, discover
from .service import LeaseKeeper, MappingRequest, PortMappingService

__all__ = [
    "Gateway",
    "LeaseKeeper",
    "MappingRefused",
    "MappingRequest",
    "NoGateway",
    "PortMapping",
    "PortMappingService",
    "UpnpError",
    "UpnpErrorCode",
    "discover",
]
