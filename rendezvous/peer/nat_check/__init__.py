"""The NAT analyzer: how the NAT (or NATs) between us and a STUN server behave.

RFC 5780 §4.3 (mapping behaviour: Binding requests from one socket to the
server's primary address, its alternate IP, and its alternate IP and port),
§4.4 (filtering behaviour: CHANGE-REQUEST asks the server to answer from its
alternate IP and port, or its alternate port), §4.5 (hairpinning), §4.6
(binding lifetime, with RESPONSE-PORT aiming a response at an older
mapping), and the RFC 3489 §5 "classic" labels derived from them; RFC 4787
§4.1 (port preservation and allocation) for port prediction; RFC 5382 §5 for
TCP mapping; ALG detection through the super node's echo service.

The decisions are sans-IO functions of what was observed; the probing, on
Twisted, only gathers the observations. Apps call::

    report = await check(reactor, ("198.51.100.1", 3478))
    print(report.to_text())

Modules:

- ``decisions``: the sans-IO verdicts (§4.3, §4.4, classic type, port allocation, lifetime schedule)
- ``report``: ``NatReport``, as JSON or TUM-style text
- ``probes``: the probe sockets, RFC 5780 §7 Binding requests, one run's state
- ``udp``: the UDP tests (§4.3 mapping, §4.4 filtering, §4.5 hairpinning, §4.6 lifetime, port allocation)
- ``tcp``: the RFC 5382 §5 TCP mapping test, with the firewall-port fallback
- ``alg``: ALG detection, a SIP INVITE echoed over UDP and TCP
- ``analyzer``: ``check``: test I, the rest side by side, UPnP/NAT-PMP/PCP alongside, the verdicts
"""

from rendezvous.peer.nat_check.alg import DEFAULT_ECHO_PORT
from rendezvous.peer.nat_check.analyzer import NatCheckError, check
from rendezvous.peer.nat_check.decisions import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    FULL_CONE,
    OPEN_INTERNET,
    PORT_RESTRICTED_CONE,
    PRESERVING,
    RANDOM,
    RESTRICTED_CONE,
    SEQUENTIAL,
    SYMMETRIC,
    SYMMETRIC_FIREWALL,
    UDP_BLOCKED,
    PortAllocation,
    classic_type,
    filtering_behaviour,
    lifetime_bounds,
    lifetime_schedule,
    mapping_behaviour,
    port_allocation,
    prediction_easy,
)
from rendezvous.peer.nat_check.probes import ServerError, binding_request, mapped_address
from rendezvous.peer.nat_check.report import ALG_UNSUPPORTED, NatReport
from rendezvous.peer.nat_check.tcp import DEFAULT_TCP_FALLBACK_PORT

__all__ = [
    "ADDRESS_AND_PORT_DEPENDENT",
    "ADDRESS_DEPENDENT",
    "ALG_UNSUPPORTED",
    "DEFAULT_ECHO_PORT",
    "DEFAULT_TCP_FALLBACK_PORT",
    "ENDPOINT_INDEPENDENT",
    "FULL_CONE",
    "OPEN_INTERNET",
    "PORT_RESTRICTED_CONE",
    "PRESERVING",
    "RANDOM",
    "RESTRICTED_CONE",
    "SEQUENTIAL",
    "SYMMETRIC",
    "SYMMETRIC_FIREWALL",
    "UDP_BLOCKED",
    "NatCheckError",
    "NatReport",
    "PortAllocation",
    "ServerError",
    "binding_request",
    "check",
    "classic_type",
    "filtering_behaviour",
    "lifetime_bounds",
    "lifetime_schedule",
    "mapped_address",
    "mapping_behaviour",
    "port_allocation",
    "prediction_easy",
]
