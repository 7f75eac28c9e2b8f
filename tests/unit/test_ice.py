"""The ICE agent (RFC 8445) on bytes and a plain clock: two agents wired through fake NATs."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rendezvous.peer.ice import (Agent, Candidate, PairState, local_preference, pair_priority, priority,
                                  random_credentials)
from rendezvous.stun import Attr, Class, Error, Message, Method
from rendezvous.stun.attributes import decode_error_code, encode_uint32, encode_uint64
from rendezvous.stun.integrity import short_term_key


def agents(**options):
    a = Agent(True, *random_credentials(), tie_breaker=2, **options)
    b = Agent(False, *random_credentials(), tie_breaker=1, **options)
    return a, b


def run(a, b, wire, now=0.0, until=30.0):
    """Move datagrams between a and b through ``wire(sender, send) -> (base, source) | None``."""
    queue = []
    while now < until and not (a.selected and b.selected):
        for agent in (a, b):
            queue += [(agent, s) for s in agent.expire(now)]
        while queue:
            sender, send = queue.pop(0)
            other = b if sender is a else a
            delivered = wire(sender, send)
            if delivered is not None:
                base, source = delivered
                queue += [(other, s) for s in other.receive(send.data, base, source, now)]
        deadlines = [d for d in (a.deadline, b.deadline) if d is not None]
        if not deadlines:
            break
        now = max(now + 0.001, min(deadlines))
    return now


def test_priorities_follow_type_and_local_preference():
    """Priorities order host over srflx over relay (§5.1.2), and pair priority is symmetric (§6.1.2.3)."""
    assert priority("host", 65535) > priority("upnp", 65535) > priority("srflx", 65535) > priority("relay", 65535)
    assert priority("host", 65535) == (126 << 24) + (65535 << 8) + 255
    assert pair_priority(10, 20) == (10 << 32) + 40
    assert pair_priority(20, 10) == (10 << 32) + 41


def test_two_open_hosts_select_the_host_pair():
    """Two agents with reachable host candidates nominate and agree on one pair."""
    a, b = agents()
    a.add_base("main", "host", ("198.18.0.11", 5000), 65535)
    b.add_base("main", "host", ("198.18.0.12", 6000), 65535)
    for agent, address in ((a, ("198.18.0.11", 5000)), (b, ("198.18.0.12", 6000))):
        agent.advertise(agent.candidate("host", address, "main"))
    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    addresses = {id(a): ("198.18.0.11", 5000), id(b): ("198.18.0.12", 6000)}
    run(a, b, lambda sender, send: ("main", addresses[id(sender)]))
    assert a.selected and b.selected
    assert a.selected.remote.address == ("198.18.0.12", 6000)
    assert b.selected.remote.address == ("198.18.0.11", 5000)
    assert a.selected.mapped == ("198.18.0.11", 5000)


def connected_hosts(**options):
    """Two agents on open host addresses, checked until both selected; and the time it took."""
    a, b = agents(**options)
    addresses = {id(a): ("198.18.0.11", 5000), id(b): ("198.18.0.12", 6000)}
    for agent in (a, b):
        agent.add_base("main", "host", addresses[id(agent)], 65535)
        agent.advertise(agent.candidate("host", addresses[id(agent)], "main"))
    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    now = run(a, b, lambda sender, send: ("main", addresses[id(sender)]))
    assert a.selected and b.selected
    return a, b, addresses, now


def test_consent_is_renewed_by_answers_and_expires_without_them():
    """RFC 7675: each answered consent check renews consent; 30 s of silence expires it."""
    a, b, addresses, now = connected_hosts()
    for agent in (a, b):
        assert agent.consent_at is not None and not agent.consent_expired(now + 29)
    for step in range(1, 13):  # one minute of checks every 5 s, each answered
        t = now + 5 * step
        check = a.consent_check(t)
        assert check.destination == addresses[id(b)] and check.base == "main"
        [answer] = b.receive(check.data, "main", addresses[id(a)], t)
        assert a.receive(answer.data, "main", addresses[id(b)], t + 0.01) == []
    assert a.consent_at == now + 60.01 and not a.consent_expired(now + 89)
    assert len(a._consent) == 0
    for step in range(13, 30):  # the peer is gone: checks go out, nothing comes back
        a.consent_check(now + 5 * step)
    assert a.consent_expired(now + 90.01)
    assert len(a._consent) <= 7  # checks older than the timeout are forgotten


def test_consent_needs_the_peer_password_and_its_address():
    """An answer signed with another password, or from another address, does not renew consent."""
    a, b, addresses, now = connected_hosts(consent_timeout_seconds=10)
    t = now + 5
    check = a.consent_check(t)
    forged = success_for(check.data, addresses[id(a)], short_term_key("not-the-password"))
    assert a.receive(forged, "main", addresses[id(b)], t) == []
    assert a.counters["unauthenticated"] == 1
    [answer] = b.receive(check.data, "main", addresses[id(a)], t)
    assert a.receive(answer.data, "main", ("198.18.0.99", 6000), t) == []  # not the selected pair's peer
    assert a.consent_expired(now + 10)


def success_for(request: bytes, mapped, key: bytes) -> bytes:
    response = Message(Method.BINDING, Class.SUCCESS, Message.decode(request).transaction_id)
    response.add_address(Attr.XOR_MAPPED_ADDRESS, mapped)
    return response.encode(integrity_key=key, fingerprint=True)


def test_no_consent_check_before_selection():
    """Consent freshness starts with the selected pair."""
    a, _ = agents()
    assert a.consent_check(0.0) is None and not a.consent_expired(100.0)


def test_port_restricted_nats_meet_through_srflx_and_prflx():
    """Behind two address-and-port-restricted NATs, checks open both and a srflx pair wins."""
    a, b = agents()
    a.add_base("main", "host", ("192.168.1.2", 5000), 65535)
    b.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    a.advertise(a.candidate("srflx", ("198.18.0.11", 40000), "main"))
    b.advertise(b.candidate("srflx", ("198.18.0.12", 50000), "main"))
    public = {id(a): ("198.18.0.11", 40000), id(b): ("198.18.0.12", 50000)}
    opened = set()  # (nat owner, remote address) the NAT has seen go out

    def wire(sender, send):
        other = b if sender is a else a
        opened.add((id(sender), send.destination))
        if send.destination != public[id(other)]:
            return None
        if (id(other), public[id(sender)]) not in opened:
            return None  # filtered by the receiver's NAT
        return "main", public[id(sender)]

    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    run(a, b, wire)
    assert a.selected and b.selected
    assert a.selected.remote.address == ("198.18.0.12", 50000)
    assert a.selected.remote.kind == "srflx"


def test_relayed_pair_is_nominated_when_direct_fails():
    """When only the relay carries packets, the relayed pair is selected after direct pairs fail."""
    a, b = agents(relay_wait_seconds=60)
    a.add_base("main", "host", ("192.168.1.2", 5000), 65535)
    a.add_base("relay", "relay", ("198.18.0.1", 49152), 0)
    a.advertise(a.candidate("host", ("192.168.1.2", 5000), "main"))
    a.advertise(a.candidate("relay", ("198.18.0.1", 49152), "relay"))
    b.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    b.advertise(b.candidate("srflx", ("198.18.0.12", 50000), "main"))

    def wire(sender, send):
        if sender is a:
            if send.base == "relay" and send.destination == ("198.18.0.12", 50000):
                return "main", ("198.18.0.1", 49152)
            return None
        if send.destination == ("198.18.0.1", 49152):
            return "relay", ("198.18.0.12", 50000)
        return None

    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    now = run(a, b, wire)
    assert a.selected.relayed and b.selected.relayed
    assert now < 30  # the relayed pair did not wait out relay_wait_seconds


def test_with_no_direct_path_the_better_relayed_pair_is_nominated():
    """With direct UDP hopeless (relay_wait_seconds 0), the relay-to-relay pair checked first is not nominated
    while the pair from this host to the peer's relayed address (one relay hop) is still being checked."""
    a, b = agents(relay_first=True, relay_wait_seconds=0.0)
    here, mine, theirs = ("198.18.0.13", 5000), ("198.18.0.1", 49152), ("198.18.0.1", 49153)
    a.add_base("main", "host", here, 65535)
    a.add_base("relay", "relay", mine, 0)
    a.advertise(a.candidate("host", here, "main"))
    a.advertise(a.candidate("relay", mine, "relay"))
    b.add_base("relay", "relay", theirs, 0)  # a peer behind a UDP-blocking NAT: its relay only
    b.advertise(b.candidate("relay", theirs, "relay"))
    own = {id(a): {"main": here, "relay": mine}, id(b): {"relay": theirs}}

    def wire(sender, send):
        source = own[id(sender)][send.base]
        if sender is a:
            return ("relay", source) if send.destination == theirs else None
        return ("relay" if send.destination == mine else "main", source)

    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    now = run(a, b, wire)
    assert (a.selected.local.base, a.selected.remote.address) == ("main", theirs)
    assert (b.selected.local.base, b.selected.remote.address) == ("relay", here)
    assert now < 1


