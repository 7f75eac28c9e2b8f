"""Which interface addresses become IPv6 host candidates (rendezvous.peer.interfaces)."""

from rendezvous.peer import interfaces
from rendezvous.peer.interfaces import ipv4_interface_addresses, ipv6_host_addresses, parse_if_inet6

# /proc/net/if_inet6 as a dual-stack client shows it: link-local, loopback,
# a stable global, a temporary global (flag 0x01), a ULA, a deprecated
# global (0x20), a tentative one (0x40) and an IPv4-mapped oddity.
IF_INET6 = """\
fe80000000000000a8c1abfffe123456 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000300000000000000000002 02 40 00 80     eth0
20010db80003000011223344556677aa 02 40 00 01     eth0
fd000000000000010000000000000002 02 40 00 80     eth0
20010db80003000000000000000000dd 02 40 00 a0     eth0
20010db80003000000000000000000ee 02 40 00 c0     eth0
00000000000000000000ffffc0a80102 02 60 00 80     eth0
garbage line
"""


def test_global_addresses_only_without_temporary():
    """Global-scope (and ULA) addresses count; link-local, loopback, deprecated, tentative and temporary ones not."""
    assert parse_if_inet6(IF_INET6) == [("2001:db8:3::2", "eth0"), ("fd00:0:0:1::2", "eth0")]


def test_temporary_addresses_when_asked():
    """With temporary=True the RFC 8981 temporary address is offered too, in the kernel's order."""
    addresses = [address for address, _ in parse_if_inet6(IF_INET6, temporary=True)]
    assert addresses == ["2001:db8:3::2", "2001:db8:3:0:1122:3344:5566:77aa", "fd00:0:0:1::2"]


def test_ipv4_interface_addresses_include_loopback():
    """Each interface's primary IPv4 address is read; loopback has 127.0.0.1."""
    assert ipv4_interface_addresses().get("lo") == "127.0.0.1"


def test_host_addresses_read_the_kernel_list(tmp_path, monkeypatch):
    """ipv6_host_addresses reads /proc/net/if_inet6 and passes the temporary choice on."""
    listing = tmp_path / "if_inet6"
    listing.write_text(IF_INET6)
    monkeypatch.setattr(interfaces, "IF_INET6", listing)
    assert ipv6_host_addresses() == ["2001:db8:3::2", "fd00:0:0:1::2"]
    assert "2001:db8:3:0:1122:3344:5566:77aa" in ipv6_host_addresses(temporary=True)
