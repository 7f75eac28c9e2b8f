"""TURN allocations of either address family over either transport family (RFC 8656 §7.2 steps 5-9, §8.2,
§10.2, §11.2, §12.2): REQUESTED- and ADDITIONAL-ADDRESS-FAMILY, 440 and 443 where the RFC puts them."""

import pytest

from rendezvous.stun import Attr, Class, Method
from rendezvous.stun.attributes import (
    decode_address_error_code,
    encode_address_family,
    encode_even_port,
    encode_uint32,
)
from rendezvous.stun.constants import AddressFamily
from tests.turn_helpers import bind, code, permit
from tests.unit.test_turn_server import Client, FakePorts, clock, make_server  # noqa: F401 (clock: a fixture)

V4, V6 = AddressFamily.IPV4, AddressFamily.IPV6
SERVER6 = ("2001:db8::53", 3478)
UDP6_TUPLE = ("udp", ("2001:db8:1::7", 40000), SERVER6)
TCP6_TUPLE = ("tcp", ("2001:db8:1::7", 40001), SERVER6)


def requested(family):
    return Attr.REQUESTED_ADDRESS_FAMILY, encode_address_family(family)


def additional(family):
    return Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(family)


def relayed(response):
    return [address[0] for address in response.addresses(Attr.XOR_RELAYED_ADDRESS)]


def address_errors(response):
    return [decode_address_error_code(value)[:2] for value in response.get_all(Attr.ADDRESS_ERROR_CODE)]


@pytest.fixture
def dual(clock):
    """A relay with relayed addresses in both families."""
    return make_server(clock, ports=FakePorts(families=(4, 6)), families=frozenset({4, 6}))


@pytest.mark.parametrize("five_tuple", [("udp", ("203.0.113.5", 40000), ("198.18.0.1", 3478)), UDP6_TUPLE,
                                        TCP6_TUPLE])
@pytest.mark.parametrize("family, address", [(None, "198.18.0.1"), (V4, "198.18.0.1"), (V6, "2001:db8::1")])
def test_either_family_over_either_transport_family(dual, five_tuple, family, address):
    """An IPv4 or IPv6 relayed address is allocated over an IPv4 or IPv6 client transport; IPv4 by default;
    XOR-MAPPED-ADDRESS is the client's own address, of the transport's family."""
    client = Client(dual, five_tuple=five_tuple)
    response = client.allocate(*([requested(family)] if family else []))
    assert response.cls == Class.SUCCESS
    assert relayed(response) == [address]
    assert response.address(Attr.XOR_MAPPED_ADDRESS) == five_tuple[1]


@pytest.mark.parametrize("five_tuple", [("udp", ("203.0.113.5", 40000), ("198.18.0.1", 3478)), UDP6_TUPLE])
def test_dual_allocation_over_either_transport_family(dual, five_tuple):
    """ADDITIONAL-ADDRESS-FAMILY IPv6 gives an IPv4 and an IPv6 relayed address, whatever the client's family."""
    response = Client(dual, five_tuple=five_tuple).allocate(additional(V6))
    assert relayed(response) == ["198.18.0.1", "2001:db8::1"]
    assert response.get(Attr.ADDRESS_ERROR_CODE) is None


def test_a_family_not_served_is_440(clock):
    """Step 7: REQUESTED-ADDRESS-FAMILY of a family without a relayed address is 440; without the attribute
    an IPv6-only relay is 440 too (IPv4 is the default family)."""
    v4_only = make_server(clock)
    assert code(Client(v4_only).allocate(requested(V6))) == 440
    v6_only = make_server(clock, ports=FakePorts(families=(6,)), families=frozenset({6}))
    assert code(Client(v6_only, five_tuple=UDP6_TUPLE).allocate()) == 440
    assert relayed(Client(v6_only, five_tuple=UDP6_TUPLE).allocate(requested(V6))) == ["2001:db8::1"]
    assert code(Client(v6_only, five_tuple=TCP6_TUPLE).allocate(additional(V6))) == 440


def test_requested_and_additional_together_are_400(dual):
    """Step 6: both family attributes in one Allocate are 400."""
    assert code(Client(dual).allocate(requested(V4), additional(V6))) == 400


def test_additional_ipv4_is_400(dual):
    """Step 9: ADDITIONAL-ADDRESS-FAMILY must name IPv6."""
    assert code(Client(dual).allocate(additional(V4))) == 400


@pytest.mark.parametrize("family_attribute", [requested(V6), additional(V6), (Attr.EVEN_PORT, b"\x00")])
def test_reservation_token_with_a_family_or_even_port_is_400(dual, family_attribute):
    """Step 5: RESERVATION-TOKEN with EVEN-PORT or either family attribute is 400."""
    assert code(Client(dual).allocate((Attr.RESERVATION_TOKEN, b"T" * 8), family_attribute)) == 400