def test_a_nomination_that_gets_no_answer_moves_on_to_the_next_valid_pair():
    """§7.2.5.4: when the nominating check on a succeeded pair times out, that pair fails and the
    controlling agent nominates the next valid one (it used to wait for that answer forever)."""
    a, b = agents(relay_wait_seconds=60)
    a.add_base("main", "host", ("198.18.0.11", 5000), 65535)
    a.advertise(a.candidate("host", ("198.18.0.11", 5000), "main"))
    first, second = ("198.18.0.12", 6000), ("198.18.0.13", 6001)
    for index, address in enumerate((first, second)):
        b.add_base(f"b{index}", "host", address, 65535 - index)
        b.advertise(b.candidate("host", address, f"b{index}"))
    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    bases = {first: "b0", second: "b1"}

    def wire(sender, send):
        if sender is b:
            return "main", dict(map(reversed, bases.items()))[send.base]
        if send.destination == first and Attr.USE_CANDIDATE in Message.decode(send.data):
            return None  # the path to the first pair dies just as it is nominated
        return bases[send.destination], ("198.18.0.11", 5000)

    run(a, b, wire, until=60)
    assert a.selected is not None and a.selected.remote.address == second
    assert a.pairs[("main", first)].state is PairState.FAILED
    assert b.selected is not None and b.selected.local.address == second


