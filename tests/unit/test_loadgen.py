"""The load generator's pure parts: budgets, bursts, percentiles, report math, options, caps."""

import argparse
import json
import math
import subprocess
import sys

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relay import loadgen, loadgen_worker
from relay.loadgen import split_clients
from relay.loadgen_config import HARD_CAP_PACKETS, ConfigError, LoadConfig, per_client_budget
from relay.loadgen_report import LatencyHistogram, Progress, WorkerResult, format_report, summarize
from relay.loadgen_worker import Worker, burst_size, max_burst_for
from rendezvous.cli import main as cli
from rendezvous.cli.load_test import config_from_args, parse_server, parse_user
from tests.conftest import ROOT

# -- budgets, bursts, shares -------------------------------------------------------------


def test_budget_is_rate_times_seconds():
    """A client's budget is ceil(rate x seconds) when no cap bites."""
    assert per_client_budget(1000, 2.5, 4, HARD_CAP_PACKETS) == 2500
    assert per_client_budget(3, 0.5, 1, HARD_CAP_PACKETS) == 2


def test_budget_shares_max_packets_among_clients():
    """--max-packets is split among clients and overrides rate x seconds."""
    assert per_client_budget(1000, 10, 4, 1000) == 250


def test_budget_never_exceeds_the_hard_cap():
    """However large the options, all clients together stay under HARD_CAP_PACKETS."""
    budget = per_client_budget(1_000_000, 86_400, 10, 10**12)
    assert budget * 10 <= HARD_CAP_PACKETS


def test_budget_is_at_least_one_packet():
    """Every client may send at least one packet."""
    assert per_client_budget(1, 0.1, 5, 2) == 1


def test_first_tick_sends_one_packet():
    """At t = 0 a client owes exactly its first packet."""
    assert burst_size(0, 0.0, 1000, 10_000, 50) == 1


def test_burst_catches_up_with_the_rate():
    """A tick sends what is owed by now: floor(elapsed x rate) + 1 minus what was sent."""
    assert burst_size(1, 0.005, 1000, 10_000, 50) == 5
    assert burst_size(6, 0.010, 1000, 10_000, 50) == 5


def test_burst_is_zero_when_ahead():
    """Nothing is sent when the client is not behind its schedule."""
    assert burst_size(11, 0.010, 1000, 10_000, 50) == 0


def test_burst_never_exceeds_max_burst():
    """A very late tick sends at most max_burst, not the whole backlog."""
    assert burst_size(0, 10.0, 1000, 100_000, 50) == 50


def test_burst_never_passes_the_budget():
    """The last bursts stop exactly at the budget."""
    assert burst_size(95, 1.0, 1000, 100, 50) == 5
    assert burst_size(100, 2.0, 1000, 100, 50) == 0


def test_max_burst_is_the_catch_up_window():
    """max_burst is MAX_CATCH_UP_SECONDS of traffic, and at least one packet."""
    assert max_burst_for(1000, 0.005) == math.ceil(1000 * loadgen_worker.MAX_CATCH_UP_SECONDS)
    assert max_burst_for(1, 0.005) == 1


def test_tick_grows_with_clients_within_bounds():
    """The automatic tick is 1 ms for few clients, 10 µs per client beyond, 10 ms at most."""
    assert loadgen_worker.auto_tick_seconds(1) == 0.001
    assert loadgen_worker.auto_tick_seconds(500) == pytest.approx(0.005)
    assert loadgen_worker.auto_tick_seconds(20_000) == 0.010


def test_explicit_tick_overrides_the_automatic_one():
    """--tick-ms sets the tick; without it the worker picks auto_tick_seconds."""
    assert Worker(Clock(), _config(tick_seconds=0.004), 0, 2).tick_seconds == 0.004
    assert Worker(Clock(), _config(), 0, 2).tick_seconds == 0.001


def test_split_clients_evenly():
    """Clients are shared as evenly as possible, earlier workers taking the remainder."""
    assert split_clients(10, 3) == [4, 3, 3]
    assert split_clients(4, 2) == [2, 2]


def test_split_clients_never_leaves_a_worker_idle():
    """More processes than clients gives one client per process."""
    assert split_clients(2, 8) == [1, 1]


# -- round-trip histogram -----------------------------------------------------------------


