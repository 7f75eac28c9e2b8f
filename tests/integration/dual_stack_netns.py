"""Dual-stack checks that need addresses of their own, run inside a network namespace with only loopback.

    unshare --net -- python -m tests.integration.dual_stack_netns rfc5780
    unshare --net -- python -m tests.integration.dual_stack_netns acl [RELAY OPTION ...] -- PEER ...

``rfc5780`` adds two IPv6 addresses to the namespace's loopback (``IPV6_PRIMARY``
and ``IPV6_ALTERNATE``, never the host's interfaces), starts ``twistd
rendezvous`` with an RFC 5780 alternate in each family, and asks it every
CHANGE-REQUEST from an IPv4 and an IPv6 client; then runs coturn's
``turnutils_stunclient -f`` against the IPv6 primary. ``acl`` starts ``twistd
relay`` with relayed addresses in both families and asks a dual allocation
for a permission and a channel to each PEER: a relay that wrongly grants one
finds no route out of the namespace. Prints one JSON object; ends the server
it started.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_address_family, encode_change_request, encode_uint32
from rendezvous.stun.constants import AddressFamily
from tests.conftest import TURN_PASSWORD, TURN_REALM, TURN_USER, free_port, start_node, stop_node
from tests.turn_helpers import UdpTurnClient, bind, code, permit

IPV6_PRIMARY, IPV6_ALTERNATE = "fd00:15::1", "fd00:15::2"
IPV4_PRIMARY, IPV4_ALTERNATE = "127.0.0.1", "127.0.0.2"
CHANGES = [(False, False), (True, False), (False, True), (True, True)]


def _address(response: Message, attr: int) -> list | None:
    found = response.address(attr)
    return list(found) if found else None


def _ask(server: tuple[str, int], change: tuple[bool, bool]) -> dict:
    """One Binding request with CHANGE-REQUEST from a fresh socket: where the answer came from and what it says."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        request = Message(Method.BINDING, Class.REQUEST)
        request.add(Attr.CHANGE_REQUEST, encode_change_request(*change))
        sock.sendto(request.encode(), server)
        data, source = sock.recvfrom(2048)
        response = Message.decode(data)
        return {"change": list(change), "from": list(source[:2]),
                "mapped": _address(response, Attr.XOR_MAPPED_ADDRESS),
                "origin": _address(response, Attr.RESPONSE_ORIGIN),
                "other": _address(response, Attr.OTHER_ADDRESS)}


def rfc5780(directory: Path) -> dict:
    for address in (IPV6_PRIMARY, IPV6_ALTERNATE):
        subprocess.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"], check=True)
    node = start_node(directory, "--ip", IPV6_PRIMARY, "--alt-ip", IPV6_ALTERNATE, ips=(IPV4_PRIMARY,))
    try:
        answers = {name: [_ask((ip, node.port), change) for change in CHANGES]
                   for name, ip in (("ipv4", IPV4_PRIMARY), ("ipv6", IPV6_PRIMARY))}
        stunclient = None
        if shutil.which("turnutils_stunclient"):
            stunclient = subprocess.run(["turnutils_stunclient", "-f", "-p", str(node.port), IPV6_PRIMARY],
                                        capture_output=True, text=True, timeout=30).stdout
        return {"port": node.port, "alt_port": node.alt_port, "answers": answers, "stunclient": stunclient}
    finally:
        stop_node(node)


def acl(directory: Path, relay_args: list[str], peers: list[str]) -> dict:
    node = start_node(directory, "--user", f"{TURN_USER}:{TURN_PASSWORD}", "--realm", TURN_REALM,
                      "--relay-ip", "127.0.0.1", "--relay-ip", "::1", *relay_args, alternate=False,
                      command="relay")
    client = UdpTurnClient((node.ip, node.port), TURN_USER, TURN_PASSWORD, TURN_REALM)
    try:
        allocated = client.allocate((Attr.ADDITIONAL_ADDRESS_FAMILY, encode_address_family(AddressFamily.IPV6)))
        relayed = [list(a) for a in allocated.addresses(Attr.XOR_RELAYED_ADDRESS)]
        verdicts = {}
        for number, peer in enumerate(peers):
            answers = [permit(client, (peer, 5000)), bind(client, 0x4000 + number, (peer, 5000))]
            verdicts[peer] = [200 if a.cls == Class.SUCCESS else code(a) for a in answers]
        client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0)))
        return {"relayed": relayed, "verdicts": verdicts}
    finally:
        client.close()
        stop_node(node)


def main(argv: list[str]) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        if argv[0] == "rfc5780":
            result = rfc5780(Path(tmp))
        else:
            rest = argv[1:]
            split = rest.index("--") if "--" in rest else len(rest)
            result = acl(Path(tmp), rest[:split], rest[split + 1:])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
