"""The lab's IPv6 and transition pieces as text: the home router's IPv6
stateful firewall (nftables), tayga's NAT64 configuration, and unbound's,
as the lab's DNS root and as DNS64. ``lab.Lab`` writes and runs them.

Addresses (documentation prefix 2001:db8::/32 only)::

    2001:db8::/64          the public segment: super node 2001:db8::1 and ::2,
                           DNS root ::3, router N ::(10+N), AFTR N ::af:N
    2001:db8:N::/64        site N's LAN (router ::1, client ::2), routed to
                           router N by every host on the public segment
    fd00:N::/64            site N's LAN behind NPTv6 (it leaves as 2001:db8:N::/64)
    2001:db8:64:N::/96     site N's NAT64 prefix (network-specific, RFC 6052
                           §2.2: tayga refuses 64:ff9b::/96 for the lab's
                           non-global 198.18.0.0/15)
    192.0.0.0/29           the DS-Lite softwire: AFTR 192.0.0.1, B4 192.0.0.2
                           (RFC 6333 §5.7); a 464XLAT client's CLAT: the host
                           192.0.0.4, tayga 192.0.0.5 (RFC 7335)
    2001:db8:N::c1a7       a 464XLAT client's CLAT address (RFC 6877 §6.3)
"""

from __future__ import annotations

PUBLIC6_PREFIX = 64
SERVER_IP6 = "2001:db8::1"
SERVER_ALT_IP6 = "2001:db8::2"
DNS_ROOT_IP = "198.18.0.3"
DNS_ROOT_IP6 = "2001:db8::3"
AFTR_IP = "192.0.0.1"
B4_IP = "192.0.0.2"
SOFTWIRE_PREFIX = 29
# The IPv4 MTU of the softwire: the IPv6 header (40 bytes) below the 1500-byte links.
SOFTWIRE_MTU = 1460
CLAT_HOST_IP = "192.0.0.4"
CLAT_TAYGA_IP = "192.0.0.5"
TAYGA_POOL = "192.168.255.0/24"
TAYGA_IP = "192.168.255.1"
TAYGA = "/usr/sbin/tayga"
UNBOUND = "/usr/sbin/unbound"
# What the DNS root answers: RFC 7050 §2.2's well-known name, and the super node by name.
NODE_NAME = "node.lab"


def wan6(n: int) -> str:
    return f"2001:db8::{10 + n}"


def aftr6(n: int) -> str:
    return f"2001:db8::af:{n}"


def lan6_prefix(n: int) -> str:
    return f"2001:db8:{n}::/64"


def lan6(n: int, host: int) -> str:
    return f"2001:db8:{n}::{host}"


def ula6(n: int, host: int) -> str:
    return f"fd00:{n}::{host}"


def nat64_prefix(n: int) -> str:
    return f"2001:db8:64:{n}::/96"


def clat6(n: int) -> str:
    return f"2001:db8:{n}::c1a7"


# RFC 6092 §3.2 in nftables: replies (established, related) come in, nothing
# unsolicited does; ICMPv6 errors and echo requests pass (RFC 4890 §4.3.1);
# no NAT66. Conntrack keys a UDP flow on both addresses and ports, so the
# filtering is address-and-port dependent. Neighbour discovery to the router
# itself passes its input chain.
FIREWALL6_RULESET = """table ip6 natlab6 {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request } accept
		iifname "lan" oifname "wan" accept
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" meta l4proto != ipv6-icmp ct state new drop
	}
}
"""

def nptv6_ruleset(n: int) -> str:
    """Prefix translation of site n's ULA LAN to its global prefix (RFC 6296's effect:
    the interface identifier kept; done by conntrack's prefix NAT, so replies map back)."""
    return (
        "table ip6 natlab6_npt {\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f"\t\toifname \"wan\" ip6 saddr fd00:{n}::/64 snat ip6 prefix to {lan6_prefix(n)}\n"
        "\t}\n"
        "}\n"
    )


# A NAT64 router: tayga hands IPv4 from its pool out of device nat64; NAT44
# then masquerades the pool to the router's WAN address (EIM, APDF).
NAT64_RULESET = f"""table ip natlab {{
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" ip saddr {TAYGA_POOL} masquerade
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "nat64" oifname "wan" accept
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state new drop
	}}
}}
"""


def tayga_config(n: int, data_dir: str) -> str:
    """tayga.conf for site n's NAT64 (device nat64, its network-specific prefix)."""
    return (
        "tun-device nat64\n"
        f"ipv4-addr {TAYGA_IP}\n"
        f"prefix {nat64_prefix(n)}\n"
        f"dynamic-pool {TAYGA_POOL}\n"
        f"data-dir {data_dir}\n"
    )


def clat_config(n: int) -> str:
    """tayga.conf for site n's CLAT (device clat): the host's IPv4 address maps to its
    CLAT IPv6 address, other IPv4 addresses into the site's NAT64 prefix."""
    return (
        "tun-device clat\n"
        f"ipv4-addr {CLAT_TAYGA_IP}\n"
        f"prefix {nat64_prefix(n)}\n"
        f"map {CLAT_HOST_IP} {clat6(n)}\n"
    )


def _unbound_common(directory: str, interfaces: list[str]) -> str:
    return (
        "server:\n"
        f"  directory: \"{directory}\"\n"
        "  chroot: \"\"\n"
        "  username: \"\"\n"
        "  pidfile: \"\"\n"
        "  use-syslog: no\n"
        "  logfile: \"\"\n"
        "  verbosity: 1\n"
        "  do-daemonize: no\n"
        "  port: 53\n"
        + "".join(f"  interface: {ip}\n" for ip in interfaces)
        + "  access-control: 0.0.0.0/0 allow\n"
        "  access-control: ::/0 allow\n"
        "  do-ip4: yes\n"
        "  do-ip6: yes\n"
    )


def dns_root_config(directory: str) -> str:
    """unbound.conf of the lab's only DNS server on the "internet": ipv4only.arpa
    with its two A records (RFC 7050 §2.2, no AAAA) and the super node's name."""
    return (
        _unbound_common(directory, [DNS_ROOT_IP, DNS_ROOT_IP6])
        + "  module-config: \"iterator\"\n"
        "  local-zone: \"ipv4only.arpa.\" static\n"
        "  local-data: \"ipv4only.arpa. 3600 IN A 192.0.0.170\"\n"
        "  local-data: \"ipv4only.arpa. 3600 IN A 192.0.0.171\"\n"
        "  local-zone: \"lab.\" static\n"
        f"  local-data: \"{NODE_NAME}. 3600 IN A 198.18.0.1\"\n"
    )


def dns64_config(n: int, directory: str) -> str:
    """unbound.conf of site n's DNS64 (RFC 6147) on its LAN: AAAA synthesized
    from A records with the site's NAT64 prefix, everything asked of the root."""
    return (
        _unbound_common(directory, [lan6(n, 1)])
        + "  module-config: \"dns64 iterator\"\n"
        f"  dns64-prefix: {nat64_prefix(n)}\n"
        "  do-not-query-localhost: no\n"
        "forward-zone:\n"
        "  name: \".\"\n"
        f"  forward-addr: {DNS_ROOT_IP6}\n"
    )
