"""One run of the NAT check: RFC 5780 §4.3 test I (the mapped address, the
server's OTHER-ADDRESS), then the other tests side by side, the LAN
gateway's port mapping answer alongside, and the verdicts from ``decisions``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from twisted.internet import defer, error
from twisted.internet.defer import Deferred

from upnp_helper.probe import probe as probe_gateways

from rendezvous.peer.nat_check.alg import DEFAULT_ECHO_PORT, detect_alg
from rendezvous.peer.nat_check.decisions import classic_type, prediction_easy
from rendezvous.peer.nat_check.probes import Checker, is_alternate, local_ip_toward, mapped_address, show
from rendezvous.peer.nat_check.report import NatReport
from rendezvous.peer.nat_check.tcp import DEFAULT_TCP_FALLBACK_PORT, measure_tcp
from rendezvous.peer.nat_check.udp import (measure_allocation, measure_filtering, measure_hairpinning,
                                           measure_lifetime, measure_mapping)
from rendezvous.peer.stun_client import TransactionTimeout
from rendezvous.stun import Attr


class NatCheckError(Exception):
    """The check could not run at all (bad server address, no local socket)."""


async def _analyse(checker: Checker) -> NatReport:
    """Run the tests, ask the LAN's gateway alongside, then the verdicts."""
    gateways = None
    if checker.upnp_timeout_seconds is not None:
        checker.progress("port mapping: asking the LAN's gateway (UPnP IGD, NAT-PMP, PCP) for "
                         f"{checker.upnp_timeout_seconds:g} s")
        gateways = probe_gateways(checker.reactor, timeout_seconds=checker.upnp_timeout_seconds)
    try:
        await _run(checker)
    finally:
        await checker.close_all()
        if gateways is not None:
            checker.report.upnp = await gateways
    report = checker.report
    report.classic = classic_type(report.udp_blocked, report.nat_present, report.mapping, report.filtering)
    report.port_prediction_easy = None if report.udp_blocked else prediction_easy(
        report.mapping, report.port_allocation)
    return report


async def _run(checker: Checker) -> None:
    """Test I, then the tests that build on it."""
    report = checker.report
    server = checker.server
    checker.progress(f"test I: Binding request to {show(server)} over UDP")
    first = checker.open()
    local_ip = local_ip_toward(server)
    report.local_address = show((local_ip, first.port))
    try:
        response, _ = await checker.binding(first, server)
    except TransactionTimeout:
        checker.progress("no answer over UDP")
        if checker.tcp:
            await measure_tcp(checker)
        if report.server_answered:
            report.udp_blocked = True
            report.notes.append("the server answers over TCP but not over UDP: UDP is blocked")
        else:
            report.notes.append("no answer over UDP" + (" or TCP" if checker.tcp else " (TCP not tried)"))
        return
    report.server_answered = True
    report.udp_blocked = False
    mapped = mapped_address(response)
    report.mapped_address = show(mapped)
    report.nat_present = mapped != (local_ip, first.port)
    report.port_preservation = mapped is not None and mapped[1] == first.port
    plain = response.address(Attr.MAPPED_ADDRESS)
    if response.get(Attr.XOR_MAPPED_ADDRESS) is not None and plain is not None:
        report.mapped_address_rewritten = plain != mapped
    other = response.address(Attr.OTHER_ADDRESS)
    report.rfc5780 = is_alternate(other, server)
    report.other_address = show(other)
    if not report.rfc5780:
        report.notes.append("the server has no RFC 5780 alternate address (OTHER-ADDRESS): "
                            "mapping and filtering cannot be tested")
    else:
        await measure_mapping(checker, first, mapped, other)
    await measure_allocation(checker)
    # The rest use sockets of their own, so they run side by side; the
    # lifetime search (the longest) starts first.
    tests = [Deferred.fromCoroutine(measure_lifetime(checker))]
    if report.rfc5780:
        tests.append(Deferred.fromCoroutine(measure_filtering(checker, other)))
    tests.append(Deferred.fromCoroutine(measure_hairpinning(checker, first, mapped)))
    if checker.tcp:
        tests.append(Deferred.fromCoroutine(measure_tcp(checker)))
    else:
        report.notes.append("TCP not tested (--no-tcp)")
    if checker.echo_port:
        tests.append(Deferred.fromCoroutine(detect_alg(checker)))
    else:
        report.alg_reason = "not asked for"
    try:
        await defer.gatherResults(tests, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()


async def _resolve(reactor, host: str) -> str:
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    try:
        return await reactor.resolve(host)
    except (error.DNSLookupError, OSError) as e:
        raise NatCheckError(f"cannot resolve {host}: {e}") from None


def check(reactor, server: tuple[str, int], *, lifetime_max_seconds: float = 120.0, tcp: bool = True,
          rto_seconds: float = 0.2, allocation_samples: int = 5,
          progress: Callable[[str], None] | None = None,
          tcp_fallback_port: int | None = DEFAULT_TCP_FALLBACK_PORT,
          upnp_timeout_seconds: float | None = 2.0, echo_port: int | None = DEFAULT_ECHO_PORT) -> Deferred:
    """Analyse the NAT between this host and an RFC 5780 STUN server.

    ``server`` is (host, port) of the server's primary address (IPv4).
    The UDP binding lifetime search runs alongside the other tests and takes
    at most ``lifetime_max_seconds`` (0 skips it). ``progress`` is called
    with a line as each test starts. When the server's port does not answer
    over TCP, ``tcp_fallback_port`` (a super node's plain firewall port;
    None to skip) is tried, so a firewall letting out only TCP 80 still gets
    a verdict ("UDP blocked"). The LAN's gateway is asked for port mapping
    (UPnP IGD, NAT-PMP, PCP) for ``upnp_timeout_seconds`` alongside (None
    skips it). ALG detection uses the server's echo service at ``echo_port``
    (None skips it).

    Fires with a NatReport, which is partial (see its ``notes``) when the
    server does not answer or lacks RFC 5780; fails with NatCheckError when
    the server's name does not resolve.
    """

    async def go() -> NatReport:
        host, port = server
        ip = await _resolve(reactor, host)
        checker = Checker(reactor, (ip, int(port)), lifetime_max_seconds, tcp, rto_seconds,
                          allocation_samples, progress, tcp_fallback_port, upnp_timeout_seconds, echo_port)
        return await _analyse(checker)

    return Deferred.fromCoroutine(go())
