"""What the node keeps of a field-test submission (docs/NAT_CHECK.md, the field test).

A checked submission (``rendezvous.wire.results``) becomes a *record*: the
NAT behaviour words and numbers the charts need, the form's free text, and
the submitter's network cut to its /24 (IPv4) or /48 (IPv6), so that no full
client address is ever stored. Addresses inside the report (local, mapped,
gateway, ALG rewrites) and the port samples are dropped here.
"""

from __future__ import annotations

import ipaddress
import secrets

from rendezvous.wire.results import FORM_FIELDS, NAT_FIELDS

IPV4_PREFIX, IPV6_PREFIX = 24, 48
ID_BYTES = 9  # 12 URL-safe characters: a permanent link that cannot be guessed


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def network_of(address: str) -> str:
    """The /24 or /48 that address lies in (an IPv4-mapped IPv6 address counts as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def record_of(submission: dict) -> dict:
    """The fields of a checked submission that the node stores and shows."""
    if submission["kind"] == "outcome":
        return {
            "kind": "outcome",
            "local": dict(submission["local"]),
            "remote": dict(submission["remote"]),
            "attempts": [dict(a) for a in submission["attempts"]],
            "path": submission["path"],
        }
    report = submission["report"]
    allocation = report.get("port_allocation") or {}
    upnp = report.get("upnp")
    return {
        "kind": "nat-check",
        **{name: report.get(name) for name in NAT_FIELDS},
        "port_allocation": allocation.get("pattern"),
        "port_delta": allocation.get("delta"),
        "port_prediction": allocation.get("prediction"),
        "gateways": None if upnp is None else {name: answer["answered"] for name, answer in upnp.items()},
        "form": {name: " ".join(value.split()) for name, value in submission.get("form", {}).items()
                 if name in FORM_FIELDS and value.strip()},
    }