def test_nothing_reachable_fails():
    """With every packet lost, all pairs fail and the agent says so."""
    a, b = agents()
    a.add_base("main", "host", ("192.168.1.2", 5000), 65535)
    b.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    b.advertise(b.candidate("srflx", ("198.18.0.12", 50000), "main"))
    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    run(a, b, lambda sender, send: None, until=60)
    assert a.failed and a.selected is None


def check(agent, ufrag, pwd, **attrs):
    request = Message(Method.BINDING, Class.REQUEST)
    if ufrag is not None:
        request.add(Attr.USERNAME, ufrag.encode())
    request.add(Attr.PRIORITY, encode_uint32(priority("prflx", 1)))
    for attr, value in attrs.items():
        request.add(Attr[attr], value)
    return request.encode(integrity_key=short_term_key(pwd), fingerprint=True)


def answer(sends):
    assert len(sends) >= 1
    return Message.decode(sends[0].data)


def test_checks_are_authenticated():
    """A check without USERNAME gets 400, a wrong ufrag or password 401, a good one XOR-MAPPED-ADDRESS."""
    b = Agent(False, "bbbb", "b" * 22)
    b.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    b.set_remote("aaaa", "a" * 22, [], 0.0)
    source = ("198.18.0.11", 40000)
    bad = answer(b.receive(check(b, None, "b" * 22), "main", source, 0.0))
    assert decode_error_code(bad.get(Attr.ERROR_CODE))[0] == Error.BAD_REQUEST
    for ufrag, pwd in (("xxxx:aaaa", "b" * 22), ("bbbb:aaaa", "c" * 22), ("bbbb:zzzz", "b" * 22)):
        bad = answer(b.receive(check(b, ufrag, pwd), "main", source, 0.0))
        assert decode_error_code(bad.get(Attr.ERROR_CODE))[0] == Error.UNAUTHENTICATED
    good = answer(b.receive(check(b, "bbbb:aaaa", "b" * 22), "main", source, 0.0))
    assert good.cls is Class.SUCCESS
    assert good.address(Attr.XOR_MAPPED_ADDRESS) == source
    assert good.check_integrity(short_term_key("b" * 22))
    assert [c.kind for c in b.remote_candidates] == ["prflx"]
    assert any(p.state is PairState.WAITING for p in b.pairs.values())


def test_role_conflict_by_tie_breaker():
    """Two controlling agents: the larger tie-breaker answers 487, the smaller becomes controlled (§7.3.1.1)."""
    big = Agent(True, "bbbb", "b" * 22, tie_breaker=10)
    big.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    big.set_remote("aaaa", "a" * 22, [], 0.0)
    reply = answer(big.receive(check(big, "bbbb:aaaa", "b" * 22, ICE_CONTROLLING=encode_uint64(5)),
                               "main", ("198.18.0.11", 1), 0.0))
    assert decode_error_code(reply.get(Attr.ERROR_CODE))[0] == Error.ROLE_CONFLICT
    assert big.controlling
    small = Agent(True, "bbbb", "b" * 22, tie_breaker=1)
    small.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    small.set_remote("aaaa", "a" * 22, [], 0.0)
    reply = answer(small.receive(check(small, "bbbb:aaaa", "b" * 22, ICE_CONTROLLING=encode_uint64(5)),
                                 "main", ("198.18.0.11", 1), 0.0))
    assert reply.cls is Class.SUCCESS and not small.controlling


