"""TCP hole punching through two real NATs of the lab (root): both sides punch at one instant."""

import json
import subprocess
import sys
import time

import pytest

from .lab import ENV, ROOT, SERVER_IP, SERVER_PORT

pytestmark = pytest.mark.natlab

# Full TTL between NAT routers on one bridge: there is no hop between them
# for a low-TTL SYN to die at (a TTL-2 SYN reaches the peer's NAT, and the
# TTL-1 one dies in our own router before it is NATed). Low TTL between
# sites with an ISP router hop each (lab ``hop=True``), where a TTL-2 SYN
# crosses our NAT and dies at our own hop, which sends no ICMP.


# One side. argv: local port, name, low TTL ("none": full). Learns its TCP mapping from the super node and
# prints it; reads "peer_ip peer_port wall_clock_start" from stdin; punches;
# sends its name, reads the peer's, prints the result as JSON.
_PEER = f"""
import json, sys, time
from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from rendezvous.peer.tcp_punch import punch_tcp, tcp_mapped_address

class Greeting(Protocol):
    def __init__(self):
        self.received = Deferred()
    def dataReceived(self, data):
        if not self.received.called:
            self.received.callback(data)

async def main(reactor):
    port = int(sys.argv[1])
    mapped = await tcp_mapped_address(reactor, port, ("{SERVER_IP}", {SERVER_PORT}))
    print(*mapped, flush=True)
    ip, peer_port, start = (await threads.deferToThread(sys.stdin.readline)).split()
    start_at = reactor.seconds() + float(start) - time.time()
    low_ttl = None if sys.argv[3] == "none" else int(sys.argv[3])
    protocol, peer, how = await punch_tcp(reactor, port, [(ip, int(peer_port))], start_at, 10,
                                          Factory.forProtocol(Greeting), low_ttl)
    seconds = reactor.seconds() - start_at
    protocol.transport.write(sys.argv[2].encode())
    heard = await protocol.received.addTimeout(5, reactor)
    protocol.transport.loseConnection()
    print(json.dumps({{"peer": list(peer), "technique": how, "heard": heard.decode(),
                      "seconds": round(seconds, 3)}}), flush=True)

task.react(lambda r: Deferred.fromCoroutine(main(r)))
"""


def start_side(site, port: int, name: str, low_ttl) -> tuple[subprocess.Popen, tuple[str, int]]:
    process = subprocess.Popen(site.exec_argv(sys.executable, "-c", _PEER, str(port), name, str(low_ttl).lower()),
                               stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    line = process.stdout.readline().split()
    if len(line) != 2:
        process.kill()
        raise AssertionError(f"{name} learned no mapping: {process.communicate(timeout=10)}")
    return process, (line[0], int(line[1]))


def punch(a_site, b_site, low_ttl) -> tuple[dict, dict]:
    """Both sides punch at one instant (ports 40100, 40200); each one's result after exchanging names."""
    a, a_mapped = start_side(a_site, 40100, "alice", low_ttl)
    b, b_mapped = start_side(b_site, 40200, "bob", low_ttl)
    try:
        assert a_mapped == (a_site.wan_ip, 40100) and b_mapped == (b_site.wan_ip, 40200)  # EIM keeps the port
        start = time.time() + 1.0
        a.stdin.write(f"{b_mapped[0]} {b_mapped[1]} {start}\n")
        a.stdin.flush()
        b.stdin.write(f"{a_mapped[0]} {a_mapped[1]} {start}\n")
        b.stdin.flush()
        out_a, err_a = a.communicate(timeout=30)
        out_b, err_b = b.communicate(timeout=30)
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()
                process.wait(5)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    result_a, result_b = json.loads(out_a.splitlines()[-1]), json.loads(out_b.splitlines()[-1])
    assert (result_a["heard"], result_b["heard"]) == ("bob", "alice")
    assert result_a["peer"] == list(b_mapped) and result_b["peer"] == list(a_mapped)
    print("techniques:", result_a["technique"], result_b["technique"], result_a["seconds"], result_b["seconds"])
    return result_a, result_b


@pytest.mark.parametrize("kinds", [("eim-apdf", "eim-adf"), ("eim-eif", "eim-apdf")], ids=["apdf-adf", "eif-apdf"])
def test_tcp_punch_through_two_nats(natlab, kinds):
    """Two clients behind endpoint-independent NATs open one TCP connection through both and exchange bytes."""
    punch(natlab(kinds[0]), natlab(kinds[1]), None)


def held_back_time_exceeded(site) -> int:
    """How many ICMP Time Exceeded the site's ISP router hop has dropped (its nftables counter)."""
    listing = subprocess.run(["ip", "netns", "exec", site.hop, "nft", "list", "chain", "ip", "natlab_hop", "output"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
    return int(listing.split("counter packets ")[1].split()[0])


def test_low_ttl_tcp_punch_through_two_nats_behind_hops(natlab):
    """With a router hop outside each NAT, the TTL-2 first SYNs die at the hops after crossing the NATs,
    and the full-TTL retransmissions meet: one TCP connection, bytes both ways."""
    a_site, b_site = natlab("eim-apdf", hop=True), natlab("eim-adf", hop=True)
    before = held_back_time_exceeded(a_site), held_back_time_exceeded(b_site)
    punch(a_site, b_site, 2)
    after = held_back_time_exceeded(a_site), held_back_time_exceeded(b_site)
    assert after[0] > before[0] and after[1] > before[1]  # each side's low-TTL SYN expired at its own hop
