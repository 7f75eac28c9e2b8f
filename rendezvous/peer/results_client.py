"""Sending a field-test submission to a node's ``/api/results`` (docs/NAT_CHECK.md, the field test).

Submissions are opt-in: ``txrendezvous nat-check --submit`` and
``connect(report_outcome=True)`` call this; nothing else does.
"""

from __future__ import annotations

import json
from io import BytesIO
from urllib.parse import urlsplit

from twisted.internet import defer, ssl
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

API_PATH = "/api/results"
TIMEOUT_SECONDS = 15.0
MAX_ANSWER_BYTES = 64 * 1024  # the node answers {"id", "link"} or {"error"}: far less


class SubmitError(Exception):
    """The node refused the submission or could not be reached; the message says why."""


def submit_url(node: str) -> str:
    """The submission URL for NODE: HOST[:PORT] (HTTPS) or an http(s):// URL (its path defaults to /api/results)."""
    if "://" not in node:
        node = f"https://{node}"
    parts = urlsplit(node)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{node!r} is not HOST[:PORT] or an http(s) URL")
    return node if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}{API_PATH}"


class _Answer(Protocol):
    """Collects a response body (at most MAX_ANSWER_BYTES) for the Deferred it was given.

    Twisted's readBody warns (DeprecationWarning) on every Agent response, whose
    transport has no abortConnection; this reads through Response.deliverBody instead.
    """

    def __init__(self, done: defer.Deferred) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER_BYTES:
            if not self.done.called:
                self.done.errback(SubmitError(f"the answer is longer than {MAX_ANSWER_BYTES} bytes"))
            self.transport.loseConnection()
        elif not self.done.called:
            self.parts.append(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _read_answer(response: IResponse) -> defer.Deferred:
    """Fires with the response body; cancelling it (a timeout) closes the connection."""
    protocol = _Answer(defer.Deferred(lambda _: protocol.transport.loseConnection()))
    response.deliverBody(protocol)
    return protocol.done


@implementer(IPolicyForHTTPS)
class _AnyCertificate:
    """Accepts any server certificate: for a development node's self-signed one only."""

    def creatorForNetloc(self, hostname: bytes, port: int):
        return ssl.CertificateOptions(verify=False)


@implementer(IPolicyForHTTPS)
class _TrustFile:
    """Accepts certificates that chain to the PEM file given (a node's self-signed certificate, say)."""

    def __init__(self, ca_file: str) -> None:
        with open(ca_file, "rb") as f:
            self.root = ssl.Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.root)


async def submit(reactor, url: str, document: dict, verify: bool = True, ca_file: str | None = None,
                 timeout_seconds: float = TIMEOUT_SECONDS) -> dict:
    """POST document to url; returns the node's answer ({"id", "link"}).

    Raises SubmitError with the node's reason (400, 429) or the transport's error.
    """
    policy = _AnyCertificate() if not verify else _TrustFile(ca_file) if ca_file else BrowserLikePolicyForHTTPS()
    agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout_seconds)
    body = FileBodyProducer(BytesIO(json.dumps(document, separators=(",", ":")).encode("utf-8")))
    request = agent.request(b"POST", url.encode("ascii"), Headers({b"content-type": [b"application/json"]}), body)
    request.addTimeout(timeout_seconds, reactor)
    try:
        response = await request
        answer = await _read_answer(response).addTimeout(timeout_seconds, reactor)
    except defer.TimeoutError:
        raise SubmitError(f"{url}: no answer in {timeout_seconds:g} s") from None
    except SubmitError as e:
        raise SubmitError(f"{url}: {e}") from None
    except Exception as e:  # connection refused, TLS failure, DNS: all mean "not submitted"
        reasons = getattr(e, "reasons", None)  # ResponseNeverReceived and kin wrap the real failures
        raise SubmitError(f"{url}: " + ("; ".join(r.getErrorMessage() for r in reasons) if reasons else str(e))
                          ) from None
    try:
        value = json.loads(answer)
    except ValueError:
        value = {}
    if response.code != 201 or not isinstance(value, dict) or "link" not in value:
        reason = value.get("error") if isinstance(value, dict) else None
        raise SubmitError(f"{url} answered {response.code}: {reason or answer[:200].decode('utf-8', 'replace')}")
    return value
