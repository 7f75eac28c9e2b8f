"""The IPv6 kinds of the NAT lab: nat-check's per-family verdicts behind a
dual-stack home with an IPv6 stateful firewall, on an IPv6-only access with
NAT64/DNS64 (and with a CLAT: 464XLAT), and behind DS-Lite; connect() between two firewalled homes, from
NPTv6 to a firewalled home (direct over IPv6 by the IPv6 server-reflexive candidate), from DS-Lite and from
behind a CLAT to an IPv4-only cone NAT, and between an IPv6-only NAT64 access without a CLAT and IPv4-only
sites: direct through the NAT64 to a cone, on the dual-stack relay to a UDP-blocked site. (test_nat_check.py
checks their teardown.)

One lab per module: one dual-stack super node (RFC 5780 in both families,
TURN with dual allocations), the lab's DNS root, and one site of each kind
(two firewalled homes, and an IPv4-only restricted cone and UDP-blocked
site for the transition kinds to reach).
"""

import pytest

from rendezvous.peer.nat_check import ADDRESS_AND_PORT_DEPENDENT as APDF
from rendezvous.peer.nat_check import ENDPOINT_INDEPENDENT as EI

from .conftest import opened_lab
from .lab import SERVER_IP, SERVER_PORT
from .connect_client import add_buddies, run_pair, user
from .test_nat_check import SERVER, run_nat_check
from .transition import AFTR_IP, SERVER_ALT_IP6, SERVER_IP6

SERVER6 = f"[{SERVER_IP6}]:3478"
LAB_IPV6 = "2001:db8::/32"  # the lab's IPv6 "internet" (tests/natlab/transition.py)
FIREWALL = "eim-apdf+ipv6-firewall"
NPTV6 = "eim-apdf+ipv6-nptv6"

pytestmark = pytest.mark.natlab


@pytest.fixture(scope="module")
def lab6(tmp_path_factory):
    """Two dual-stack homes behind IPv6 firewalls, one behind NPTv6, an IPv6-only NAT64 access (one with a
    CLAT), a DS-Lite home, a restricted cone and a UDP-blocked site; one dual-stack node."""
    with opened_lab(tmp_path_factory.mktemp("natlab-ipv6")) as lab:
        lab.build_public()
        lab.start_dns_root()
        homes = (lab.add_site("eim-apdf", ipv6="firewall"), lab.add_site("eim-apdf", ipv6="firewall"))
        lab.kinds = {FIREWALL: homes, NPTV6: lab.add_site("eim-apdf", ipv6="nptv6"), "nat64": lab.add_site("nat64"),
                     "464xlat": lab.add_site("464xlat"), "ds-lite": lab.add_site("ds-lite"),
                     "eim-adf": lab.add_site("eim-adf"), "udp-blocked": lab.add_site("udp-blocked")}
        add_buddies(lab, [user(site) for site in (*homes, *(lab.kinds[kind] for kind in (
            NPTV6, "nat64", "ds-lite", "464xlat", "eim-adf", "udp-blocked")))])
        # One dual-stack node: RFC 5780 in both families, its relay on both (dual allocations), IPv6 peers allowed.
        lab.start_server("--ip", SERVER_IP6, "--alt-ip", SERVER_ALT_IP6, "--allow-peer", LAB_IPV6, relay=True)
        yield lab


def check_both(site) -> dict:
    """nat-check in the site's client against the IPv4 node, with the IPv6 node named; its JSON report."""
    status, report, stderr = run_nat_check(SERVER, "--ipv6-server", SERVER6, "--lifetime-max-seconds", "0",
                                           "--no-upnp", "--no-tcp", "--echo-port", "0",
                                           prefix=tuple(site.exec_argv()))
    assert status == 0 and report is not None, stderr
    return report


def test_dual_stack_home_behind_an_ipv6_firewall(lab6):
    """IPv4 is NATed (EIM, APDF); IPv6 has no NAT but a stateful firewall: APDF, a "symmetric UDP firewall"."""
    site = lab6.kinds[FIREWALL][0]
    report = check_both(site)
    assert (report["mapping"], report["filtering"], report["nat_present"]) == (EI, APDF, True)
    six = report["ipv6"]
    assert six["family"] == "ipv6" and six["server_answered"] and six["rfc5780"], six
    assert six["nat_present"] is False and six["nptv6"] is False
    assert six["mapped_address"].startswith(f"[{site.client_ip6}]:")
    assert (six["mapping"], six["filtering"], six["nat_type"]) == (EI, APDF, "symmetric UDP firewall")
    transition = report["transition"]
    assert transition["ipv4_path"] == "native" and transition["nat64"] is False, transition
    assert transition["aftr_address"] is None and transition["continuity_address"] is None