def test_percentiles_are_exact_below_128_microseconds():
    """Samples of 1..100 µs give p50 = 50 µs, p90 = 90 µs and p99 = 99 µs (nearest rank)."""
    histogram = LatencyHistogram()
    for micros in range(1, 101):
        histogram.record(micros * 1e-6)
    assert histogram.percentile(50) == pytest.approx(50e-6)
    assert histogram.percentile(90) == pytest.approx(90e-6)
    assert histogram.percentile(99) == pytest.approx(99e-6)
    assert histogram.percentile(100) == pytest.approx(100e-6)


def test_percentiles_are_within_two_percent_above():
    """Larger durations come back within the bucket precision (1/64)."""
    histogram = LatencyHistogram()
    values = [0.000_250, 0.001_234, 0.015_000, 0.250_000, 3.0]
    for value in values:
        histogram.record(value)
    for rank, value in enumerate(values, start=1):
        assert histogram.percentile(rank * 20) == pytest.approx(value, rel=1 / 64)


def test_every_bucket_round_trips():
    """Each index maps back to a bucket that contains the values that map to it."""
    for micros in list(range(5000)) + [2**20 + 12345, 2**33 + 7, LatencyHistogram.MAX_MICROSECONDS]:
        low, width = LatencyHistogram._bounds(LatencyHistogram._index(micros))
        assert low <= micros < low + width


def test_empty_histogram_has_no_percentiles():
    """With no samples, percentiles and the mean are None."""
    histogram = LatencyHistogram()
    assert histogram.percentile(50) is None
    assert histogram.mean is None


def test_negative_durations_count_as_zero():
    """A negative duration (a clock step) is recorded as 0, not an error."""
    histogram = LatencyHistogram()
    histogram.record(-0.5)
    assert histogram.percentile(50) == 0.0


def test_merged_histograms_equal_one_histogram():
    """Merging per-process histograms gives what one histogram of all samples gives."""
    one, a, b = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i in range(1000):
        value = (i % 97 + 1) * 17e-6
        one.record(value)
        (a if i % 3 else b).record(value)
    a.merge(b)
    assert a.counts == one.counts
    assert (a.total, a.min_us, a.max_us, a.sum_us) == (one.total, one.min_us, one.max_us, one.sum_us)
    assert a.percentile(99) == one.percentile(99)


# -- results and reports ------------------------------------------------------------------


def _config(**overrides):
    values = {"server": ("127.0.0.1", 3478), "username": "alice", "password": "secret", "clients": 2,
              "rate": 1000, "seconds": 2.0, "size": 100}
    values.update(overrides)
    return LoadConfig(**values)


def _result(**counts):
    result = WorkerResult(clients=2, allocated=2, duration_seconds=2.0)
    for name, value in counts.items():
        setattr(result, name, value)
    return result


def test_summary_rates_divide_by_the_sending_window():
    """Packets/s and Mbit/s are counts over the sending window; Mbit/s counts payload bytes."""
    result = _result(sent=4000, sent_bytes=400_000, peer_received=4000, peer_bytes=400_000,
                     received=3960, received_bytes=396_000, offered=4000)
    summary = summarize(_config(), result)
    assert summary["sent_pps"] == 2000.0
    assert summary["received_pps"] == 1980.0
    assert summary["relayed_pps"] == 3980.0
    assert summary["sent_mbps"] == 1.6
    assert summary["received_mbps"] == pytest.approx(1.584)
    assert summary["offered_pps"] == 2000.0
    assert summary["generator_kept_up"] is True


def test_summary_splits_loss_by_direction():
    """Forward loss is sent but not at the peer, return loss echoed but not back."""
    summary = summarize(_config(), _result(sent=1000, peer_received=990, received=980))
    assert summary["loss_forward_percent"] == 1.0
    assert summary["loss_return_percent"] == pytest.approx(1.01, abs=0.001)
    assert summary["loss_percent"] == 2.0


def test_summary_without_traffic_has_no_loss_figures():
    """Nothing sent means loss is unknown (None), not 0 % or a division by zero."""
    summary = summarize(_config(), _result())
    assert summary["loss_percent"] is None
    assert summary["rtt_ms"]["p50"] is None


def test_summary_flags_a_generator_that_fell_behind():
    """Sending under 98 % of the offered load is reported as the generator not keeping up."""
    summary = summarize(_config(), _result(sent=3000, offered=4000))
    assert summary["generator_kept_up"] is False
    assert "add --processes" in format_report(summary)


