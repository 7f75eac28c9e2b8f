"""RFC 5780 with IPv6 primary and alternate addresses, and the peer ACL's IPv6 ranges against a real relay.

Both run in a network namespace with only loopback up (tests/integration/dual_stack_netns.py): the IPv6
addresses are added to that namespace's loopback, and a relay that wrongly grants a peer finds no route.
"""

import ipaddress
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.integration.dual_stack_netns import (
    CHANGES,
    IPV4_ALTERNATE,
    IPV4_PRIMARY,
    IPV6_ALTERNATE,
    IPV6_PRIMARY,
)
from tests.integration.probe_netns import netns_available

pytestmark = pytest.mark.integration

WHY_NOT = netns_available()
needs_netns = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
NAT64_PREFIX = "2001:db8:64::/96"


def in_netns(*args: str) -> dict:
    done = subprocess.run(["unshare", "--net", "--", sys.executable, "-m", "tests.integration.dual_stack_netns",
                           *args], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def rfc5780() -> dict:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    return in_netns("rfc5780")


@needs_netns
@pytest.mark.parametrize("family, primary, alternate", [("ipv4", IPV4_PRIMARY, IPV4_ALTERNATE),
                                                         ("ipv6", IPV6_PRIMARY, IPV6_ALTERNATE)])
def test_change_request_in_each_family(rfc5780, family, primary, alternate):
    """Every CHANGE-REQUEST is answered from the right address and port of the client's own family, with
    RESPONSE-ORIGIN saying so, OTHER-ADDRESS the family's alternate, and the mapped address of that family."""
    port, alt_port = rfc5780["port"], rfc5780["alt_port"]
    for answer, (change_ip, change_port) in zip(rfc5780["answers"][family], CHANGES):
        expected = [alternate if change_ip else primary, alt_port if change_port else port]
        assert answer["from"] == expected and answer["origin"] == expected, answer
        assert answer["other"] == [alternate, alt_port], answer
        assert answer["mapped"][0] == primary, answer


@needs_netns
def test_coturn_stunclient_runs_rfc5780_over_ipv6(rfc5780):
    """turnutils_stunclient -f against the IPv6 primary gets RFC 5780 answers: IPv6 origin, other address
    and reflexive address, the second answer coming from the alternate."""
    output = rfc5780["stunclient"]
    if output is None:
        pytest.skip("coturn's turnutils_stunclient is not installed (Debian package coturn)")
    port, alt_port = rfc5780["port"], rfc5780["alt_port"]
    assert f"IPv6. Response origin: : {IPV6_PRIMARY}:{port}" in output
    assert f"IPv6. Other addr: : {IPV6_ALTERNATE}:{alt_port}" in output
    assert f"IPv6. Response origin: : {IPV6_ALTERNATE}:{alt_port}" in output
    assert re.search(rf"IPv6\. UDP reflexive addr: {re.escape(IPV6_PRIMARY)}:\d+", output)
    assert "IPv4" not in output


DENIED = [
    "fc00::1", "fd00:ec2::254", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",  # ULA fc00::/7
    "fe80::1", "febf::1",  # link-local fe80::/10
    "2001:db8::1", "3fff::1",  # documentation
    "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1",  # NAT64 well-known prefix, internal IPv4
    "64:ff9b:1::808:808", "64:ff9b:1:808:8:800::",  # local-use NAT64 64:ff9b:1::/48
    "2001:db8:64::a00:1", "2001:db8:64::7f00:1",  # the configured NAT64 prefix, internal IPv4
    "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::10.0.0.1", "::127.0.0.1",  # mapped, compatible
]
ALLOWED = ["64:ff9b::808:808", "2001:db8:64::808:808", "2606:4700::1111", "8.8.8.8"]


@pytest.fixture(scope="module")
def acl() -> dict:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    return in_netns("acl", "--nat64-prefix", NAT64_PREFIX, "--", *DENIED, *ALLOWED)


@needs_netns
@pytest.mark.parametrize("peer", DENIED)
def test_ipv6_ranges_are_denied_by_a_real_relay(acl, peer):
    """CreatePermission and ChannelBind to each IPv6 range the ACL denies get 403 from a dual allocation."""
    assert [ipaddress.ip_address(a[0]).version for a in acl["relayed"]] == [4, 6]
    assert acl["verdicts"][peer] == [403, 403]


@needs_netns
@pytest.mark.parametrize("peer", ALLOWED)
def test_public_peers_and_nat64_of_public_ipv4_are_granted(acl, peer):
    """A public IPv6 or IPv4 peer, and a public IPv4 address under the well-known or configured NAT64 prefix,
    get their permission and channel."""
    assert acl["verdicts"][peer] == [200, 200]
