"""The TCP test: RFC 5382 §5 mapping (the same local port toward the server's
primary address, its alternate IP, and its alternate IP and port) and port
preservation; over the server's firewall port when its STUN port is blocked,
which still tells "UDP blocked" from "server down".
"""

from __future__ import annotations

from twisted.internet import defer, error

from rendezvous.peer.nat_check.decisions import mapping_behaviour
from rendezvous.peer.nat_check.probes import (Checker, ServerError, binding_request, is_alternate, mapped_address,
                                              raise_for_error, show)
from rendezvous.peer.tcp_binding import ReusePortConnector, StreamProbe, StreamProbeFactory
from rendezvous.stun import Attr, CodecError, Message
from rendezvous.stun.addresses import Address

# A super node's plain firewall port (TCP), tried when its STUN port is blocked.
DEFAULT_TCP_FALLBACK_PORT = 80

# Refused, reset, timed out, or not STUN.
TCP_FAILURES = (error.ConnectError, error.ConnectionClosed, defer.TimeoutError, defer.CancelledError,
                CodecError, ServerError, OSError)


async def measure_tcp(checker: Checker) -> None:
    """RFC 5382 §5: the same local port toward three server endpoints.

    When the STUN port does not answer over TCP, the server's plain
    firewall port (a super node's TCP 80) is tried for the mapped address.
    """
    report = checker.report
    server = checker.server
    checker.progress(f"TCP: Binding request to {show(server)} over TCP")
    connectors = []
    try:
        try:
            first, local_port = await _tcp_binding(checker, server, 0, connectors)
        except TCP_FAILURES as e:
            fallback = checker.tcp_fallback_port
            if not fallback or fallback == server[1]:
                raise
            report.notes.append(f"TCP to port {server[1]} failed ({e.__class__.__name__})")
            server = (server[0], fallback)
            checker.progress(f"TCP: Binding request to the firewall port {show(server)}")
            first, local_port = await _tcp_binding(checker, server, 0, connectors)
        report.server_answered = True
        report.tcp_server_port = server[1]
        mapped = mapped_address(first)
        report.tcp_port_preservation = mapped is not None and mapped[1] == local_port
        other = first.address(Attr.OTHER_ADDRESS)
        if report.rfc5780 is None:
            report.rfc5780 = is_alternate(other, server)
            report.other_address = show(other)
        if server != checker.server:
            report.notes.append(f"TCP answered only on port {server[1]}: TCP mapping not tested")
            return
        if other is None or other[0] == server[0]:
            return
        checker.progress(f"TCP: from the same local port {local_port} to the alternate IP and port")
        second, _ = await _tcp_binding(checker, (other[0], server[1]), local_port, connectors)
        third, _ = await _tcp_binding(checker, other, local_port, connectors)
        report.tcp_mapping = mapping_behaviour(mapped, mapped_address(second), mapped_address(third))
    except TCP_FAILURES as e:
        report.notes.append(f"TCP test failed: {e.__class__.__name__}: {e}")
    finally:
        for connector in connectors:
            connector.disconnect()


async def _tcp_binding(checker: Checker, address: Address, local_port: int, connectors: list) -> tuple[Message, int]:
    probe = StreamProbe(binding_request().encode())
    connector = ReusePortConnector(address[0], address[1], StreamProbeFactory(probe), 5,
                                   ("0.0.0.0", local_port), checker.reactor)
    connectors.append(connector)
    connector.connect()
    probe.answered.addTimeout(checker.probe_seconds + 2, checker.reactor)
    response = raise_for_error(await probe.answered)
    return response, connector.transport.getHost().port if local_port == 0 else local_port
