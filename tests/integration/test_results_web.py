"""The field test on a real node: submissions over HTTP(S), permanent links, the JSON views, bad submissions."""

import http.client
import itertools
import json
import socket
import ssl
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.web import resource, server

from rendezvous.node.results.pages import SUBMIT_BURST
from rendezvous.node.results.view import REBUILD_SECONDS
from rendezvous.peer.results_client import MAX_ANSWER_BYTES, SubmitError, submit
from rendezvous.wire.results import MAX_SUBMISSION_BYTES
from tests.conftest import free_port, start_node, stop_node
from tests.unit.test_results import outcome, submission

pytestmark = pytest.mark.integration

# Each test posts from its own /24 (127.0.N.1), as the node rate-limits per network.
_networks = itertools.count(10)


@pytest.fixture(scope="module")
def results_node(tmp_path_factory):
    """A super node with unprivileged stand-ins for TCP 80 and 443."""
    http_port = free_port()
    https_port = free_port(exclude={http_port})
    node = start_node(tmp_path_factory.mktemp("results"), "--http-port", str(http_port), "--https-port",
                      str(https_port), "--no-relay", alternate=False)
    node.http_port, node.https_port = http_port, https_port
    yield node
    stop_node(node)


def request(node, method: str, path: str, body: bytes | None = None, source: str | None = None, secure=False,
            headers=None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP(S) request to the node's firewall port from a loopback source address."""
    source = source or f"127.0.{next(_networks)}.1"
    if secure:
        context = ssl.create_default_context(cafile=str(node.state_dir / "tls" / "self-signed.pem"))
        connection = http.client.HTTPSConnection("localhost", node.https_port, timeout=10, context=context,
                                                 source_address=(source, 0))
    else:
        connection = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def post(node, document, **kw) -> tuple[int, dict]:
    status, _, body = request(node, "POST", "/api/results", json.dumps(document).encode(), **kw)
    return status, json.loads(body)


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_a_submission_gets_a_permanent_link(results_node, secure):
    """A nat-check submission over either firewall port is stored and its link shows it, without addresses."""
    status, answer = post(results_node, submission(form={"router": "Linksys", "isp": "Example"}), secure=secure)
    assert status == 201
    scheme, port = ("https", results_node.https_port) if secure else ("http", results_node.http_port)
    host = "localhost" if secure else "127.0.0.1"
    assert answer["link"] == f"{scheme}://{host}:{port}/results/{answer['id']}"
    status, headers, page = request(results_node, "GET", f"/results/{answer['id']}", secure=secure)
    assert status == 200 and headers["content-type"].startswith("text/html")
    text = page.decode()
    assert "port restricted cone" in text and "Linksys" in text and "endpoint-independent" in text
    assert "192.168.1.20" not in text and "198.19.7.9" not in text
    status, _, record = request(results_node, "GET", f"/api/results/{answer['id']}")
    record = json.loads(record)
    assert status == 200 and record["id"] == answer["id"] and record["form"]["router"] == "Linksys"
    assert "network" not in record and "198.19.7" not in json.dumps(record)


def test_the_views_count_what_was_stored(results_node):
    """/api/results counts the stored submissions and outcomes; /results shows the same numbers."""
    _, _, before = request(results_node, "GET", "/api/results")
    before = json.loads(before)
    punched = [{"technique": "tcp-punch", "outcome": "selected", "duration_ms": 420.0}]
    assert post(results_node, outcome(path="tcp-punch", attempts=punched))[0] == 201
    assert post(results_node, submission(classic="symmetric", form={"router": "Zyxel"}))[0] == 201
    after = api_results(results_node, lambda found: found["sessions"] > before["sessions"])
    assert after["submissions"] == before["submissions"] + 1 and after["sessions"] == before["sessions"] + 1
    assert dict(map(tuple, after["nat_types"]))["symmetric"] == dict(map(tuple, before["nat_types"])).get(
        "symmetric", 0) + 1
    page = results_page(results_node, lambda page: b"Zyxel" in page)
    assert b"tcp-punch" in page and b"<svg" in page


def api_results(node, ready, seconds: float = REBUILD_SECONDS * 3) -> dict:
    """/api/results once ready(summary) holds: the views are recounted at most every REBUILD_SECONDS."""
    deadline = time.monotonic() + seconds
    while True:
        summary = json.loads(request(node, "GET", "/api/results")[2])
        if ready(summary) or time.monotonic() > deadline:
            return summary
        time.sleep(0.5)


def results_page(node, ready, seconds: float = REBUILD_SECONDS * 3) -> bytes:
    """/results once ready(page) holds: the charts are redrawn at most every REBUILD_SECONDS."""
    deadline = time.monotonic() + seconds
    while True:
        status, _, page = request(node, "GET", "/results")
        assert status == 200
        if ready(page) or time.monotonic() > deadline:
            return page
        time.sleep(0.5)


def test_an_unknown_link_is_404(results_node):
    """A link to no result answers 404 as a page and as JSON."""
    assert request(results_node, "GET", "/results/AAAAAAAAAAAA")[0] == 404
    assert request(results_node, "GET", "/results/..%2Fetc")[0] == 404
    status, _, body = request(results_node, "GET", "/api/results/AAAAAAAAAAAA")
    assert status == 404 and json.loads(body)["error"] == "no such result"


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (json.dumps({"kind": "nat-check", "version": 1, "report": {"mapping": 5}}).encode(), "report"),
    (json.dumps({"kind": "x"}).encode(), "kind must be one of"),
    (json.dumps({**outcome(), "path": ["udp"]}).encode(), "path"),
])
def test_a_bad_submission_gets_400_with_the_reason(results_node, body, reason):
    """Malformed JSON and wrong types are refused with 400 and the reason, and nothing is stored."""
    _, _, before = request(results_node, "GET", "/api/results")
    status, _, answer = request(results_node, "POST", "/api/results", body)
    assert status == 400 and reason in json.loads(answer)["error"]
    assert request(results_node, "GET", "/api/results")[2] == before


