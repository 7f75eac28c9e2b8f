"""The peer ACL's IPv6 ranges (relay.peer_policy): ULA, link-local, documentation, the NAT64 prefixes
(well-known, local-use and the operator's own, RFC 6052 §2.2), and IPv4 addresses in IPv6 spellings."""

import functools
import ipaddress

import pytest

from relay.config import ConfigError, parse_nat64_prefix
from relay.peer_policy import HOSTS_REMEMBERED, PeerPolicy, Reach, nat64_ipv4

PUBLIC_V6 = "2606:4700::1111"


def policy(**kwargs) -> PeerPolicy:
    return PeerPolicy(is_local=lambda address: False, **kwargs)


@pytest.mark.parametrize("peer", [
    "fc00::1", "fd12:3456:789a::1", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",  # ULA fc00::/7
    "fe80::1", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",  # link-local fe80::/10
    "fec0::1",  # site-local fec0::/10
    "2001:db8::1", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",  # documentation 2001:db8::/32
    "3fff::1", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",  # documentation 3fff::/20 (RFC 9637)
    "2001:2::1",  # benchmarking 2001:2::/48
    "100::1",  # discard 100::/64
    "ff02::1", "ff0e::1",  # multicast
    "::1", "::",
])
def test_native_ipv6_ranges_are_denied(peer):
    """Every non-public IPv6 range is denied by default."""
    assert policy().reach(peer, 5000) is Reach.DENIED


@pytest.mark.parametrize("internal", ["10.0.0.1", "127.0.0.1", "169.254.169.254", "192.168.1.1", "100.64.0.1",
                                      "0.0.0.0", "198.18.0.1"])
@pytest.mark.parametrize("spelling", ["::ffff:{}", "::{}", "64:ff9b::{}"])
def test_internal_ipv4_in_ipv6_spellings_is_denied(internal, spelling):
    """IPv4-mapped, IPv4-compatible and NAT64 well-known-prefix spellings of an internal IPv4 address are denied."""
    assert policy().reach(spelling.format(internal), 5000) is Reach.DENIED


def test_nat64_well_known_prefix_reaches_public_ipv4():
    """64:ff9b::/96 carrying a public IPv4 address is a peer (through the NAT64), like the address itself."""
    assert policy().reach("64:ff9b::8.8.8.8", 5000) is Reach.HOST
    assert policy().reach("::ffff:8.8.8.8", 5000) is Reach.HOST
    assert policy().reach(PUBLIC_V6, 5000) is Reach.HOST


@pytest.mark.parametrize("peer", ["64:ff9b:1::8.8.8.8", "64:ff9b:1:808:8:800::", "64:ff9b:1::1",
                                  "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"])
def test_local_use_nat64_prefix_is_denied_unless_configured(peer):
    """64:ff9b:1::/48 (RFC 8215) is denied whole: where it carries its IPv4 address is the operator's choice."""
    assert policy().reach(peer, 5000) is Reach.DENIED


# RFC 6052 §2.4: 192.0.2.33 under a prefix of each allowed length.
RFC6052_EXAMPLES = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
]


@pytest.mark.parametrize("prefix, address", RFC6052_EXAMPLES)
def test_embedded_ipv4_at_every_prefix_length(prefix, address):
    """The IPv4 address is read from where RFC 6052 §2.2 puts it for each prefix length (its §2.4 examples)."""
    assert nat64_ipv4(ipaddress.IPv6Address(address), ipaddress.IPv6Network(prefix)) == ipaddress.IPv4Address(
        "192.0.2.33")
    assert _under(prefix, "192.0.2.33") == str(ipaddress.IPv6Address(address))


