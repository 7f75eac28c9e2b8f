"""This host's interface addresses, for host candidates and the NAT check.

IPv6 addresses come from Linux's ``/proc/net/if_inet6`` (address, interface
index, prefix length, scope, flags, name), which is where the kernel says
which addresses are temporary (RFC 8981 privacy addresses), deprecated or
still tentative; ``ipv6_host_addresses`` keeps the global-scope ones (ULA
included, RFC 4193 §3: their scope is global; link-local and loopback not)
that are usable, and temporary ones only when asked. Elsewhere it falls
back to the addresses the host name resolves to, which cannot tell
temporary addresses apart. IPv4 addresses are each interface's primary
address (``SIOCGIFADDR``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

IF_INET6 = Path("/proc/net/if_inet6")
SCOPE_GLOBAL = 0x00
# include/uapi/linux/if_addr.h
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
UNUSABLE = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE
SIOCGIFADDR = 0x8915


def parse_if_inet6(text: str, temporary: bool = False) -> list[tuple[str, str]]:
    """(address, interface) of the global-scope, usable addresses in /proc/net/if_inet6 text;
    temporary addresses only when asked."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6:
            continue
        hex_address, _, _, scope, flags, name = fields
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(hex_address))
            scope_value, flag_value = int(scope, 16), int(flags, 16)
        except ValueError:
            continue
        if scope_value != SCOPE_GLOBAL or flag_value & UNUSABLE or address.is_loopback:
            continue
        if flag_value & IFA_F_TEMPORARY and not temporary:
            continue
        if address.ipv4_mapped is None:
            found.append((str(address), name))
    return found


def ipv6_host_addresses(temporary: bool = False) -> list[str]:
    """This host's global-scope IPv6 addresses (not link-local); temporary ones only when asked."""
    try:
        return [address for address, _ in parse_if_inet6(IF_INET6.read_text(), temporary)]
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET6)
    except OSError:
        return []
    found = []
    for info in infos:
        address = ipaddress.IPv6Address(info[4][0].partition("%")[0])
        if not (address.is_link_local or address.is_loopback) and str(address) not in found:
            found.append(str(address))
    return found


def ipv4_interface_addresses() -> dict[str, str]:
    """Each interface's primary IPv4 address, by interface name."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
            found[name] = socket.inet_ntoa(answer[20:24])
    return found