def test_prefix_translation_is_told_from_nat66(lab6):
    """Behind NPTv6 the IPv6 mapped address has the global prefix and the client's interface identifier."""
    site = lab6.kinds[NPTV6]
    six = check_both(site)["ipv6"]
    assert six["nat_present"] is True and six["nptv6"] is True, six
    assert six["local_address"].startswith(f"[{site.client_ip6}]:") and site.client_ip6.startswith("fd00:")
    assert six["mapped_address"].startswith(f"[{site.client_ip6.replace('fd00:', '2001:db8:')}]:"), six
    assert (six["mapping"], six["filtering"]) == (EI, APDF)


def test_ipv6_only_access_with_nat64(lab6):
    """With IPv6 only, DNS64 gives the NAT64 prefix (RFC 7050), the IPv4 tests run through it, and IPv6 is open."""
    site = lab6.kinds["nat64"]
    report = check_both(site)
    transition = report["transition"]
    assert transition["nat64"] is True and transition["nat64_prefixes"] == [site.nat64_prefix], transition
    assert transition["ipv4_path"] == "nat64"
    assert report["family"] == "ipv4" and report["server_answered"], report
    assert report["mapped_address"].startswith(site.wan_ip + ":")  # tayga's pool, masqueraded
    assert (report["mapping"], report["filtering"]) == (EI, APDF)
    assert report["server"].startswith("[2001:db8:64:")  # the node's IPv4 address under the prefix
    six = report["ipv6"]
    assert six["nat_present"] is False and six["filtering"] == EI and six["nat_type"] == "open internet", six


def test_464xlat_is_told_from_its_clat(lab6):
    """Behind a CLAT, IPv4 works natively from the host's 192.0.0.0/29 address and DNS64 finds the prefix: 464XLAT."""
    site = lab6.kinds["464xlat"]
    report = check_both(site)
    transition = report["transition"]
    assert transition["ipv4_path"] == "464xlat", transition
    assert transition["continuity_address"] == f"{site.client_ip} on clat" and transition["aftr_address"] is None
    assert transition["nat64_prefixes"] == [site.nat64_prefix]
    assert report["server"] == SERVER and report["mapped_address"].startswith(site.wan_ip + ":"), report
    assert (report["mapping"], report["filtering"]) == (EI, APDF)


def test_ds_lite_leaves_through_the_aftr(lab6):
    """Behind DS-Lite, IPv4 leaves through the AFTR (a 192.0.0.0/29 hop), NATed there; IPv6 is firewalled."""
    site = lab6.kinds["ds-lite"]
    report = check_both(site)
    transition = report["transition"]
    assert transition["ipv4_path"] == "ds-lite" and transition["aftr_address"] == AFTR_IP, transition
    assert transition["nat64"] is False
    assert report["mapped_address"].startswith(site.wan_ip + ":")  # the AFTR's address
    assert (report["mapping"], report["filtering"]) == (EI, APDF)
    six = report["ipv6"]
    assert six["nat_present"] is False and six["filtering"] == APDF, six


def test_connect_between_firewalled_homes_goes_direct_over_ipv6(lab6):
    """Two dual-stack homes behind IPv6 stateful firewalls connect directly between their IPv6 addresses."""
    caller, callee = lab6.kinds[FIREWALL]
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], (mine, theirs)
    assert mine["path"] == "udp-direct", mine
    assert mine["remote"][0] == callee.client_ip6 and mine["local"][0] == caller.client_ip6, mine


@pytest.mark.parametrize("kind", ["ds-lite", "464xlat"])
def test_connect_over_the_transition_to_an_ipv4_only_cone(lab6, kind):
    """From DS-Lite (through the AFTR's mapping) and from behind a CLAT (464XLAT: CLAT, then NAT64), a client
    reaches an IPv4-only restricted cone directly over IPv4, at the public addresses of their translators."""
    caller, callee = lab6.kinds[kind], lab6.kinds["eim-adf"]
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], (mine, theirs)
    assert mine["path"] == "udp-direct", mine
    assert mine["remote"][0] == callee.wan_ip and theirs["remote"][0] == caller.wan_ip, (mine, theirs)