def _under(prefix: str, ipv4: str) -> str:
    """ipv4 embedded under prefix as RFC 6052 §2.2 lays it out (the u octet, bits 64-71, zero)."""
    network = ipaddress.IPv6Network(prefix)
    packed, value = bytearray(network.network_address.packed), ipaddress.IPv4Address(ipv4).packed
    if network.prefixlen == 96:
        packed[12:] = value
    else:
        spots = [i for i in range(network.prefixlen // 8, 16) if i != 8][:4]
        for spot, byte in zip(spots, value):
            packed[spot] = byte
    return str(ipaddress.IPv6Address(bytes(packed)))


@pytest.mark.parametrize("prefix", ["2001:db8:64::/96", "fd00:64::/64", "64:ff9b:1::/48", "2001:db8:100::/40",
                                    "2001:db8::/32", "2001:db8:122:300::/56"])
def test_configured_nat64_prefix_is_judged_by_its_ipv4(prefix):
    """Under a --nat64-prefix (even one inside a range denied otherwise) a public IPv4 address is a peer and an
    internal one is denied; without the option the same addresses are denied."""
    configured = policy(nat64=[prefix])
    for internal in ("10.0.0.1", "127.0.0.1", "169.254.169.254", "0.0.0.0"):
        assert configured.reach(_under(prefix, internal), 5000) is Reach.DENIED, internal
    assert configured.reach(_under(prefix, "8.8.8.8"), 5000) is Reach.HOST
    assert policy().reach(_under(prefix, "8.8.8.8"), 5000) is Reach.DENIED


def test_nat64_spelling_of_the_relays_own_address_is_its_own():
    """The relay's own IPv4 address under a configured NAT64 prefix is the relay's own host, refused at its
    listening port whatever --allow-peer says."""
    peers = policy(allow=["::/0"], own_addresses=["8.8.4.4"], own_endpoints=[("8.8.4.4", 3478)],
                   nat64=["2001:db8:64::/96"])
    assert peers.reach("2001:db8:64::8.8.4.4", 3478) is Reach.DENIED
    assert peers.reach("64:ff9b::8.8.4.4", 3478) is Reach.DENIED


def test_operator_rules_win_over_the_nat64_verdict():
    """--deny-peer over a NAT64 prefix denies public IPv4 addresses under it; --allow-peer opens a ULA."""
    assert policy(deny=["64:ff9b::/96"]).reach("64:ff9b::8.8.8.8", 5000) is Reach.DENIED
    assert policy(allow=["fd00:15::/64"]).reach("fd00:15::9", 5000) is Reach.HOST


@pytest.mark.parametrize("value, message", [
    ("2001:db8:64::/95", "must be /32"), ("10.0.0.0/8", "not an IPv6 prefix"), ("2001:db8::1/96", "not an IPv6"),
    ("nonsense", "not an IPv6 prefix"),
])
def test_bad_nat64_prefix_is_refused(value, message):
    """--nat64-prefix takes an IPv6 prefix of an RFC 6052 length with no host bits; anything else is refused."""
    with pytest.raises(ConfigError, match=message):
        parse_nat64_prefix(value)


def test_what_the_rules_say_of_a_host_is_remembered_but_local_addresses_are_asked_each_time():
    """A host is parsed and judged by the rules once while remembered (HOSTS_REMEMBERED at most); whether it is
    a local address is asked on every reach, so an address that becomes local is refused from then on."""
    local = set()
    peers = PeerPolicy(own_endpoints=[("0.0.0.0", 3478)], is_local=lambda address: str(address) in local)
    parsed = []
    facts = peers._facts
    peers._host_facts = functools.lru_cache(maxsize=HOSTS_REMEMBERED)(lambda host: parsed.append(host) or facts(host))
    assert peers.reach(PUBLIC_V6, 3478) is Reach.HOST and peers.reach(PUBLIC_V6, 3478) is Reach.HOST
    assert parsed == [PUBLIC_V6]
    local.add(PUBLIC_V6)
    assert peers.reach(PUBLIC_V6, 3478) is Reach.DENIED and parsed == [PUBLIC_V6]
    for i in range(HOSTS_REMEMBERED):
        peers.reach(f"2606:4700::{i + 2:x}", 1)
    assert peers.reach(PUBLIC_V6, 1) is Reach.DENIED and parsed.count(PUBLIC_V6) == 2  # forgotten, parsed again
    assert peers.reach("not an address", 1) is Reach.DENIED and peers.reach("::", 1) is Reach.DENIED