def test_summary_flags_a_cpu_bound_generator():
    """A worker busy 90 % or more of the sending window is reported as CPU-bound."""
    assert summarize(_config(), _result(busiest_cpu_percent=40.0))["generator_cpu_bound"] is False
    summary = summarize(_config(), _result(busiest_cpu_percent=97.0))
    assert summary["generator_cpu_bound"] is True
    assert "CPU-bound (97 % of a core" in format_report(summary)


def test_merge_keeps_the_busiest_worker_cpu():
    """Merged results report the busiest worker's CPU share, not the sum."""
    merged = _result(busiest_cpu_percent=50.0).merge(_result(busiest_cpu_percent=70.0))
    assert merged.busiest_cpu_percent == 70.0


def test_summary_reports_rtt_percentiles_in_milliseconds():
    """RTT percentiles appear in ms with the sample count."""
    result = _result(sent=100, peer_received=100, received=100)
    for micros in range(1, 101):
        result.rtt.record(micros * 1e-6)
    rtt = summarize(_config(), result)["rtt_ms"]
    assert (rtt["p50"], rtt["p90"], rtt["p99"], rtt["samples"]) == (0.05, 0.09, 0.099, 100)


def test_summary_is_json_serialisable():
    """The --json output is plain data."""
    result = _result(sent=10, peer_received=10, received=10, errors={"ALLOCATE failed: 486 Quota": 1})
    result.rtt.record(0.001)
    assert json.loads(json.dumps(summarize(_config(), result)))["errors"] == {"ALLOCATE failed: 486 Quota": 1}


def test_report_lists_directions_loss_and_rtt():
    """The human report has one row per direction, the loss line and the RTT line."""
    result = _result(sent=4000, peer_received=4000, received=4000, errors={"x": 2})
    result.rtt.record(0.0002)
    text = format_report(summarize(_config(), result))
    for expected in ("sent (client → relay)", "at peer (relay → peer)", "back (relay → client)",
                     "relayed (both ways)", "loss: forward 0.00 %", "rtt ms: p50", "failed setup x2: x"):
        assert expected in text


def test_worker_results_merge_by_adding():
    """Merging adds counters and errors, keeps the longest window and merges RTTs."""
    a = _result(sent=10, received=9, errors={"e": 1}, duration_seconds=2.0)
    b = _result(sent=5, received=5, errors={"e": 2, "f": 1}, duration_seconds=2.1)
    b.rtt.record(0.001)
    a.merge(b)
    assert (a.sent, a.received, a.allocated, a.clients) == (15, 14, 4, 4)
    assert a.errors == {"e": 3, "f": 1}
    assert a.duration_seconds == 2.1
    assert a.rtt.total == 1


def test_progress_waits_for_every_worker():
    """A progress line is printed once every worker has reported the next second."""
    lines = []
    progress = Progress(lines.append, workers=2)
    progress.update(0, (1.0, 1000, 100_000, 1000, 990, 99_000))
    assert lines == []
    progress.update(1, (1.0, 1000, 100_000, 1000, 1000, 100_000))
    assert len(lines) == 1
    assert "sent      2,000 pkt/s" in lines[0]
    assert "back      1,990 pkt/s" in lines[0]


def test_progress_lines_show_per_second_rates():
    """Each line shows the rate since the previous line, not the running total."""
    lines = []
    progress = Progress(lines.append)
    progress.update(0, (1.0, 1000, 0, 1000, 1000, 0))
    progress.update(0, (2.0, 3000, 0, 3000, 3000, 0))
    assert "sent      2,000 pkt/s" in lines[1]


def test_short_progress_lines_give_just_the_rates():
    """The short form (a ramp's progress bar) gives the sent and returned rates and what is not back yet."""
    lines = []
    progress = Progress(lines.append, short=True)
    progress.update(0, (1.0, 1000, 0, 1000, 990, 0))
    assert lines == ["sent 1,000 pkt/s, back 990 pkt/s, not back yet 1.00 %"]


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:3478", ("127.0.0.1", 3478)),
    ("turn.example.org:443", ("turn.example.org", 443)),
    ("[::1]:5349", ("::1", 5349)),
])
def test_parse_server(text, expected):
    """HOST:PORT and [IPv6]:PORT parse to (host, port)."""
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":3478", "host:", "host:0", "host:70000", "[::1]3478", "h:x"])
def test_parse_server_rejects_malformed(text):
    """A server without a valid port is refused with a clear message."""
    with pytest.raises(ConfigError, match="--server"):
        parse_server(text)


