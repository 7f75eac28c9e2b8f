"""Which STUN and TURN addresses a session uses on dual-stack and IPv6-only hosts (RFC 8305 §7.1, RFC 8656)."""

from types import SimpleNamespace

from rendezvous.peer.gathering import _stun_server
from rendezvous.peer.relay_race import reachable, relay_targets
from rendezvous.peer.nat64 import Nat64

NAT64 = Nat64("2001:db8:64:4::/96")
TURN = {"urls": ["turn:198.18.0.1:3478?transport=udp", "turn:[2001:db8::1]:3478?transport=udp",
                 "turn:198.18.0.1:3478?transport=tcp"]}


def signaling(turn=TURN, node_ips=("198.18.0.1", "2001:db8::1")):
    return SimpleNamespace(server=("198.18.0.1", 3478), welcome={"turn": turn, "node_ips": list(node_ips)})


def test_stun_servers_of_each_family():
    """The node's STUN address of each family comes from its TURN URLs, IPv6 else from node_ips; none without."""
    assert _stun_server(signaling()) == ("198.18.0.1", 3478)
    assert _stun_server(signaling(), ipv6=True) == ("2001:db8::1", 3478)
    only_ipv4_urls = signaling(turn={"urls": TURN["urls"][:1]})
    assert _stun_server(only_ipv4_urls, ipv6=True) == ("2001:db8::1", 3478)
    assert _stun_server(signaling(turn=None, node_ips=["198.18.0.1"]), ipv6=True) is None


def test_an_ipv6_only_host_uses_a_native_ipv6_relay_address_before_nat64():
    """Without an IPv4 route, a transport the node offers over IPv6 goes there natively; one it offers only at
    an IPv4 address goes through NAT64 (RFC 8305 §7.1), or is left out without NAT64."""
    targets = relay_targets(signaling(), TURN, ("udp", "tcp", "tls"), tls=False)
    assert reachable(targets, lambda ip: False, NAT64) == [
        ("udp", ("2001:db8::1", 3478)), ("tcp", ("2001:db8:64:4::c612:1", 3478))]
    assert reachable(targets, lambda ip: False, None) == [("udp", ("2001:db8::1", 3478))]


def test_a_dual_stack_host_races_both_families():
    """With routes to both families every TURN address is raced as it is."""
    targets = relay_targets(signaling(), TURN, ("udp", "tcp", "tls"), tls=False)
    assert reachable(targets, lambda ip: True, NAT64) == targets
    assert ("udp", ("2001:db8::1", 3478)) in targets and ("udp", ("198.18.0.1", 3478)) in targets

