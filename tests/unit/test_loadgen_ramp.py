"""The load generator's ramp: the plan, the verdicts, the loop on a simulated relay, the report, plot and CLI."""

import io
import xml.etree.ElementTree as ET

import pytest

from relay import loadgen_ramp
from relay.loadgen_config import ConfigError, LoadConfig
from relay.loadgen_plot import plot_ramp
from relay.loadgen_ramp import (
    RampConfig,
    RampPlan,
    RampResult,
    RampStep,
    format_ramp,
    ramp_report,
    run_ramp,
    verdict,
)
from relay.loadgen_report import WorkerResult, summarize
from rendezvous.cli import main as cli
from rendezvous.cli.load_test import RampProgress, config_from_args, ramp_from_args

CONFIG = LoadConfig(server=("127.0.0.1", 3478), username="alice", password="secret", clients=4, size=100)


def _walk(plan, capacity_pps):
    """Drive a plan against a relay that holds every rate up to capacity_pps; the rates it tried."""
    rates = []
    while (rate := plan.next_rate()) is not None:
        rates.append(rate)
        plan.record(rate, rate <= capacity_pps)
        assert len(rates) < 100
    return rates


def test_plan_climbs_by_factor_then_bisects():
    """The rate grows by the factor to the first failure, then bisects geometrically between held and failed."""
    plan = RampPlan(RampConfig(start_pps=1000, factor=2, steps=10, refine=2))
    rates = _walk(plan, 5000)
    assert rates[:4] == [1000, 2000, 4000, 8000]
    assert rates[4] == pytest.approx((4000 * 8000) ** 0.5)
    assert rates[5] == pytest.approx((4000 * rates[4]) ** 0.5)
    assert len(rates) == 6
    assert plan.held == pytest.approx(rates[5]) and plan.failed == pytest.approx(rates[4])
    assert "first failure" in plan.reason


def test_plan_is_bounded_by_steps_when_everything_holds():
    """With no failure the ramp stops after --ramp-steps, saying so."""
    plan = RampPlan(RampConfig(start_pps=100, factor=1.5, steps=5, refine=3))
    assert len(_walk(plan, float("inf"))) == 5
    assert "--ramp-steps 5 held" in plan.reason


def test_plan_never_offers_more_than_the_maximum():
    """The last climbing step is capped at --ramp-max and the ramp ends there once it holds."""
    plan = RampPlan(RampConfig(start_pps=1000, factor=3, max_pps=5000, steps=10))
    assert _walk(plan, float("inf")) == [1000, 3000, 5000]
    assert "--ramp-max" in plan.reason


def test_plan_stops_when_the_first_step_fails():
    """A failing first step ends the ramp with advice to start lower."""
    plan = RampPlan(RampConfig(start_pps=1000))
    assert _walk(plan, 10) == [1000]
    assert plan.held is None and "lower --ramp-start" in plan.reason


def _summary(sent=1000, received=1000, offered=1000, p99_us=500):
    result = WorkerResult(clients=4, allocated=4, duration_seconds=1.0, sent=sent, sent_bytes=sent * 100,
                          peer_received=sent, peer_bytes=sent * 100, received=received,
                          received_bytes=received * 100, offered=offered)
    for _ in range(received):
        result.rtt.record(p99_us * 1e-6)
    return summarize(LoadConfig(**{**CONFIG.__dict__, "rate": offered / 4, "seconds": 1.0}), result)


def test_verdict_holds_within_bounds():
    """A step within loss and p99 bounds holds."""
    assert verdict(_summary(), RampConfig(max_p99_ms=1)) is None


def test_verdict_fails_above_the_loss_threshold():
    """Loss over --max-loss fails the step, naming both figures."""
    assert verdict(_summary(received=980), RampConfig()) == "loss 2.00 % > 1 %"
    assert verdict(_summary(received=980), RampConfig(max_loss_percent=5)) is None


def test_verdict_fails_above_the_p99_bound():
    """A p99 round trip over --max-p99-ms fails the step."""
    assert verdict(_summary(p99_us=5000), RampConfig(max_p99_ms=2)).startswith("p99 RTT 5.000 ms > 2 ms")


def test_verdict_fails_when_the_rate_was_not_offered():
    """A generator (or back-pressure) that sent too little fails the step rather than counting as held."""
    why = verdict(_summary(sent=500, received=500, offered=1000), RampConfig())
    assert "only 500 of 1,000 pkt/s went out" in why and "--processes" in why


def test_run_ramp_on_a_simulated_relay(monkeypatch):
    """The loop runs one load test a step at the planned rate and reports the highest that held."""
    capacity = 3000.0
    seen = []

    def fake_run(step, progress, *, stopping, spawn, short_progress):
        assert spawn and short_progress and step.seconds == 0.5
        offered = step.rate * step.clients
        seen.append(offered)
        progress(f"rates at {offered:.0f}")
        sent = int(offered * step.seconds)
        received = sent if offered <= capacity else int(sent * capacity / offered)
        result = WorkerResult(clients=4, allocated=4, duration_seconds=step.seconds, sent=sent,
                              sent_bytes=sent * 100, peer_received=sent, peer_bytes=sent * 100,
                              received=received, received_bytes=received * 100, offered=sent)
        result.rtt.record(0.0003)
        return result

    monkeypatch.setattr(loadgen_ramp, "run", fake_run)
    lines, started, done = [], [], []
    result = run_ramp(CONFIG, RampConfig(start_pps=1000, factor=2, step_seconds=0.5, refine=1),
                      lambda index, rate: started.append((index, rate)), done.append, lines.append)
    assert seen[:3] == [1000, 2000, 4000] and len(seen) == 4
    assert started == list(enumerate(seen)) and len(done) == 4 and len(lines) == 4
    assert result.best.offered_pps == pytest.approx((2000 * 4000) ** 0.5)
    report = ramp_report(CONFIG, RampConfig(), result)
    assert report["held"]["offered_pps"] == pytest.approx(2828.4, abs=0.1)
    text = format_ramp(report)
    assert "highest rate that held: 2,828 pkt/s offered" in text
    assert "loss 25.00 % > 1 %" in text
    assert text.endswith("stopped: the first failure was at 4,000 pkt/s")