def test_an_oversized_submission_gets_413_by_its_length(results_node):
    """A body declared past the bound is refused with 413 before it is read."""
    status, _, _ = request(results_node, "POST", "/api/results", b"{" + b" " * MAX_SUBMISSION_BYTES + b"}")
    assert status == 413


def test_an_oversized_chunked_submission_is_cut_off(results_node):
    """A chunked body that grows past the bound gets 413 and the connection closes, however much is sent."""
    with socket.create_connection(("127.0.0.1", results_node.http_port), timeout=10,
                                  source_address=(f"127.0.{next(_networks)}.1", 0)) as s:
        s.sendall(b"POST /api/results HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (4096, b" " * 4096)
        answer = b""
        try:
            for _ in range(64):  # at most 256 KiB; the node closes long before
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while data := s.recv(4096):
                answer += data
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_flood_from_one_network_gets_429(results_node):
    """Past the burst, submissions from one /24 get 429 with Retry-After; another /24 is unaffected."""
    network = next(_networks)
    codes = [post(results_node, outcome(), source=f"127.0.{network}.1")[0] for _ in range(SUBMIT_BURST + 3)]
    assert codes[:SUBMIT_BURST] == [201] * SUBMIT_BURST and set(codes[SUBMIT_BURST:]) == {429}
    status, headers, _ = request(results_node, "POST", "/api/results", json.dumps(outcome()).encode(),
                                 source=f"127.0.{network}.2")
    assert status == 429 and headers["retry-after"] == "30"  # the same /24 from another host
    assert post(results_node, outcome())[0] == 201


def test_nat_check_submit_prints_the_link(results_node, tmp_path):
    """`txrendezvous nat-check --submit` sends its report and prints the permanent link that then shows it."""
    stun = start_node(tmp_path, "--no-relay")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rendezvous.cli.main", "nat-check", f"{stun.ip}:{stun.port}", "--json",
             "--lifetime-max-seconds", "0", "--no-upnp", "--echo-port", "0", "--tcp-fallback-port", "0",
             "--submit", f"https://localhost:{results_node.https_port}",
             "--ca-file", str(results_node.state_dir / "tls" / "self-signed.pem"), "--router", "Netgear",
             "--connection", "cable"],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        stop_node(stun)
    assert done.returncode == 0, done.stderr
    link = json.loads(done.stdout)["submission"]["link"]
    record_id = link.rsplit("/", 1)[1]
    _, _, record = request(results_node, "GET", f"/api/results/{record_id}")
    record = json.loads(record)
    assert record["form"] == {"router": "Netgear", "connection": "cable"} and record["nat_type"] == "open internet"


