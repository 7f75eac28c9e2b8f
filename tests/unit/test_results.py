"""The field test's sans-IO parts: submission checks, records, counts, store, charts and retention."""

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from rendezvous.node.accounts import SCHEMA_VERSION, AccountStore
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.results.charts import bar_chart
from rendezvous.node.results.records import network_of, record_of
from rendezvous.node.results.retention import DAY_SECONDS, SWEEP_SECONDS, retention_service
from rendezvous.node.results.store import ResultsStore, snapshot
from rendezvous.node.results.summary import binding_bin, summarize
from rendezvous.node.results.view import REBUILD_SECONDS, ResultsView
from rendezvous.peer.nat_check.decisions import PortAllocation
from rendezvous.peer.nat_check.report import NatReport
from rendezvous.peer.results_client import submit_url
from rendezvous.wire.results import (MAX_SUBMISSION_BYTES, SubmissionError, check_form, nat_check_submission,
                                    parse_submission)
from tests.switchable_store import Switchable
from tests.unit.test_accounts import made_at_v4
from upnp_helper.probe import GatewayAnswer


def nat_report(**fields) -> dict:
    """A report as ``txrendezvous nat-check --json`` prints it, with addresses everywhere."""
    values = dict(server="198.18.0.1:3478", other_address="198.18.0.2:3479", server_answered=True, rfc5780=True,
                  udp_blocked=False, local_address="192.168.1.20:40000", mapped_address="198.19.7.9:40000",
                  nat_present=True, mapping="endpoint-independent", filtering="address-and-port-dependent",
                  classic="port restricted cone", port_preservation=True,
                  port_allocation=PortAllocation("preserving", None, ((40001, 40001), (40002, 40002))),
                  port_prediction_easy=True, hairpinning=False, binding_lifetime_seconds=45.0,
                  upnp={"igd": GatewayAnswer("igd", True, "198.19.7.9", "http://192.168.1.1:5000/ctl"),
                        "pcp": GatewayAnswer("pcp", False, error="no answer")})
    values.update(fields)
    return NatReport(**values).to_dict()


def submission(form=None, **fields) -> dict:
    return nat_check_submission(nat_report(**fields), {"router": "AVM", "isp": "Example Telecom"} if form is None else form)


def outcome(local="port restricted cone", remote="symmetric", path="udp-direct", attempts=None) -> dict:
    return {"kind": "outcome", "version": 1, "local": {"nat_type": local}, "remote": {"nat_type": remote},
            "attempts": attempts if attempts is not None else [
                {"technique": "udp-direct", "outcome": "selected", "duration_ms": 180.5},
                {"technique": "turn-udp", "outcome": "succeeded", "duration_ms": 90.0},
                {"technique": "upnp", "outcome": "skipped", "duration_ms": 0}],
            "path": path}


def encode(document) -> bytes:
    return json.dumps(document).encode()


def test_a_real_nat_check_report_is_accepted():
    """A nat-check report's own JSON, with the form, passes the schema unchanged."""
    document = submission(form={"router": "AVM", "model": "FRITZ!Box 7590", "firmware": "7.57", "isp": "Example",
                                "connection": "DSL"})
    assert parse_submission(encode(document)) == document


def test_an_outcome_is_accepted():
    """A connect() outcome with its attempts passes the schema."""
    assert parse_submission(encode(outcome()))["path"] == "udp-direct"


@pytest.mark.parametrize("body, reason", [
    (b"x" * (MAX_SUBMISSION_BYTES + 1), "at most"),
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"[" * 5000 + b"]" * 5000, "not JSON"),
    (encode({"kind": "poll", "version": 1}), "kind must be one of"),
    (encode({**submission(), "extra": 1}), "Additional properties"),
    (encode({**submission(), "version": 2}), "version"),
    (encode(submission(mapping=5)), "report/mapping"),
    (encode(submission(mapping="sideways")), "report/mapping"),
    (encode(submission(binding_lifetime_seconds=-1.0)), "report/binding_lifetime_seconds"),
    (encode({**submission(), "report": {"mapping": None}}), "report"),
    (encode(submission(form={"router": "AVM\nInjected: 1"})), "form/router"),
    (encode(submission(form={"router": "x" * 65})), "form/router"),
    (encode(submission(form={"colour": "red"})), "form"),
    (encode(outcome(attempts=[{"technique": "udp-direct", "outcome": "selected", "duration_ms": 1}] * 33)),
     "attempts"),
    (encode(outcome(attempts=[{"technique": "UDP Direct!", "outcome": "selected", "duration_ms": 1}])),
     "attempts/0/technique"),
    (encode(outcome(attempts=[{"technique": "upnp", "outcome": "maybe", "duration_ms": 1}])), "attempts/0/outcome"),
    (encode(outcome(path=7)), "path"),
])
def test_bad_submissions_are_refused_with_the_reason(body, reason):
    """Oversized, malformed, mistyped or unknown submissions raise SubmissionError naming what is wrong."""
    with pytest.raises(SubmissionError, match=reason):
        parse_submission(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_a_submission_or_a_clear_refusal(body):
    """No byte string makes the check raise anything but SubmissionError."""
    try:
        assert isinstance(parse_submission(body), dict)
    except SubmissionError:
        pass


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"kind": st.sampled_from(["nat-check", "outcome"]), "version": st.just(1)},
                             optional={"report": _JSON, "local": _JSON, "remote": _JSON, "attempts": _JSON,
                                       "path": _JSON, "form": _JSON}))