def test_prefix_translated_home_goes_direct_over_ipv6_by_its_reflexive_address(lab6):
    """Behind NPTv6 the client's IPv6 server-reflexive candidate (its global address, from the node's IPv6
    address) is what a firewalled home reaches it at: the two connect directly over IPv6."""
    caller, callee = lab6.kinds[NPTV6], lab6.kinds[FIREWALL][0]
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], (mine, theirs)
    assert mine["path"] == "udp-direct", mine
    assert mine["remote"][0] == callee.client_ip6, mine
    assert theirs["remote"][0] == caller.client_ip6.replace("fd00:", "2001:db8:"), theirs


@pytest.mark.parametrize("calling", [True, False], ids=["ipv6-only-calls", "ipv4-only-calls"])
def test_ipv6_only_client_reaches_an_ipv4_only_cone_through_nat64(lab6, calling):
    """An IPv6-only client behind NAT64 (no IPv4 address, no CLAT) and an IPv4-only restricted cone connect
    directly through the NAT64: the client logs in at the node's IPv4 address under the prefix DNS64 gives
    (RFC 7050, RFC 8305 §7.1), its server-reflexive candidate is the NAT64's IPv4 mapping, and its checks go
    to the cone's IPv4 address under the prefix; each side sees the other at an IPv4 address."""
    nat64, cone = lab6.kinds["nat64"], lab6.kinds["eim-adf"]
    caller, callee = (nat64, cone) if calling else (cone, nat64)
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], (mine, theirs)
    assert mine["path"] == theirs["path"] == "udp-direct", (mine, theirs)
    mine, theirs = (mine, theirs) if calling else (theirs, mine)  # the NAT64 side's report first
    assert mine["remote"][0] == cone.wan_ip and theirs["remote"][0] == nat64.wan_ip, (mine, theirs)
    assert mine["local"][0] == nat64.wan_ip, mine  # the NAT64's IPv4 mapping: the host has no IPv4 address


def test_ipv6_only_client_reaches_a_udp_blocked_ipv4_peer_by_a_dual_stack_relay_allocation(lab6):
    """Where no direct path exists (the IPv4-only peer cannot send UDP), the two meet on the node's dual-stack
    relay (RFC 8656 §7.1 dual allocations): the IPv6-only client sends from its IPv6 address to the IPv6 half
    of the peer's allocation (made over TCP, from IPv4). Its own allocation, made over IPv6, has the IPv4
    relayed address first, where an IPv4-only peer can reach it."""
    caller, callee = lab6.kinds["nat64"], lab6.kinds["udp-blocked"]
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], (mine, theirs)
    assert (mine["path"], theirs["path"]) == ("turn-udp", "turn-tcp"), (mine, theirs)
    assert mine["local"][0] == caller.client_ip6 and mine["remote"][0] == SERVER_IP6, mine
    assert theirs["local"][0] == SERVER_IP6 and theirs["remote"][0] == caller.client_ip6, theirs
    log = (lab6.workdir / f"twistd-{SERVER_PORT}.log").read_text(errors="replace").splitlines()
    over_ipv6 = [line for line in log if f"from [{caller.client_ip6}]:" in line and "over udp" in line]
    assert over_ipv6 and f"relayed ['{SERVER_IP}:" in over_ipv6[-1], over_ipv6


def test_dual_stack_home_and_ipv6_only_client_connect_over_ipv6(lab6):
    """A dual-stack home and an IPv6-only client behind NAT64 go direct over IPv6, host to host (RFC 8421
    ranks the IPv6 pair above the IPv4 one through the NAT64)."""
    caller, callee = lab6.kinds[FIREWALL][1], lab6.kinds["nat64"]
    mine, theirs = run_pair(caller, callee)
    assert "error" not in mine, mine
    assert mine["pong"], (mine, theirs)
    assert mine["path"] == "udp-direct", mine
    assert mine["remote"][0] == callee.client_ip6 and theirs["remote"][0] == caller.client_ip6, (mine, theirs)