def test_parse_user_splits_at_the_first_colon():
    """The password may itself contain colons."""
    assert parse_user("alice:se:cret", {}) == ("alice", "se:cret")


def test_parse_user_reads_the_password_from_the_environment():
    """A bare NAME takes its password from TXRENDEZVOUS_PASSWORD."""
    assert parse_user("alice", {"TXRENDEZVOUS_PASSWORD": "secret"}) == ("alice", "secret")
    with pytest.raises(ConfigError, match="--user"):
        parse_user("alice", {})


def _parse(*argv):
    return cli.build_parser(["load-test", *argv]).parse_args(["load-test", *argv])


def test_cli_arguments_become_a_config():
    """Every load-test option lands in the LoadConfig."""
    args = _parse("--server", "127.0.0.1:3478", "--transport", "tcp", "--user", "alice:secret",
                  "--realm", "example.org", "--clients", "8", "--processes", "2", "--mode", "send",
                  "--size", "1000", "--rate", "250", "--seconds", "3", "--peer-ip", "127.0.0.1", "--json",
                  "--tick-ms", "2", "--setup-timeout", "5", "--drain", "0.5", "--max-packets", "1000")
    config = config_from_args(args, {})
    assert config == LoadConfig(
        server=("127.0.0.1", 3478), username="alice", password="secret", realm="example.org",
        transport="tcp", clients=8, processes=2, mode="send", size=1000, rate=250.0, seconds=3.0,
        peer_ip="127.0.0.1", tick_seconds=0.002, setup_timeout_seconds=5.0, drain_seconds=0.5,
        max_packets=1000,
    )
    assert args.json is True


def test_cli_tls_options():
    """--tls-insecure turns verification off; --tls-ca and --tls-hostname pass through."""
    config = config_from_args(_parse("--server", "h:5349", "--transport", "tls", "--user", "a:b",
                                     "--tls-insecure", "--tls-ca", "ca.pem", "--tls-hostname", "turn"), {})
    assert (config.tls_verify, config.tls_ca_file, config.tls_hostname) == (False, "ca.pem", "turn")
    assert config_from_args(_parse("--server", "h:5349", "--user", "a:b"), {}).tls_verify is True


def test_cli_caps_processes_at_clients():
    """More processes than clients is trimmed to one client per process."""
    config = config_from_args(_parse("--server", "h:1", "--user", "a:b", "--clients", "2", "--processes", "8"), {})
    assert config.processes == 2


@pytest.mark.parametrize("option, value, message", [
    ("--clients", "0", "--clients"),
    ("--processes", "0", "--processes"),
    ("--size", "15", "--size"),
    ("--size", "70000", "--size"),
    ("--rate", "0", "--rate"),
    ("--seconds", "0", "--seconds"),
    ("--seconds", "1e9", "--seconds"),
    ("--peer-ip", "localhost", "--peer-ip"),
    ("--max-packets", str(HARD_CAP_PACKETS + 1), "--max-packets"),
    ("--tick-ms", "0.1", "--tick-ms"),
])
def test_cli_rejects_out_of_range_values(option, value, message):
    """Each out-of-range option is refused naming the option."""
    with pytest.raises(ConfigError, match=message):
        config_from_args(_parse("--server", "h:1", "--user", "a:b", option, value), {})


def test_bad_input_exits_2_with_a_message(capsys):
    """Bad input ends the command with status 2 and an error on stderr, before any network use."""
    assert cli.main(["load-test", "--server", "nowhere", "--user", "a:b"]) == 2
    assert "error: --server must be HOST:PORT" in capsys.readouterr().err