def test_remote_candidate_priority_follows_list_position():
    """Both sides rank a signaled candidate the same way: by type and position."""
    first = Candidate.from_wire({"type": "srflx", "ip": "198.18.0.12", "port": 1, "protocol": "udp"}, 0)
    second = Candidate.from_wire({"type": "srflx", "ip": "198.18.0.12", "port": 2, "protocol": "udp"}, 1)
    assert first.priority == priority("srflx", 65535) > second.priority


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(0, 19), st.binary(min_size=1, max_size=4))
def test_inbound_bytes_never_raise(data, where, patch):
    """Any datagram, including mutated valid checks and responses, is answered or dropped, never raised."""
    b = Agent(False, "bbbb", "b" * 22)
    b.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    b.set_remote("aaaa", "a" * 22, [{"type": "srflx", "ip": "198.18.0.11", "port": 4, "protocol": "udp"}], 0.0)
    sends = b.expire(0.0)
    valid = check(b, "bbbb:aaaa", "b" * 22)
    for blob in (data, valid[:where] + patch + valid[where + len(patch):], data + valid):
        b.receive(blob, "main", ("198.18.0.11", 4), 0.0)
        b.receive(blob, "unknown", ("198.18.0.11", 4), 0.0)
    if sends:
        tid = sends[0].data[8:20]
        forged = bytearray(sends[0].data)
        forged[0:2] = b"\x01\x01"
        forged[8:20] = tid
        b.receive(bytes(forged[:where + 20]) + data, "main", ("198.18.0.11", 4), 0.0)


def test_trickled_candidates_join_running_checks():
    """RFC 8838 §11: a relay base and a remote candidate that come after the checks began are paired and
    checked, and a peer-reflexive remote candidate takes its signaled type (so the pair counts as relayed)."""
    a, b = agents(relay_wait_seconds=60)
    a.add_base("main", "host", ("192.168.1.2", 5000), 65535)
    a.advertise(a.candidate("host", ("192.168.1.2", 5000), "main"))
    b.add_base("main", "host", ("192.168.2.2", 6000), 65535)
    b.advertise(b.candidate("host", ("192.168.2.2", 6000), "main"))
    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    a.remote_complete = b.remote_complete = False
    run(a, b, lambda sender, send: None, until=5)
    assert not a.failed and not a.valid()  # the host pairs failed, but more candidates may come
    b.add_base("relay", "relay", ("198.18.0.1", 49152), 0)  # b's allocation came late
    relay = b.candidate("relay", ("198.18.0.1", 49152), "relay")
    b.advertise(relay)

    def wire(sender, send):
        if sender is b and send.base == "relay":  # through the relay, a sees the relayed address
            return "main", ("198.18.0.1", 49152)
        if sender is a and send.destination == ("198.18.0.1", 49152):
            return "relay", ("192.168.1.2", 5000)
        return None

    now = run(a, b, wire, now=5.0, until=5.5)
    assert any(p.remote.kind == "prflx" for p in a.pairs.values())  # b's check came before its candidate
    a.add_remote([relay.to_wire()])
    a.remote_complete = b.remote_complete = True
    run(a, b, wire, now=now, until=30)
    assert a.selected is not None and a.selected.relayed and a.selected.remote.kind == "relay"
    assert b.selected is not None and b.selected.relayed


def test_no_failure_before_end_of_candidates():
    """RFC 8838 §8.2: every pair failed is not failure while the peer's end-of-candidates is due."""
    a, b = agents()
    a.add_base("main", "host", ("192.168.1.2", 5000), 65535)
    a.set_remote(b.local_ufrag, b.local_pwd, [{"type": "host", "ip": "192.168.2.2", "port": 6000}], 0.0)
    a.remote_complete = False
    run(a, b, lambda sender, send: None, until=60)
    assert not a.failed
    a.remote_complete = True
    assert a.failed