@pytest.mark.parametrize("values, option", [
    ({"factor": 1.0}, "--ramp-factor"),
    ({"steps": 0}, "--ramp-steps"),
    ({"steps": 51}, "--ramp-steps"),
    ({"refine": 11}, "--ramp-refine"),
    ({"step_seconds": 0.1}, "--step-seconds"),
    ({"max_loss_percent": -1}, "--max-loss"),
    ({"max_p99_ms": 0}, "--max-p99-ms"),
    ({"start_pps": 2000, "max_pps": 1000}, "--ramp-start"),
    ({"max_pps": 1e12}, "--ramp-max"),
])
def test_ramp_options_out_of_range_are_refused(values, option):
    """Each out-of-range ramp option is refused naming the option."""
    with pytest.raises(ConfigError, match=option):
        RampConfig(**values).validate(clients=4)


def _parse(*argv):
    argv = ["load-test", "--server", "127.0.0.1:3478", "--user", "alice:secret", *argv]
    return cli.build_parser(argv).parse_args(argv)


def test_cli_ramp_options_become_a_ramp_config():
    """Every ramp option lands in the RampConfig."""
    args = _parse("--clients", "4", "--ramp", "--ramp-start", "500", "--ramp-factor", "1.25", "--ramp-max",
                  "9000", "--ramp-steps", "7", "--ramp-refine", "3", "--step-seconds", "2", "--max-loss",
                  "0.5", "--max-p99-ms", "10", "--plot", "out.svg")
    assert ramp_from_args(args, config_from_args(args, {}).clients) == RampConfig(
        start_pps=500, factor=1.25, max_pps=9000, steps=7, refine=3, step_seconds=2, max_loss_percent=0.5,
        max_p99_ms=10)
    assert args.plot == "out.svg"


@pytest.mark.parametrize("argv, message", [
    (("--ramp", "--rate", "10"), "do not apply to --ramp"),
    (("--ramp", "--seconds", "10"), "do not apply to --ramp"),
    (("--plot", "x.svg"), "add --ramp"),
    (("--ramp", "--ramp-factor", "0.5"), "--ramp-factor"),
])
def test_cli_refuses_inconsistent_ramp_options(capsys, argv, message):
    """Options that contradict --ramp end the command with status 2 before any network use."""
    assert cli.main(["load-test", "--server", "127.0.0.1:9", "--user", "a:b", *argv]) == 2
    assert message in capsys.readouterr().err


def _report():
    steps = [RampStep(rate, _summary(sent=rate, received=rate if held else rate // 2, offered=rate),
                      None if held else "loss 50.00 % > 1 %")
             for rate, held in ((1000, True), (2000, True), (4000, False))]
    return ramp_report(CONFIG, RampConfig(max_p99_ms=5), RampResult(steps, "the first failure was at 4,000"))


def test_plot_writes_an_svg_of_throughput_and_rtt(tmp_path):
    """--plot writes a well-formed SVG with both panels' labels."""
    path = tmp_path / "ramp.svg"
    plot_ramp(_report(), str(path))
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    text = path.read_text()
    for label in ("offered load", "round trip (ms)", "round trips back", "p99 RTT", "Mbit/s back"):
        assert label in text


def test_progress_shows_the_bar_and_each_step(monkeypatch):
    """The progress bar names the step and its live rates; each finished step prints as a table row."""
    out = io.StringIO()
    progress = RampProgress(RampConfig(steps=3, refine=1), file=out, enabled=True)
    progress.step_started(0, 1000)
    progress.rates("sent 1,000 pkt/s, back 998 pkt/s")
    step = RampStep(1000, _summary(), None)
    progress.step_done(step)
    progress.close()
    text = out.getvalue()
    assert "offered pkt/s" in text and "step 1: 1,000 pkt/s offered" in text
    assert "back 998 pkt/s" in text and "1/4" in text
    assert loadgen_ramp.step_line(step) in text


def test_a_later_step_that_cannot_allocate_ends_the_ramp_with_the_steps_so_far(monkeypatch):
    """If a step after the first sets up no client, the ramp stops there, keeps what it measured and says why;
    a first step that cannot is an error."""
    def fake_run(step, progress, *, stopping, spawn, short_progress):
        if step.rate * step.clients > 1000:
            raise loadgen_ramp.LoadTestFailed("no allocation succeeded: ALLOCATE failed: 486 (x4)")
        result = WorkerResult(clients=4, allocated=4, duration_seconds=1.0, sent=1000, peer_received=1000,
                              received=1000, offered=1000)
        result.rtt.record(0.001)
        return result

    monkeypatch.setattr(loadgen_ramp, "run", fake_run)
    result = run_ramp(CONFIG, RampConfig(start_pps=1000, factor=2))
    assert [step.offered_pps for step in result.steps] == [1000]
    assert result.reason == "step 2 at 2,000 pkt/s failed: no allocation succeeded: ALLOCATE failed: 486 (x4)"
    with pytest.raises(loadgen_ramp.LoadTestFailed):
        run_ramp(CONFIG, RampConfig(start_pps=2000))