def test_nat_check_says_when_a_submission_is_refused(results_node, tmp_path):
    """A refused submission (no such node here) exits 4 with the reason, after printing the report."""
    stun = start_node(tmp_path, "--no-relay")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rendezvous.cli.main", "nat-check", f"{stun.ip}:{stun.port}",
             "--lifetime-max-seconds", "0", "--no-upnp", "--echo-port", "0", "--tcp-fallback-port", "0",
             "--submit", f"http://127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        stop_node(stun)
    assert done.returncode == 4 and "NAT check against" in done.stdout
    assert "not submitted" in done.stderr and "refused" in done.stderr


@pytest.mark.filterwarnings("error::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_submit_reads_the_answer_and_the_refusal(results_node):
    """submit() returns a real node's answer and raises its refusal's reason, with no DeprecationWarning."""
    url = f"https://localhost:{results_node.https_port}/api/results"
    ca_file = str(results_node.state_dir / "tls" / "self-signed.pem")
    answer = await submit(reactor, url, outcome(), ca_file=ca_file)
    assert answer["link"].endswith(f"/results/{answer['id']}")
    with pytest.raises(SubmitError, match="answered 400: .*kind"):
        await submit(reactor, url, {"kind": "nonsense"}, ca_file=ca_file)


class _Answering(resource.Resource):
    """Answers every POST with 201 and a body of the given size, or with part of one and then nothing."""

    isLeaf = True

    def __init__(self, size: int, hang: bool = False) -> None:
        super().__init__()
        self.size, self.hang, self.finished = size, hang, defer.Deferred()

    def render_POST(self, request):
        request.setResponseCode(201)
        request.notifyFinish().chainDeferred(self.finished)
        if not self.hang:
            return b"x" * self.size
        request.setHeader(b"content-length", str(self.size).encode())
        request.write(b"{")
        return server.NOT_DONE_YET


async def _submit_to(answering: _Answering, **kw):
    port = reactor.listenTCP(0, server.Site(answering), interface="127.0.0.1")
    try:
        return await submit(reactor, f"http://127.0.0.1:{port.getHost().port}/api/results", outcome(), **kw)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_submit_refuses_an_answer_past_its_bound():
    """An answer longer than MAX_ANSWER_BYTES is a SubmitError and its connection is closed, not read on."""
    answering = _Answering(MAX_ANSWER_BYTES * 4)
    with pytest.raises(SubmitError, match=f"longer than {MAX_ANSWER_BYTES} bytes"):
        await _submit_to(answering)
    await answering.finished.addErrback(lambda _: None)


@pytest_twisted.ensureDeferred
async def test_submit_gives_up_on_a_body_that_stops_and_closes_the_connection():
    """A body that stops half way is a SubmitError after the timeout, and the server sees the connection closed."""
    answering = _Answering(100, hang=True)
    with pytest.raises(SubmitError, match="no answer in 0.5 s"):
        await _submit_to(answering, timeout_seconds=0.5)
    with pytest.raises(ConnectionDone):
        await answering.finished.addTimeout(5, reactor)
