"""What the NAT check found (``NatReport``), as JSON or as text in the
manner of the TUM NAT Analyzer; the words are RFC 5780 §4.3/§4.4's and
RFC 3489 §5's (see ``decisions``). The report is the IPv4 one; its ``ipv6``
is the same kind of report for IPv6, and ``transition`` says how IPv4
leaves the host (native, NAT64, 464XLAT, DS-Lite; see ``transition``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from upnp_helper.probe import NAMES as GATEWAY_NAMES
from upnp_helper.probe import GatewayAnswer

from rendezvous.peer.nat_check.decisions import SEQUENTIAL, PortAllocation
from rendezvous.peer.nat_check.transition import Transition

ALG_UNSUPPORTED = "unsupported by server"


@dataclass
class NatReport:
    """What the check found; None anywhere means "not determined" (see ``notes``)."""

    server: str
    family: str = "ipv4"
    other_address: str | None = None
    server_answered: bool = False
    rfc5780: bool | None = None
    udp_blocked: bool | None = None
    local_address: str | None = None
    mapped_address: str | None = None
    nat_present: bool | None = None
    mapping: str | None = None
    filtering: str | None = None
    classic: str | None = None
    port_preservation: bool | None = None
    port_allocation: PortAllocation | None = None
    port_prediction_easy: bool | None = None
    hairpinning: bool | None = None
    binding_lifetime_seconds: float | None = None
    binding_lifetime_max_seconds: float | None = None
    tcp_mapping: str | None = None
    tcp_port_preservation: bool | None = None
    tcp_server_port: int | None = None
    mapped_address_rewritten: bool | None = None
    alg: bool | None = None
    alg_reason: str | None = ALG_UNSUPPORTED
    alg_rewritten: dict[str, list[str] | None] | None = None
    upnp: dict[str, GatewayAnswer] | None = None
    nptv6: bool | None = None  # IPv6: the prefix was translated, the interface identifier kept (RFC 6296)
    ipv6: NatReport | None = None
    transition: Transition | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict (``mapping``/``filtering`` use the RFC 5780 words)."""
        data = asdict(self)
        allocation = self.port_allocation
        data["port_allocation"] = {
            "pattern": allocation.pattern if allocation else None,
            "delta": allocation.delta if allocation else None,
            "samples": [list(s) for s in allocation.samples] if allocation else [],
            "prediction": _easy_word(self.port_prediction_easy),
        }
        data["nat_type"] = self.classic
        data["upnp"] = None if self.upnp is None else {name: a.to_dict() for name, a in self.upnp.items()}
        data["ipv6"] = None if self.ipv6 is None else self.ipv6.to_dict()
        return data

    def to_json(self) -> str:
        """The report as a JSON document."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """A readable report, in the manner of the TUM NAT Analyzer; IPv6 and the transition after IPv4."""
        lines = self._family_lines()
        if self.ipv6 is not None:
            lines += self.ipv6._family_lines()
        if self.transition is not None:
            lines += _transition_lines(self.transition)
        return "\n".join(lines) + "\n"

    def _family_lines(self) -> list[str]:
        family = "IPv6" if self.family == "ipv6" else "IPv4"
        if not self.server:
            return [f"{family} NAT check: not tested ({'; '.join(self.notes)})"]
        lines = [f"{family} NAT check against {self.server}"
                 + (f" (alternate {self.other_address})" if self.other_address else "")]

        def row(name: str, value: str) -> None:
            lines.append(f"  {name + ':':<22}{value}")

        if not self.server_answered:
            row("Result", "the server did not answer (see the notes)")
        row("Local address", self.local_address or "unknown")
        row("Mapped address", self.mapped_address or "unknown")
        if self.nptv6:
            row("Prefix translation", "NPTv6: another prefix, the same interface identifier (RFC 6296)")
        row("NAT type", self.classic or "unknown")
        if self.udp_blocked:
            row("UDP", "blocked (no answer over UDP, but over TCP)")
        mapping = _behaviour_text(self.mapping, "mapping")
        easy = self.port_prediction_easy
        if easy is not None and not self.udp_blocked:
            mapping += ", port prediction is " + ("easy" if easy else "hard")
        row("Mapping", mapping)
        row("Filtering", _behaviour_text(self.filtering, "filtering"))
        row("Port preservation", _yes_no(self.port_preservation))
        allocation = self.port_allocation
        if allocation and allocation.pattern == SEQUENTIAL:
            row("Port allocation", f"sequential, delta {allocation.delta:+d}")
        else:
            row("Port allocation", (allocation.pattern if allocation else None) or "unknown")
        row("Hairpinning", _yes_no(self.hairpinning))
        row("UDP binding lifetime", self._lifetime_text())
        tcp_text = _behaviour_text(self.tcp_mapping, "mapping")
        if self.tcp_port_preservation is not None:
            tcp_text += ", port " + ("preserved" if self.tcp_port_preservation else "changed")
        if self.tcp_server_port is not None and not self.server.endswith(f":{self.tcp_server_port}"):
            tcp_text += f" (only port {self.tcp_server_port} answered)"
        row("TCP", tcp_text)
        if self.mapped_address_rewritten:
            row("Address rewriting", "MAPPED-ADDRESS was rewritten on the way: an ALG is on the path")
        row("ALG", self._alg_text())
        row("Port mapping", self._gateway_text())
        for note in self.notes:
            lines.append(f"  note: {note}")
        return lines

    def _alg_text(self) -> str:
        if self.alg is None:
            return "not tested (" + (self.alg_reason or "unknown") + ")"
        seen = {name: fields for name, fields in (self.alg_rewritten or {}).items() if fields is not None}
        if not self.alg:
            return "none seen (SIP INVITE echoed unchanged over " + ", ".join(n.upper() for n in seen) + ")"
        return "SIP payload rewritten: " + "; ".join(
            f"{name.upper()}: {', '.join(fields)}" for name, fields in seen.items() if fields)

    def _gateway_text(self) -> str:
        if self.upnp is None:
            return "not tested"
        answered = [a for a in self.upnp.values() if a.answered]
        if not answered:
            return "no gateway answered (" + ", ".join(GATEWAY_NAMES[name] for name in self.upnp) + ")"
        return "; ".join(f"{GATEWAY_NAMES[a.protocol]} answered"
                         + (f", external address {a.external_address}" if a.external_address else "")
                         + (f" ({a.error})" if a.error else "") for a in answered)

    def _lifetime_text(self) -> str:
        lower, upper = self.binding_lifetime_seconds, self.binding_lifetime_max_seconds
        if lower is None and upper is None:
            return "not measured"
        if upper is None:
            return f"at least {lower:g} s"
        if lower is None:
            return f"less than {upper:g} s"
        return f"between {lower:g} and {upper:g} s"


def _transition_lines(found: Transition) -> list[str]:
    """The transition section: how IPv4 leaves, NAT64 and its prefixes, the 192.0.0.0/29 clues."""
    lines = ["IPv6 transition"]
    path = {"native": "native", "nat64": "through NAT64 (this host has no IPv4 route)",
            "464xlat": "464XLAT: a CLAT on this host, then NAT64", "ds-lite": "DS-Lite: tunnelled to an AFTR"}
    lines.append(f"  {'IPv4 path:':<22}{path.get(found.ipv4_path, 'none')}")
    nat64 = "unknown" if found.nat64 is None else ("no" if not found.nat64 else ", ".join(found.nat64_prefixes))
    lines.append(f"  {'NAT64 prefix:':<22}{nat64}")
    if found.continuity_address:
        lines.append(f"  {'192.0.0.0/29 here:':<22}{found.continuity_address}")
    if found.aftr_address:
        lines.append(f"  {'AFTR on the path:':<22}{found.aftr_address}")
    return lines


def _behaviour_text(value: str | None, what: str) -> str:
    if value is None:
        return "unknown"
    return f"{value.replace('-', ' ').capitalize()} {what}"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _easy_word(value: bool | None) -> str | None:
    return None if value is None else ("easy" if value else "hard")
