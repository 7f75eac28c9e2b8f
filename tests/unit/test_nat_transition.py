"""The NAT check's IPv6 transition verdicts (rendezvous.peer.nat_check.transition), sans IO."""

import ipaddress
import json

import pytest

from rendezvous.peer.nat_check import NatReport
from rendezvous.peer.nat_check.discovery import system_nameservers
from rendezvous.peer.nat_check.transition import (Transition, ipv4_path, is_continuity_address, nat64_prefixes,
                                                  nptv6, synthesize)

# RFC 6052 §2.4's examples: 192.0.2.33 under each prefix length.
RFC6052_EXAMPLES = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
]


@pytest.mark.parametrize("prefix, address", RFC6052_EXAMPLES)
def test_synthesis_matches_rfc6052_examples(prefix, address):
    """An IPv4 address under each allowed prefix length lands where RFC 6052 §2.4 shows it."""
    assert ipaddress.IPv6Address(synthesize(prefix, "192.0.2.33")) == ipaddress.IPv6Address(address)


@pytest.mark.parametrize("prefix", [p for p, _ in RFC6052_EXAMPLES] + ["64:ff9b::/96"])
def test_prefix_is_found_from_ipv4only_arpa(prefix):
    """RFC 7050 §3: the AAAA answers for ipv4only.arpa give back the prefix, whatever its length."""
    answer = [synthesize(prefix, "192.0.0.170"), synthesize(prefix, "192.0.0.171")]
    assert nat64_prefixes(answer) == [prefix]


def test_unrelated_aaaa_records_give_no_prefix():
    """AAAA records that embed neither well-known address (no DNS64, a real AAAA) give no prefix."""
    assert nat64_prefixes(["2001:db8::1", "not an address", "2001:db8:1::c000:ac"]) == []


def test_two_prefixes_are_kept_in_answer_order():
    """A resolver with two NAT64 prefixes yields both, in the order of its answer."""
    answer = [synthesize("2001:db8:64:2::/96", "192.0.0.171"), synthesize("64:ff9b::/96", "192.0.0.170")]
    assert nat64_prefixes(answer) == ["2001:db8:64:2::/96", "64:ff9b::/96"]


def test_other_prefix_lengths_are_refused():
    """RFC 6052 allows only /32, /40, /48, /56, /64 and /96."""
    with pytest.raises(ValueError):
        synthesize("2001:db8::/80", "192.0.2.1")


def test_nptv6_keeps_the_interface_identifier():
    """Another prefix with the same low 64 bits is NPTv6; the same address or another identifier is not."""
    assert nptv6("fd00:1:2:3::42", "2001:db8:9:3::42") is True
    assert nptv6("2001:db8:1::2", "2001:db8:1::2") is False
    assert nptv6("fd00:1:2:3::42", "2001:db8:9:3::43") is False
    assert nptv6("192.168.1.2", "198.18.0.11") is None


def test_service_continuity_addresses():
    """192.0.0.0/29 (RFC 7335) is the B4/AFTR/CLAT range; 192.0.0.8 and IPv6 are not."""
    assert is_continuity_address("192.0.0.1") and is_continuity_address("192.0.0.7")
    assert not is_continuity_address("192.0.0.8")
    assert not is_continuity_address("2001:db8::1") and not is_continuity_address(None)


def test_ipv4_path_verdicts():
    """NAT64 when reached through it, 464XLAT with a local 192.0.0.0/29 and NAT64, DS-Lite by B4 or AFTR, else native."""
    assert ipv4_path(False, True, True, None, None) == "nat64"
    assert ipv4_path(True, False, True, "192.0.0.4 on clat4", None) == "464xlat"
    assert ipv4_path(True, False, False, "192.0.0.2 on dslite", None) == "ds-lite"
    assert ipv4_path(True, False, False, None, "192.0.0.1") == "ds-lite"
    assert ipv4_path(True, False, False, None, None) == "native"
    assert ipv4_path(False, False, False, None, None) is None


def test_report_carries_both_families_and_the_transition():
    """The JSON nests the IPv6 report and the transition; the text shows both sections."""
    six = NatReport(server="[2001:db8::1]:3478", family="ipv6", server_answered=True, nat_present=False,
                    filtering="address-and-port-dependent", classic="symmetric UDP firewall", nptv6=False)
    report = NatReport(server="198.18.0.1:3478", ipv6=six,
                       transition=Transition(ipv4_path="nat64", nat64=True, nat64_prefixes=["64:ff9b::/96"]))
    data = json.loads(report.to_json())
    assert data["ipv6"]["family"] == "ipv6" and data["ipv6"]["nat_type"] == "symmetric UDP firewall"
    assert data["transition"]["nat64_prefixes"] == ["64:ff9b::/96"]
    text = report.to_text()
    assert "IPv6 NAT check against [2001:db8::1]:3478" in text
    assert "IPv4 path:            through NAT64" in text and "NAT64 prefix:         64:ff9b::/96" in text


def test_nameservers_come_from_resolv_conf(tmp_path):
    """The nameserver lines of resolv.conf, a zone index dropped; nothing for a missing file."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch lab\nnameserver 2001:db8:2::1\nnameserver fe80::1%eth0\nnameserver\n")
    assert system_nameservers(conf) == [("2001:db8:2::1", 53), ("fe80::1", 53)]
    assert system_nameservers(tmp_path / "missing") == []


def test_a_family_not_tested_says_why():
    """A family without a server address reads "not tested" with the reason, not as a silent server."""
    report = NatReport(server="198.18.0.1:3478", ipv6=NatReport(server="", family="ipv6", notes=["no IPv6 route"]))
    assert "IPv6 NAT check: not tested (no IPv6 route)" in report.to_text()
