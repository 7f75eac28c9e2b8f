"""JSON log records: fields kept, secrets redacted, one object per line."""

import io
import json

import pytest
from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel

from relay.config import ConfigError, parse_log_format
from rendezvous.node.logs import REDACTED, JsonLogObserver, TopService, record


def test_fields_are_kept_and_secret_fields_redacted_in_text_too():
    """A field named like a secret is written as [redacted], in its own key and in the text."""
    event = {"log_format": "login {user} with {password} from {client}", "log_level": LogLevel.info,
             "log_namespace": "t", "log_time": 1.0, "user": "dave", "password": "hunter2",
             "client": ("127.0.0.1", 5000), "nonce_secret": b"k"}
    out = record(event)
    assert out["text"] == f"login dave with {REDACTED} from ('127.0.0.1', 5000)"
    assert out["password"] == out["nonce_secret"] == REDACTED
    assert out["client"] == "127.0.0.1:5000" and out["user"] == "dave" and out["level"] == "info"
    assert "hunter2" not in json.dumps(out)


def test_observer_writes_one_json_object_per_line_with_failures():
    """Every event, a failure included, becomes exactly one parseable line."""
    stream = io.StringIO()
    log = Logger(observer=JsonLogObserver(stream), namespace="unit")
    log.info("plain {n}", n=1)
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("boom {what}", what=object())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["n"] == 1 and first["text"] == "plain 1"
    assert second["level"] == "critical" and "ZeroDivisionError" in second["failure"]


def test_json_top_service_sets_the_applications_observer():
    """--log-format json gives twistd's application an ILogObserver; text leaves it alone."""
    for log_format, expected in (("json", True), ("text", False)):
        application = service.Application("t")
        TopService(log_format).setServiceParent(application)
        assert (application.getComponent(ILogObserver, None) is not None) is expected


def test_log_format_values():
    """Only text and json are accepted."""
    assert parse_log_format("json") == "json"
    with pytest.raises(ConfigError):
        parse_log_format("xml")
