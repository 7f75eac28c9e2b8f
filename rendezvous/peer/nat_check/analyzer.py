"""One run of the NAT check: RFC 5780 §4.3 test I (the mapped address, the
server's OTHER-ADDRESS), then the other tests side by side, the LAN
gateway's port mapping answer alongside, and the verdicts from ``decisions``;
per address family: IPv4 (natively, or through the NAT64 prefix DNS64
gives, RFC 7050), IPv6 (UDP tests only; NPTv6), and the IPv6 transition
clues beside them (``transition``, ``discovery``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred, succeed

from upnp_helper.probe import probe as probe_gateways

from rendezvous.peer.nat_check.alg import DEFAULT_ECHO_PORT, detect_alg
from rendezvous.peer.interfaces import ipv4_interface_addresses
from rendezvous.peer.nat_check.decisions import classic_type, prediction_easy
from rendezvous.peer.nat_check.discovery import dns64_prefixes, ipv4_hops
from rendezvous.peer.nat_check.probes import Checker, is_alternate, local_ip_toward, mapped_address, show
from rendezvous.peer.nat_check.transition import (DS_LITE, Transition, ipv4_path, is_continuity_address, nptv6,
                                                  synthesize)
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
    report.nat_present = mapped is None or (ipaddress.ip_address(mapped[0]), mapped[1]) != (
        ipaddress.ip_address(local_ip), first.port)
    if report.family == "ipv6" and mapped is not None:
        report.nptv6 = nptv6(local_ip, mapped[0])
    report.port_preservation = mapped is not None and mapped[1] == first.port
    plain = response.address(Attr.MAPPED_ADDRESS)
    if response.get(Attr.XOR_MAPPED_ADDRESS) is not None and plain is not None:
        report.mapped_address_rewritten = plain != mapped
    named = response.address(Attr.OTHER_ADDRESS)
    report.other_address = show(named)
    other = None if named is None else checker.reach(named)
    report.rfc5780 = is_alternate(other, server)
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
        report.notes.append(checker.no_tcp_reason)
    if checker.echo_port:
        tests.append(Deferred.fromCoroutine(detect_alg(checker)))
    else:
        report.alg_reason = checker.no_alg_reason
    try:
        await defer.gatherResults(tests, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()


async def _targets(host: str, port: int, ipv6_server: tuple[str, int] | None
                   ) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """(IPv4 target, IPv6 target): a literal is its own family's; a name resolves
    (system resolver) to one of each family it has; ipv6_server overrides IPv6."""
    found: dict[int, tuple[str, int]] = {}
    try:
        found[ipaddress.ip_address(host).version] = (host, port)
    except ValueError:
        try:
            infos = await threads.deferToThread(socket.getaddrinfo, host, port, 0, socket.SOCK_DGRAM)
        except OSError as e:
            raise NatCheckError(f"cannot resolve {host}: {e}") from None
        for family, _, _, _, address in infos:
            version = 6 if family == socket.AF_INET6 else 4
            found.setdefault(version, (address[0], port))
    if ipv6_server is not None:
        found[6] = ipv6_server
    return found.get(4), found.get(6)


def _has_route(target: tuple[str, int]) -> bool:
    try:
        local_ip_toward(target)
    except OSError:
        return False
    return True


def _continuity_address() -> str | None:
    """A local address in 192.0.0.0/29 (RFC 7335), as "IP on IFACE"."""
    for name, ip in sorted(ipv4_interface_addresses().items()):
        if is_continuity_address(ip):
            return f"{ip} on {name}"
    return None


def check(reactor, server: tuple[str, int], *, lifetime_max_seconds: float = 120.0, tcp: bool = True,
          rto_seconds: float = 0.2, allocation_samples: int = 5,
          progress: Callable[[str], None] | None = None,
          tcp_fallback_port: int | None = DEFAULT_TCP_FALLBACK_PORT,
          upnp_timeout_seconds: float | None = 2.0, echo_port: int | None = DEFAULT_ECHO_PORT,
          ipv6_server: tuple[str, int] | None = None, dns64: bool | None = None) -> Deferred:
    """Analyse the NAT between this host and an RFC 5780 STUN server, per address family.

    ``server`` is (host, port) of the server's primary address: a literal of
    either family, or a name resolving to one address of each. ``ipv6_server``
    is (IPv6 address, port) of the IPv6 server when the server is given as an
    IPv4 literal (or overrides the name's AAAA record). The UDP binding lifetime search runs
    alongside the other tests and takes at most ``lifetime_max_seconds`` (0
    skips it). ``progress`` is called with a line as each test starts. When
    the server's port does not answer over TCP, ``tcp_fallback_port`` (a
    super node's plain firewall port; None to skip) is tried, so a firewall
    letting out only TCP 80 still gets a verdict ("UDP blocked"). The LAN's
    gateway is asked for port mapping (UPnP IGD, NAT-PMP, PCP) for
    ``upnp_timeout_seconds`` alongside (None skips it). ALG detection uses
    the server's echo service at ``echo_port`` (None skips it). TCP, ALG and
    port mapping are tested over native IPv4 only.

    ``dns64`` asks the system's DNS resolvers for ipv4only.arpa (RFC 7050;
    None: unless the server is on loopback). With a NAT64 prefix and no IPv4
    route, the IPv4 tests go to the server's IPv4 addresses through NAT64.

    Fires with a NatReport for IPv4, its ``ipv6`` the IPv6 one and its
    ``transition`` the IPv6 transition clues; a report is partial (see its
    ``notes``) when the server does not answer or lacks RFC 5780. Fails with
    NatCheckError when the server's name does not resolve.
    """
    settings = dict(lifetime_max_seconds=lifetime_max_seconds, rto_seconds=rto_seconds,
                    allocation_samples=allocation_samples)

    def ipv6_progress(line: str) -> None:
        if progress is not None:
            progress(f"IPv6 {line}")

    async def go() -> NatReport:
        host, port = server
        target4, target6 = await _targets(host, int(port), ipv6_server)
        loopback = any(ipaddress.ip_address(t[0]).is_loopback for t in (target4, target6) if t)
        found = Transition()
        asking = dns64 or (dns64 is None and not loopback)
        if asking and progress is not None:
            progress("NAT64: asking the DNS resolver for ipv4only.arpa (RFC 7050)")
        asked = Deferred.fromCoroutine(dns64_prefixes(reactor)) if asking else succeed(([], "not asked"))
        native4 = target4 is not None and _has_route(target4)
        # The prefix is needed first for IPv4 through NAT64, or to know an AAAA record DNS64 made.
        first = not native4 or (target6 is not None and ipv6_server is None)
        prefixes, why_not = (await asked) if first else ([], None)
        notes6 = []
        if target6 is not None and any(ipaddress.ip_address(target6[0]) in ipaddress.ip_network(p)
                                       for p in prefixes):
            notes6.append(f"{target6[0]} is a NAT64 address (DNS64 made it): no native IPv6 server to test")
            target6 = None
        tests = {}
        if native4:
            tests["ipv4"] = _analyse(Checker(reactor, target4, tcp=tcp, progress=progress,
                                             tcp_fallback_port=tcp_fallback_port,
                                             upnp_timeout_seconds=upnp_timeout_seconds, echo_port=echo_port,
                                             **settings))
            tests["hops"] = ipv4_hops(reactor, target4)
        elif target4 is not None and prefixes:
            tests["ipv4"] = _analyse(_through_nat64(reactor, target4, prefixes[0], progress, settings))
        if target6 is not None and _has_route(target6):
            tests["ipv6"] = _analyse(_udp_only(Checker(reactor, target6, tcp=False, progress=ipv6_progress,
                                                       **settings), "over IPv6"))
        elif target6 is not None:
            notes6.append(f"no IPv6 route to {target6[0]}")
            target6 = None
        try:
            done = await defer.gatherResults([Deferred.fromCoroutine(t) for t in tests.values()],
                                             consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        results = dict(zip(tests, done))
        if not first:
            prefixes, why_not = await asked  # asked alongside the tests
        if asking:
            found.nat64, found.nat64_prefixes = bool(prefixes), prefixes
        report = results.get("ipv4") or _untested("ipv4", _why_no_ipv4(target4, why_not))
        report.ipv6 = results.get("ipv6") or _untested("ipv6", "; ".join(notes6) or
                                                        "no IPv6 server address (give --ipv6-server or a name)")
        found.continuity_address = _continuity_address()
        found.ipv4_hops = results.get("hops", [])
        hop = next((hop for hop in found.ipv4_hops if is_continuity_address(hop)), None)
        found.ipv4_path = ipv4_path(native4, not native4 and "ipv4" in results, bool(prefixes),
                                    found.continuity_address, hop)
        found.aftr_address = hop if found.ipv4_path == DS_LITE else None  # else a CLAT's
        if found.nat64 is False:
            report.notes.append(f"NAT64: {why_not}")
        report.transition = found
        return report

    return Deferred.fromCoroutine(go())


def _through_nat64(reactor, target4: tuple[str, int], prefix: str, progress, settings: dict) -> Checker:
    """The IPv4 tests sent to the server's IPv4 addresses under the NAT64 prefix (RFC 6052)."""

    def reach(address):
        return (synthesize(prefix, address[0]), address[1]) if ":" not in address[0] else address

    checker = Checker(reactor, reach(target4), tcp=False, progress=progress, reach=reach, **settings)
    checker.report.family = "ipv4"
    checker.report.notes.append(f"IPv4 tested through NAT64: {show(target4)} as {show(reach(target4))}")
    return _udp_only(checker, "through NAT64")


def _udp_only(checker: Checker, where: str) -> Checker:
    checker.no_tcp_reason = f"TCP not tested {where}"
    checker.no_alg_reason = f"not tested {where}"
    return checker


def _untested(family: str, reason: str) -> NatReport:
    """The report of a family not tested (no server address of it, no route): no server, why in its notes."""
    return NatReport(server="", family=family, notes=[reason])


def _why_no_ipv4(target4, why_no_nat64: str | None) -> str:
    if target4 is None:
        return "no IPv4 server address"
    return f"no IPv4 route to {target4[0]}, and no NAT64 prefix ({why_no_nat64})"
