"""Allocation made/ended log lines: one by one up to --allocation-log-rate a second, then a summary."""

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from relay.allocation_log import SUMMARY_SECONDS
from rendezvous.stun import Attr, Class, Method
from rendezvous.stun.attributes import encode_uint32
from tests.unit.test_turn_server import SERVER, Client, make_server


def logged_while(call) -> list[str]:
    """The allocation log lines (relay.allocation_log) emitted during call(), formatted."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        call()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e.get("log_namespace") == "relay.allocation_log"]


def cycle(server, number: int) -> None:
    """One client's allocation made and refreshed to 0 (ended)."""
    client = Client(server, five_tuple=("udp", ("203.0.113.%d" % (1 + number % 250), 1000 + number), SERVER))
    assert client.allocate().cls == Class.SUCCESS
    assert client.request(Method.REFRESH, (Attr.LIFETIME, encode_uint32(0))).cls == Class.SUCCESS


def test_lines_past_the_rate_are_counted_and_summarized():
    """Past the rate, made/ended lines give way to one summary SUMMARY_SECONDS after the first held back;
    below it, every allocation is logged one by one again."""
    clock = Clock()
    clock.advance(1000)
    server = make_server(clock, allocation_log_rate=4)
    lines = logged_while(lambda: [cycle(server, n) for n in range(5)])
    assert len(lines) == 4 and "ended: refreshed to 0" in lines[1]
    clock.advance(SUMMARY_SECONDS - 1)
    assert logged_while(lambda: server.expire(clock.seconds())) == []
    clock.advance(1)
    summary = logged_while(lambda: server.expire(clock.seconds()))
    assert summary == [f"3 allocations made and 3 ended in the last {SUMMARY_SECONDS} s were not logged one by "
                       "one (over 4 lines/s); 0 live"]
    lines = logged_while(lambda: cycle(server, 9))
    assert len(lines) == 2 and lines[0].startswith("allocation ") and " for alice from 203.0.113.10:1009" in lines[0]
    assert logged_while(lambda: server.expire(clock.seconds() + SUMMARY_SECONDS)) == []


def test_rate_zero_logs_every_allocation_and_stop_tells_what_was_held():
    """With rate 0 nothing is held back; with a rate, stopping logs the summary at once."""
    clock = Clock()
    every = make_server(clock, allocation_log_rate=0)
    assert len(logged_while(lambda: [cycle(every, n) for n in range(30)])) == 60
    bounded = make_server(clock, allocation_log_rate=1)
    client = Client(bounded, five_tuple=("udp", ("203.0.113.1", 1), SERVER))
    other = Client(bounded, five_tuple=("udp", ("203.0.113.2", 2), SERVER))
    assert logged_while(lambda: (client.allocate(), other.allocate())) != []
    assert logged_while(bounded.stop) == ["1 allocations made and 2 ended in the last 0 s were not logged one by "
                                          "one (over 1 lines/s); 0 live"]