def test_any_json_is_a_record_or_a_clear_refusal(document):
    """Whatever shape a submission takes, a passing one always makes a record, and nothing else raises."""
    try:
        checked = parse_submission(encode(document))
    except SubmissionError:
        return
    json.dumps(record_of(checked))


def test_records_keep_no_address():
    """A record keeps the NAT words and the form, and none of the report's addresses or port samples."""
    record = record_of(submission(form={"router": "  AVM   FRITZ ", "isp": "Example"}))
    text = json.dumps(record)
    for secret in ("192.168.1.20", "198.19.7.9", "198.18.0", "40001", "5000/ctl"):
        assert secret not in text
    assert record["mapping"] == "endpoint-independent" and record["port_allocation"] == "preserving"
    assert record["gateways"] == {"igd": True, "pcp": False}
    assert record["form"] == {"router": "AVM FRITZ", "isp": "Example"}


@pytest.mark.parametrize("address, network", [
    ("198.19.7.9", "198.19.7.0/24"),
    ("2001:db8:1234:5678::9", "2001:db8:1234::/48"),
    ("::ffff:198.19.7.9", "198.19.7.0/24"),
    ("fe80::1%eth0", "fe80::/48"),
])
def test_the_network_kept_is_the_24_or_48(address, network):
    """Only the submitter's /24 (IPv4, IPv4-mapped included) or /48 (IPv6) is kept."""
    assert network_of(address) == network


def test_summary_counts_every_view():
    """The summary counts NAT types, behaviours, timeouts, techniques, direct pairs and rankings."""
    records = [record_of(submission(form={"router": "AVM", "isp": "Example"})),
               record_of(submission(form={"router": "avm"}, mapping="address-and-port-dependent",
                                    classic="symmetric", hairpinning=True, binding_lifetime_seconds=200.0)),
               record_of(submission(form={}, classic=None, binding_lifetime_seconds=None, upnp=None)),
               record_of(outcome()), record_of(outcome(local="symmetric", remote="port restricted cone",
                                                       path="turn-udp"))]
    summary = summarize(records, networks=2)
    assert summary["submissions"] == 3 and summary["sessions"] == 2 and summary["networks"] == 2
    assert summary["nat_types"] == [["port restricted cone", 1], ["symmetric", 1], ["unknown", 1]]
    assert summary["mapping"] == [["endpoint-independent", 2], ["address-and-port-dependent", 1]]
    assert summary["hairpinning"] == [["no", 2], ["yes", 1]]
    assert summary["gateways"] == [["igd", 2, 2], ["pcp", 2, 0]]
    assert dict(map(tuple, summary["binding_timeouts"]))["30-60 s"] == 1
    assert dict(map(tuple, summary["binding_timeouts"]))["120-300 s"] == 1
    assert summary["techniques"] == [["turn-udp", 2, 2], ["udp-direct", 2, 2]]
    assert summary["direct_by_pair"] == [["port restricted cone", "symmetric", 2, 1]]
    assert summary["routers"] == [["AVM", 2, 1, 1]]
    assert summary["providers"] == [["Example", 1, 1, 0]]


def test_binding_bins():
    """Binding lifetimes fall in fixed bins, the last open-ended."""
    assert [binding_bin(s) for s in (0, 9.9, 10, 59, 299, 300, 7200)] == [
        "0-10 s", "0-10 s", "10-30 s", "30-60 s", "120-300 s", "≥300 s", "≥300 s"]


def test_summary_of_nothing():
    """No records still give every view, empty or zero."""
    summary = summarize([], networks=0)
    assert summary["submissions"] == 0 and summary["nat_types"] == [] and summary["techniques"] == []
    assert all(n == 0 for _, n in summary["binding_timeouts"])


@pytest.fixture
def accounts(database):
    """A blocking AccountStore in each back end (a real SQLite file, a real PostgreSQL server)."""
    store = AccountStore(database)
    yield store
    store.close()


@pytest.fixture
def store(accounts):
    """The results store, its calls run inline (they fire before they return)."""
    return ResultsStore(AsyncAccounts.inline(accounts))