def test_relay_first_checks_a_relayed_pair_before_the_direct_ones():
    """With relay_first the first check goes to the best relayed pair (a session starts on the relay),
    then the direct pairs by priority; without it the relayed pair waits its turn."""
    for relay_first in (True, False):
        a, b = agents(relay_first=relay_first)
        a.add_base("main", "host", ("192.168.1.2", 5000), 65535)
        a.add_base("relay", "relay", ("198.18.0.1", 49152), 0)
        remote = [{"type": "host", "ip": "192.168.2.2", "port": 6000}, {"type": "srflx", "ip": "198.18.0.12", "port": 6000},
                  {"type": "relay", "ip": "198.18.0.1", "port": 49153}]
        a.set_remote(b.local_ufrag, b.local_pwd, remote, 0.0)
        sends = [s for t in (0.0, 0.02, 0.04) for s in a.expire(t)]
        relayed = [a.pairs[(s.base, s.destination)].relayed for s in sends]
        if relay_first:
            assert relayed == [True, False, False]  # then the direct pairs by priority
        else:
            assert not relayed[0]


def test_ipv6_candidates_rank_above_ipv4_ones_of_their_type():
    """RFC 8421 §4: an IPv6 candidate's local preference is above every IPv4 one of the same type, whatever
    the order they were found in; the type still comes first."""
    a, _ = agents()
    a.add_base("main", "host", ("198.18.0.11", 5000), local_preference("198.18.0.11", 0))
    a.add_base("host6-0", "host", ("2001:db8:1::2", 5001), local_preference("2001:db8:1::2", 0))
    for kind, address, base in (("host", ("198.18.0.11", 5000), "main"), ("srflx", ("198.18.0.99", 7000), "main"),
                                ("host", ("2001:db8:1::2", 5001), "host6-0"),
                                ("srflx", ("2001:db8:9::2", 5001), "host6-0")):
        a.advertise(a.candidate(kind, address, base))
    ranked = [c.address[0] for c in sorted(a.local_candidates, key=lambda c: -c.priority)]
    assert ranked == ["2001:db8:1::2", "198.18.0.11", "2001:db8:9::2", "198.18.0.99"]
    assert a.bases["host6-0"].priority > a.bases["main"].priority


def test_a_working_ipv6_pair_is_selected_over_a_working_ipv4_pair():
    """Two dual-stack hosts that reach each other over both families select the IPv6 host pair (RFC 8421)."""
    a, b = agents()
    addresses = {}
    for agent, four, six in ((a, ("198.18.0.11", 5000), ("2001:db8:1::2", 5001)),
                             (b, ("198.18.0.12", 6000), ("2001:db8:2::2", 6001))):
        agent.add_base("main", "host", four, local_preference(four[0], 0))
        agent.add_base("host6-0", "host", six, local_preference(six[0], 0))
        agent.advertise(agent.candidate("host", four, "main"))
        agent.advertise(agent.candidate("host", six, "host6-0"))
        addresses[id(agent)] = {"main": four, "host6-0": six}
    a.set_remote(b.local_ufrag, b.local_pwd, [c.to_wire() for c in b.local_candidates], 0.0)
    b.set_remote(a.local_ufrag, a.local_pwd, [c.to_wire() for c in a.local_candidates], 0.0)
    run(a, b, lambda sender, send: (
        "host6-0" if ":" in send.destination[0] else "main", addresses[id(sender)][send.base]))
    assert a.selected.remote.address == ("2001:db8:2::2", 6001)
    assert b.selected.remote.address == ("2001:db8:1::2", 5001)


def test_a_dual_allocation_pairs_each_family_with_its_relayed_address():
    """A relay base with an IPv6 relayed address beside its IPv4 one (a dual allocation) pairs IPv4 remotes
    with the IPv4 address and IPv6 remotes with the IPv6 one, from the same base."""
    a, _ = agents()
    a.add_base("relay", "relay", ("198.18.0.1", 49152), 3)
    a.set_remote("ufrag", "p" * 22, [{"type": "host", "ip": "2001:db8:2::2", "port": 6001},
                                     {"type": "srflx", "ip": "198.18.0.12", "port": 6000}], 0.0)
    assert {(p.local.address, p.remote.address) for p in a.pairs.values()} == {
        (("198.18.0.1", 49152), ("198.18.0.12", 6000))}
    a.add_base_address("relay", ("2001:db8::1", 49153), 11)
    a.add_remote([{"type": "host", "ip": "2001:db8:3::2", "port": 7001}])
    assert {(p.local.base, p.local.address, p.remote.address) for p in a.pairs.values()} == {
        ("relay", ("198.18.0.1", 49152), ("198.18.0.12", 6000)),
        ("relay", ("2001:db8::1", 49153), ("2001:db8:2::2", 6001)),
        ("relay", ("2001:db8::1", 49153), ("2001:db8:3::2", 7001))}
    with pytest.raises(ValueError):
        a.add_base_address("relay", ("198.18.0.1", 49154), 3)
