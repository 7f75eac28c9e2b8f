"""Headless Chromium's WebRTC stack relays data-channel traffic through a TURN server.

Two RTCPeerConnections in one page (``webrtc/relay_pair.html``), both with
``iceTransportPolicy: "relay"``, reach each other only through TURN relayed
transport addresses (RFC 8656), with the client leg over UDP, TCP (RFC 8656
section 3.1) and TLS. A loopback HTTP server in this process serves the page
and its config and reads the result the page POSTs back; no DevTools protocol.

The ``turn_server`` fixture runs our ``twistd relay``: it yields the ICE server
URLs (``urls_udp``, ``urls_tcp``, ``urls_tls``), ``username``, ``credential``
and ``log()`` (text shown on failure). The relay's TLS listener presents its
generated self-signed certificate; Chromium takes it under
``--ignore-certificate-errors``, which its TURNS client honours (without the
flag the TLS allocation fails with error 701).
"""

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TURN_PASSWORD, TURN_USER, Node, stop_process

pytestmark = pytest.mark.interop

PAGE = Path(__file__).resolve().parent / "webrtc" / "relay_pair.html"
LOOPBACK = "127.0.0.1"
MESSAGES = 20
PAGE_TIMEOUT_SECONDS = 20.0
RESULT_TIMEOUT_SECONDS = 45.0

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio",
    # The TURN server's TLS listener presents a self-signed certificate.
    "--ignore-certificate-errors",
    # Lets WebRTC use the loopback interface on a host that has no other.
    "--allow-loopback-in-peer-connection",
    # Keep every packet on loopback: no DNS look-ups (the page and the TURN
    # URLs are IP literals) and no mDNS announcements of local addresses.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--enable-logging=stderr",
)


@dataclass
class RelayUnderTest:
    """Our ``twistd relay`` as the page sees it: ICE server URLs and a credential."""

    node: Node
    urls_udp: str
    urls_tcp: str
    urls_tls: str
    username: str
    credential: str

    def log(self) -> str:
        return self.node.log()


@pytest.fixture(scope="module")
def turn_server(relay_node):
    """Our relay with its generated self-signed certificate (Chromium runs with --ignore-certificate-errors)."""
    yield RelayUnderTest(
        node=relay_node,
        urls_udp=f"turn:{LOOPBACK}:{relay_node.port}?transport=udp",
        urls_tcp=f"turn:{LOOPBACK}:{relay_node.port}?transport=tcp",
        urls_tls=f"turns:{LOOPBACK}:{relay_node.tls_port}?transport=tcp",
        username=TURN_USER,
        credential=TURN_PASSWORD,
    )


class _PageServer(http.server.ThreadingHTTPServer):
    """Serves the test page and its config on loopback and keeps the one result it POSTs."""

    daemon_threads = True

    def __init__(self, config: dict):
        super().__init__((LOOPBACK, 0), _PageHandler)
        self.config = config
        self.result: dict | None = None
        self.result_arrived = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}/"


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """GET / is the page, GET /config its ICE servers; POST /result is its report."""

    def do_GET(self):
        if self.path == "/":
            self._reply(200, "text/html; charset=utf-8", PAGE.read_bytes())
        elif self.path == "/config":
            self._reply(200, "application/json", json.dumps(self.server.config).encode())
        else:
            self._reply(404, "text/plain", b"not found")

    def do_POST(self):
        if self.path != "/result":
            self._reply(404, "text/plain", b"not found")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.result = json.loads(body)
        self.server.result_arrived.set()
        self._reply(204, "text/plain", b"")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def run_relay_pair(url: str, server, directory: Path) -> dict:
    """Load the page in headless Chromium with one TURN URL; return the JSON it POSTs back.

    Chromium runs with a fresh profile and HOME under directory and is ended
    once the page has reported or RESULT_TIMEOUT_SECONDS have passed.
    """
    config = {
        "iceServers": [{"urls": [url], "username": server.username, "credential": server.credential}],
        "messages": MESSAGES,
        "timeoutMs": int(PAGE_TIMEOUT_SECONDS * 1000),
    }
    pages = _PageServer(config)
    serving = threading.Thread(target=pages.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    home = directory / "home"
    home.mkdir()
    log_path = directory / "chromium.log"
    args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={directory / 'profile'}", pages.url]
    try:
        with open(log_path, "wb") as log:
            browser = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, HOME=str(home)), cwd=directory, start_new_session=True,
            )
        try:
            arrived = pages.result_arrived.wait(RESULT_TIMEOUT_SECONDS)
        finally:
            _stop_browser(browser)
    finally:
        pages.shutdown()
        pages.server_close()
        serving.join(5)
    if not arrived:
        raise AssertionError(
            f"no result from the page in {RESULT_TIMEOUT_SECONDS} s\n"
            f"--- chromium log ---\n{log_path.read_text(errors='replace')[-8000:]}"
        )
    return pages.result


def _stop_browser(browser: subprocess.Popen) -> None:
    """End the Chromium we started, then any of its own process group that lingers."""
    stop_process(browser)
    try:
        os.killpg(browser.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
# Named as RTCIceCandidateStats.relayProtocol names how a client reaches its TURN server.
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_data_channel_through_relay(turn_server, tmp_path, transport):
    """Two relay-only Chromium peers echo data-channel messages through the TURN server."""
    url = getattr(turn_server, f"urls_{transport}")
    result = run_relay_pair(url, turn_server, tmp_path)
    diagnosis = f"{json.dumps(result, indent=1)}\n--- TURN server log ---\n{turn_server.log()[-8000:]}"
    assert result["ok"], diagnosis
    assert len(result["sent"]) == MESSAGES, diagnosis
    assert result["echoed"] == result["sent"], diagnosis
    pc1, pc2 = result["pc1"], result["pc2"]
    assert pc1 is not None and pc2 is not None, diagnosis
    for pair in (pc1, pc2):
        assert pair["local"]["candidateType"] == "relay", diagnosis
        assert pair["remote"]["candidateType"] == "relay", diagnosis
        assert pair["local"]["relayProtocol"] == transport, diagnosis
        assert pair["local"]["url"] == url, diagnosis
        assert pair["local"]["address"] == LOOPBACK, diagnosis
    assert _endpoint(pc1["remote"]) == _endpoint(pc2["local"]), diagnosis
    assert _endpoint(pc2["remote"]) == _endpoint(pc1["local"]), diagnosis


def _endpoint(candidate: dict) -> tuple[str, int]:
    """The transport address of a candidate from the page's report."""
    return candidate["address"], candidate["port"]
