"""Which paths connect() may still wait for, from the two sides' candidates (signaling form)."""

from rendezvous.connect import _direct_udp_hopeless, _udp_blocked


def udp(kind, ip, port=40000):
    return {"type": kind, "ip": ip, "port": port, "protocol": "udp"}


def tcp(kind, ip, port=41000):
    return {"type": kind, "ip": ip, "port": port, "protocol": "tcp"}


BLOCKED = [udp("host", "192.168.1.2"), tcp("host", "192.168.1.2"), tcp("srflx", "198.18.0.11"),
           udp("relay", "198.18.0.1", 50000)]
NATTED = [udp("host", "192.168.2.2"), udp("srflx", "198.18.0.12"), tcp("host", "192.168.2.2"),
          tcp("srflx", "198.18.0.12")]
PUBLIC = [udp("host", "198.18.0.13"), tcp("host", "198.18.0.13")]  # no NAT: nothing reflexive differs
LOOPBACK = [udp("host", "127.0.0.1"), tcp("host", "127.0.0.1")]


def test_blocked_means_public_over_tcp_but_not_over_udp():
    """A TCP srflx without any UDP srflx, UPnP or predicted candidate is a NAT that lets no UDP out."""
    assert _udp_blocked(BLOCKED)
    assert not _udp_blocked(NATTED) and not _udp_blocked(PUBLIC) and not _udp_blocked(LOOPBACK)
    assert not _udp_blocked([udp("host", "192.168.1.2"), udp("upnp", "198.18.0.11"), tcp("srflx", "198.18.0.11")])
    assert not _udp_blocked([udp("host", "192.168.1.2")])  # no TCP answer either: nothing is known


def test_hopeless_when_a_side_is_blocked_and_they_are_not_behind_one_address():
    """Direct UDP is given up only when one side is blocked and the two do not share a public address."""
    assert _direct_udp_hopeless(BLOCKED, NATTED) and _direct_udp_hopeless(NATTED, BLOCKED)
    assert _direct_udp_hopeless(BLOCKED, PUBLIC) and _direct_udp_hopeless(BLOCKED, BLOCKED[:2] + [
        tcp("srflx", "198.18.0.14")])
    same_nat = [udp("host", "192.168.1.3"), udp("srflx", "198.18.0.11"), tcp("srflx", "198.18.0.11")]
    assert not _direct_udp_hopeless(BLOCKED, same_nat)  # one LAN: host candidates may meet
    assert not _direct_udp_hopeless(NATTED, PUBLIC) and not _direct_udp_hopeless(LOOPBACK, LOOPBACK)
    assert not _direct_udp_hopeless([], [])