def test_even_port_r_with_additional_is_400_but_r0_is_allowed(dual):
    """Step 8: EVEN-PORT with the R bit and ADDITIONAL-ADDRESS-FAMILY is 400; without the R bit both
    relayed ports are even."""
    assert code(Client(dual).allocate((Attr.EVEN_PORT, encode_even_port(True)), additional(V6))) == 400
    response = Client(dual).allocate((Attr.EVEN_PORT, encode_even_port(False)), additional(V6))
    ports = [address[1] for address in response.addresses(Attr.XOR_RELAYED_ADDRESS)]
    assert len(ports) == 2 and all(port % 2 == 0 for port in ports)


def test_partial_dual_allocation_tells_why_in_address_error_code(clock):
    """Step 9: an IPv6 address not served is ADDRESS-ERROR-CODE 440, one that cannot be had 508; the IPv4
    allocation stands."""
    v4_only = make_server(clock)
    response = Client(v4_only).allocate(additional(V6))
    assert relayed(response) == ["198.18.0.1"] and address_errors(response) == [(V6, 440)]
    full = make_server(clock, ports=FakePorts(families=(4, 6), limit=1), families=frozenset({4, 6}))
    response = Client(full).allocate(additional(V6))
    assert relayed(response) == ["198.18.0.1"] and address_errors(response) == [(V6, 508)]
    assert len(full.allocations) == 1


def test_refresh_of_another_family_is_443(dual):
    """§8.2: Refresh with REQUESTED-ADDRESS-FAMILY other than the allocation's is 443; its own family works."""
    client = Client(dual)
    client.allocate()
    refreshed = client.request(Method.REFRESH, requested(V6), (Attr.LIFETIME, encode_uint32(600)))
    assert code(refreshed) == 443
    assert client.request(Method.REFRESH, requested(V4), (Attr.LIFETIME, encode_uint32(600))).cls == Class.SUCCESS


@pytest.mark.parametrize("family, peer", [(V4, ("2606:4700::1", 1)), (V6, ("8.8.8.8", 1))])
def test_peer_of_another_family_is_443(dual, family, peer):
    """§10.2 / §12.2: CreatePermission and ChannelBind to a peer of a family the allocation has no relayed
    address in are 443."""
    client = Client(dual)
    client.allocate(requested(family))
    assert code(permit(client, peer)) == 443
    assert code(bind(client, 0x4001, peer)) == 443


def test_dual_allocation_reaches_peers_of_both_families(dual):
    """A dual allocation takes permissions to IPv4 and IPv6 peers and relays to each from its own family's
    relayed address; a Send to a family it lacks is dropped (§11.2)."""
    client = Client(dual)
    client.allocate(additional(V6))
    assert permit(client, ("8.8.8.8", 1), ("2606:4700::1", 1)).cls == Class.SUCCESS
    allocation = next(iter(dual.allocations.values()))
    allocation.send_to_peer(("8.8.8.8", 9), b"four")
    allocation.send_to_peer(("2606:4700::1", 9), b"six")
    assert allocation.relays[4].sent == [(b"four", ("8.8.8.8", 9))]
    assert allocation.relays[6].sent == [(b"six", ("2606:4700::1", 9))]
    single = Client(dual, five_tuple=UDP6_TUPLE)
    single.allocate()
    only_v4 = dual.allocations[UDP6_TUPLE]
    only_v4.permissions["2606:4700::1"] = float("inf")
    only_v4.send_to_peer(("2606:4700::1", 9), b"nowhere")
    assert only_v4.relays[4].sent == []


def test_coturns_draft_code_point_asks_for_a_dual_allocation_too(clock, dual):
    """ADDITIONAL-ADDRESS-FAMILY at coturn's draft code point 0x8032 works as at 0x8000, and a partial
    allocation answers it with ADDRESS-ERROR-CODE at 0x8033."""
    draft = (Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY, encode_address_family(V6))
    assert relayed(Client(dual).allocate(draft)) == ["198.18.0.1", "2001:db8::1"]
    response = Client(make_server(clock)).allocate(draft)
    assert relayed(response) == ["198.18.0.1"] and response.get(Attr.ADDRESS_ERROR_CODE) is None
    assert decode_address_error_code(response.get(Attr.DRAFT_ADDRESS_ERROR_CODE))[:2] == (V6, 440)
    assert code(Client(make_server(clock)).allocate((Attr.RESERVATION_TOKEN, b"T" * 8), draft)) == 400