def test_missing_subcommand_is_a_usage_error():
    """Running txrendezvous without a subcommand is an argparse usage error (status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


def test_help_imports_no_subcommand_module():
    """Top-level --help does not import the subcommand modules (they load lazily)."""
    code = ("import sys, contextlib, io, rendezvous.cli.main as c\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: c.main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print('rendezvous.cli.load_test' in sys.modules, 'twisted.internet.reactor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_subcommand_names_are_unique():
    """Each subcommand name is registered once."""
    names = [sub.name for sub in cli.SUBCOMMANDS]
    assert len(names) == len(set(names)) and "load-test" in names


# -- the bounded send loop, on a fake clock ------------------------------------------------


class _FakeClient:
    write_paused = False


def _worker(clock, **overrides):
    config = _config(**overrides)
    worker = Worker(clock, config, 0, config.clients)
    sent = []
    for flow in worker.all_flows:
        flow.client = _FakeClient()
        flow.send = sent.append
    worker.flows = list(worker.all_flows)
    return worker, sent


def _drive(clock, deferred, seconds, step=0.001):
    for _ in range(int(seconds / step)):
        if deferred.called:
            break
        clock.advance(step)


def test_send_loop_stops_after_seconds():
    """Sending ends at --seconds with rate x seconds packets per client, then drains and stops."""
    clock = Clock()
    worker, sent = _worker(clock, rate=200, seconds=0.5, drain_seconds=0.2)
    done = Deferred.fromCoroutine(worker._send_and_drain())
    _drive(clock, done, 5)
    assert done.called
    assert [flow.sent for flow in worker.flows] == [100, 100]
    assert len(sent) == 200
    assert worker.finished_sending == pytest.approx(0.5, abs=0.01)
    assert clock.seconds() == pytest.approx(0.7, abs=0.01)  # the whole drain: nothing came back


def test_send_loop_stops_at_the_packet_cap():
    """--max-packets ends sending early, before --seconds, at exactly the budget."""
    clock = Clock()
    worker, sent = _worker(clock, rate=1000, seconds=60, max_packets=300, drain_seconds=0)
    done = Deferred.fromCoroutine(worker._send_and_drain())
    _drive(clock, done, 5)
    assert done.called
    assert len(sent) == 300
    assert clock.seconds() < 1.0


def test_send_loop_stops_when_asked():
    """stop() ends sending at the next tick."""
    clock = Clock()
    worker, sent = _worker(clock, rate=1000, seconds=60, drain_seconds=0)
    stop = []
    worker.stop = lambda: bool(stop)
    done = Deferred.fromCoroutine(worker._send_and_drain())
    _drive(clock, done, 0.1)
    stop.append(True)
    _drive(clock, done, 1)
    assert done.called
    assert len(sent) < 300


def test_drain_ends_once_everything_is_back():
    """The drain wait ends as soon as every sent packet came back."""
    clock = Clock()
    worker, _ = _worker(clock, rate=100, seconds=0.2, drain_seconds=30)
    for flow in worker.flows:
        flow.send = lambda data, flow=flow: setattr(flow, "received", flow.received + 1)
    done = Deferred.fromCoroutine(worker._send_and_drain())
    _drive(clock, done, 5)
    assert done.called
    assert clock.seconds() < 1.0


def test_paused_clients_skip_their_burst():
    """A client whose TCP/TLS buffer is full sends nothing until it resumes."""
    clock = Clock()
    worker, sent = _worker(clock, rate=1000, seconds=0.1, drain_seconds=0, clients=1)
    worker.flows[0].client.write_paused = True
    done = Deferred.fromCoroutine(worker._send_and_drain())
    _drive(clock, done, 1)
    assert sent == []
    assert worker.result.paused_ticks > 0


def test_run_has_a_finite_hard_deadline():
    """The whole run is bounded by setup, sending, drain and teardown times."""
    config = _config(seconds=30, setup_timeout_seconds=10, drain_seconds=1)
    assert 41 < loadgen.hard_deadline_seconds(config) < 120


def test_payloads_carry_sequence_and_send_time():
    """Each packet is --size bytes starting with its sequence number and send time."""
    clock = Clock()
    clock.advance(1000)
    worker, sent = _worker(clock, rate=100, seconds=0.05, drain_seconds=0, clients=1, size=64)
    done = Deferred.fromCoroutine(worker._send_and_drain())
    _drive(clock, done, 1)
    assert all(len(packet) == 64 for packet in sent)
    seq, stamp = loadgen_worker._STAMP.unpack_from(sent[0])
    assert (seq, stamp) == (0, 1000.0)
    assert [loadgen_worker._STAMP.unpack_from(p)[0] for p in sent] == list(range(len(sent)))


def test_argparse_namespace_without_json_defaults_to_text():
    """--json is off unless given."""
    assert isinstance(_parse("--server", "h:1", "--user", "a:b"), argparse.Namespace)
    assert _parse("--server", "h:1", "--user", "a:b").json is False