def now(d: defer.Deferred):
    """The result of a Deferred that has fired (an inline store's)."""
    return d.result


def ids(accounts: AccountStore) -> list[str]:
    return [r["id"] for r in snapshot(accounts)[1]]


def test_store_keeps_and_expires(store, accounts):
    """Records keep a random permanent id, are listed oldest first, summarized, and expire by age, in both back ends."""
    first = now(store.add(record_of(submission()), "198.19.7.0/24", now=1000.0))
    second = now(store.add(record_of(outcome()), "198.19.8.0/24", now=2000.0))
    assert first != second and len(first) == 12
    record = now(store.get(first))
    assert record["mapping"] == "endpoint-independent" and record["received"] == 1000.0
    assert "network" not in record
    assert now(store.get("nope")) is None
    revision, records, networks = snapshot(accounts)
    assert [r["id"] for r in records] == [first, second] and networks == 2
    assert now(store.revision()) == revision
    assert now(store.summary()) == (revision, summarize(records, 2))
    assert now(store.expire(1500.0)) == 1
    assert now(store.revision()) != revision and ids(accounts) == [second]


@pytest.mark.parametrize("version", [3, 4])
def test_an_older_sqlite_store_gains_the_results_table(tmp_path, version):
    """An SQLite account store made at schema v3 or v4 is upgraded in place and can keep results."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_schema("rendezvous.node.schema", f"v{version}.sql"))
    db.execute("INSERT INTO version VALUES (?)", (version,))
    db.commit()
    db.close()
    accounts = AccountStore(path)
    assert accounts.version() == SCHEMA_VERSION == 5
    assert now(ResultsStore(AsyncAccounts.inline(accounts)).add(record_of(outcome()), "198.19.7.0/24", 1.0))
    accounts.close()


def test_a_v4_postgresql_store_gains_the_results_table(postgres_server):
    """A PostgreSQL account store made at schema v4 is upgraded in place and can keep results."""
    made_at_v4(postgres_server)
    accounts = AccountStore(postgres_server.url)
    assert accounts.version() == SCHEMA_VERSION
    assert now(ResultsStore(AsyncAccounts.inline(accounts)).add(record_of(outcome()), "198.19.7.0/24", 1.0))
    accounts.close()


def _schema(package: str, name: str) -> str:
    from importlib import resources
    return resources.files(package).joinpath(name).read_text()


def test_chart_writes_each_count_as_text():
    """Each bar's figure is a text element with an id, so the page's numbers can be read back."""
    svg = bar_chart("nat-types", [("full cone", 3, "3"), ("symmetric", 11, "11")])
    assert svg.startswith("<svg") and 'id="nat-types-value-0"' in svg and 'id="nat-types-value-1"' in svg
    assert ">11<" in svg and ">full cone<" in svg
    assert 'id="nat-types-empty"' in bar_chart("nat-types", [])


def test_charts_are_redrawn_only_when_records_change(store):
    """The view recounts after a change, at most every REBUILD_SECONDS, and draws only for a new count."""
    clock, drawn = task.Clock(), []

    def in_thread(function, *args):
        drawn.append(1)
        return defer.succeed(function(*args))

    view = ResultsView(store, clock, in_thread)
    summary, charts = now(view.charts())
    assert summary["submissions"] == 0 and "nat-types-empty" in charts["nat-types"]
    now(view.charts())
    assert len(drawn) == 1
    store.add(record_of(submission()), "198.19.7.0/24", now=1.0)
    assert now(view.charts())[0]["submissions"] == 0  # counted less than REBUILD_SECONDS ago
    assert now(view.summary())["submissions"] == 0
    clock.advance(REBUILD_SECONDS)
    assert now(view.charts())[0]["submissions"] == 1 and len(drawn) == 2
    clock.advance(REBUILD_SECONDS)
    assert now(view.charts())[0]["submissions"] == 1 and len(drawn) == 2  # nothing changed: no new drawing


def test_waiters_share_one_drawing(store):
    """Requests arriving while the charts are drawn wait for that drawing instead of starting another."""
    pending = defer.Deferred()
    calls = []
    view = ResultsView(store, task.Clock(), lambda function, *args: (calls.append(1), pending)[1])
    first, second = view.charts(), view.charts()
    assert len(calls) == 1 and not first.called
    pending.callback({"nat-types": "<svg/>"})
    assert first.result[1] == second.result[1] == {"nat-types": "<svg/>"}


def test_a_failed_drawing_fails_every_waiter_and_the_next_call_tries_again(store):
    """An error while drawing reaches everyone waiting; the next request draws afresh."""
    pending = defer.Deferred()

    def in_thread(function, *args):
        return pending if not pending.called else defer.succeed(function(*args))

    view = ResultsView(store, task.Clock(), in_thread)
    first, second = view.charts(), view.charts()
    pending.errback(RuntimeError("no fonts"))
    for waiting in (first, second):
        assert waiting.result.check(RuntimeError)
        waiting.addErrback(lambda _: None)
    assert "nat-types" in now(view.charts())[1]


def test_retention_sweeps_old_records(store, accounts):
    """Records older than the retention are removed at start and on every sweep."""
    clock = task.Clock()
    clock.advance(10 * DAY_SECONDS)
    store.add(record_of(outcome()), "198.19.7.0/24", now=clock.seconds() - 8 * DAY_SECONDS)
    store.add(record_of(outcome()), "198.19.7.0/24", now=clock.seconds() - 6.99 * DAY_SECONDS)
    service = retention_service(store, clock, days=7)
    service.startService()
    assert len(ids(accounts)) == 1
    clock.advance(0.02 * DAY_SECONDS + SWEEP_SECONDS)
    assert ids(accounts) == []
    service.stopService()


def test_a_sweep_with_the_database_away_is_logged_and_retried(accounts):
    """A sweep that finds the database away does not stop the retention service; the next one sweeps."""
    clock, switchable = task.Clock(), Switchable(accounts)
    clock.advance(10 * DAY_SECONDS)
    now(ResultsStore(AsyncAccounts.inline(accounts)).add(record_of(outcome()), "198.19.7.0/24", 1.0))
    switchable.down = True
    service = retention_service(ResultsStore(switchable), clock, days=1)
    service.startService()
    assert len(ids(accounts)) == 1
    switchable.down = False
    clock.advance(SWEEP_SECONDS)
    assert ids(accounts) == []
    service.stopService()


@pytest.mark.parametrize("node, url", [
    ("node.example.org", "https://node.example.org/api/results"),
    ("node.example.org:8443", "https://node.example.org:8443/api/results"),
    ("http://198.18.0.1:80", "http://198.18.0.1:80/api/results"),
    ("https://[2001:db8::1]/", "https://[2001:db8::1]/api/results"),
    ("https://node.example.org/custom/path", "https://node.example.org/custom/path"),
])
def test_submit_url(node, url):
    """NODE may be HOST[:PORT] (HTTPS) or a URL whose empty path means /api/results."""
    assert submit_url(node) == url


def test_submit_url_refuses_other_schemes():
    """Only http and https URLs are accepted."""
    with pytest.raises(ValueError):
        submit_url("ftp://node.example.org")


def test_the_pages_answer_503_while_the_database_is_away(accounts):
    """With the account database away, /api/results and /results answer 503 with a reason, not a crash."""
    from twisted.web.test.requesthelper import DummyRequest

    from rendezvous.node.results.pages import RecordApi, ResultsApi, ResultsPage

    away = Switchable(accounts)
    away.down = True
    view = ResultsView(ResultsStore(away), task.Clock())
    for resource_, path in ((ResultsApi(view, task.Clock()), b""), (RecordApi(view, "AAAAAAAAAAAA"), b"x"),
                            (ResultsPage(view), b"")):
        request = DummyRequest([path])
        resource_.render_GET(request)
        assert request.responseCode == 503 and b"unavailable" in b"".join(request.written)


def test_the_last_nat_check_is_remembered_for_a_day(tmp_path):
    """nat-check's saved verdict names this side's NAT while younger than a day; a bad file is ignored."""
    from rendezvous.peer import nat_memory

    nat_memory.save(tmp_path, nat_report(), now=1000.0)
    assert nat_memory.recent(tmp_path, now=1000.0 + nat_memory.MAX_AGE_SECONDS - 1) == {
        "nat_type": "port restricted cone", "mapping": "endpoint-independent",
        "filtering": "address-and-port-dependent"}
    assert nat_memory.recent(tmp_path, now=1000.0 + nat_memory.MAX_AGE_SECONDS) is None
    assert nat_memory.recent(tmp_path, now=999.0) is None  # from the future: the clock moved
    (tmp_path / nat_memory.FILE).write_text("{not json")
    assert nat_memory.recent(tmp_path, now=1000.0) is None
    assert nat_memory.recent(tmp_path / "missing", now=1000.0) is None


def test_a_client_checks_the_form_as_the_node_does():
    """check_form takes what the node's schema takes (a no-break space, any language) and refuses what it
    refuses (control characters, over 64 characters), naming the field."""
    check_form({"router": "Fritz!Box\u00a07590", "isp": "Deutsche Telekom", "model": "光猫 HG8245"})
    for bad in ({"router": "bell\x07"}, {"isp": "x" * 65}):
        with pytest.raises(SubmissionError, match=next(iter(bad))):
            check_form(bad)
