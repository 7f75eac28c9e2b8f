"""Headless Chromium reads the field test's pages: the charts show what the database holds."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import free_port, start_node, stop_node
from tests.integration.test_results_web import post, request, results_page
from tests.interop.test_chromium import CHROMIUM, CHROMIUM_FLAGS
from tests.unit.test_results import outcome, submission

pytestmark = pytest.mark.interop

BROWSER_TIMEOUT_SECONDS = 60
# Figure of every bar: <g id="CHART-value-N"><text ...>FIGURE</text></g> (rendezvous.node.results.charts).
_BAR = re.compile(r'id="([a-z-]+)-value-(\d+)">\s*<text[^>]*>([^<]*)</text>')


@pytest.fixture
def web_node(tmp_path):
    http_port = free_port()
    node = start_node(tmp_path, "--http-port", str(http_port), "--no-relay", alternate=False)
    node.http_port = http_port
    yield node
    stop_node(node)


def browser(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium once with a fresh profile; every host but loopback is unresolvable."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=BROWSER_TIMEOUT_SECONDS, check=False,
                          env=dict(os.environ, HOME=str(home)), cwd=tmp_path)


def bars(dom: str) -> dict[str, list[str]]:
    """Each chart's bar figures, in order, as the browser's DOM holds them."""
    found: dict[str, dict[int, str]] = {}
    for chart, n, text in _BAR.findall(dom):
        found.setdefault(chart, {})[int(n)] = text
    return {chart: [figures[n] for n in sorted(figures)] for chart, figures in found.items()}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_the_charts_show_the_stored_counts(web_node, tmp_path):
    """Chromium's /results shows, chart by chart, the counts /api/results reports from the database."""
    for document in (submission(form={"router": "AVM", "isp": "Example"}),
                     submission(classic="symmetric", mapping="address-and-port-dependent",
                                binding_lifetime_seconds=200.0, form={"router": "avm"}),
                     submission(classic="symmetric", mapping="address-and-port-dependent",
                                form={"router": "Zyxel", "isp": "Other"}),
                     outcome(), outcome(path="turn-udp", local="symmetric", remote="symmetric")):
        assert post(web_node, document)[0] == 201
    summary = json.loads(request(web_node, "GET", "/api/results")[2])
    results_page(web_node, lambda page: b'id="nat-types-value-1"' in page)
    shot = tmp_path / "results.png"
    done = browser(tmp_path, "--window-size=1500,1900", f"--screenshot={shot}",
                   f"http://127.0.0.1:{web_node.http_port}/results")
    assert shot.exists() and shot.stat().st_size > 10000, done.stderr[-4000:]
    if os.environ.get("TXR_RESULTS_SCREENSHOT"):  # how docs/figures/results-page.png is made
        shutil.copy(shot, os.environ["TXR_RESULTS_SCREENSHOT"])
    dom = browser(tmp_path, "--dump-dom", f"http://127.0.0.1:{web_node.http_port}/results").stdout
    shown = bars(dom)
    assert shown["nat-types"] == [str(n) for _, n in summary["nat_types"]] == ["2", "1"]
    assert shown["mapping"] == [str(n) for _, n in summary["mapping"]]
    assert shown["binding-timeouts"] == [str(n) for _, n in summary["binding_timeouts"]]
    assert shown["techniques"] == [f"{ok}/{tried}" for _, tried, ok in summary["techniques"]]
    assert shown["direct"] == [f"{d}/{n}" for _, _, n, d in summary["direct_by_pair"]]
    assert shown["routers"] == [str(n) for _, n, _, _ in summary["routers"]] == ["2", "1"]
    assert "Zyxel" in dom and "Other" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_pages_from_no_data_and_a_permanent_link(web_node, tmp_path):
    """With no data every chart says so (the histogram shows zeros); a permanent link shows its submission."""
    dom = browser(tmp_path, "--dump-dom", f"http://127.0.0.1:{web_node.http_port}/results").stdout
    assert dom.count('-empty"') == 13 and bars(dom) == {"binding-timeouts": ["0"] * 6}  # a histogram of zeros
    status, answer = post(web_node, submission(form={"router": "Netgear", "model": "R7000"}))
    assert status == 201
    dom = browser(tmp_path, "--dump-dom", f"http://127.0.0.1:{web_node.http_port}/results/{answer['id']}").stdout
    assert "Netgear" in dom and "R7000" in dom and "port restricted cone" in dom
