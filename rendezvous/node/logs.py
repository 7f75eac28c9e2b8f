"""Log formats: twistd's text lines, or one JSON object per event.

``--log-format json`` (on ``twistd relay`` and ``twistd rendezvous``) makes
the top service install ``JsonLogObserver`` as its application's
``ILogObserver``, the component twistd asks for when no ``--logger`` is
given; ``twistd --logger rendezvous.node.logs.json_observer`` does the same for
any twistd command. Each line holds the time, level, namespace, the
formatted text and the event's own fields (``client``, ``session``,
``allocation``, ``user``, ...), so a log shipper can index them.

The suite never logs passwords, keys, nonces or secrets; as a second line of
defence a field whose name says it holds one is written as ``"[redacted]"``,
in the text as well.
"""

import json
import re
import sys

from twisted.application import service
from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

from rendezvous.stun.addresses import address_text

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"pass|secret|key|nonce|token|credential|integrity|authorization", re.I)
# Keys of Twisted's legacy events that repeat what the record already says.
_LEGACY_KEYS = {"message", "format", "isError", "time", "why", "failure"}


def _plain(value):
    """A JSON-friendly copy of a field value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
            return address_text(value)
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def record(event: dict) -> dict:
    """The JSON object written for one event, secrets redacted."""
    fields = {
        key: REDACTED if _SECRET_NAME.search(key) else value
        for key, value in event.items()
        if not key.startswith("log_") and key not in _LEGACY_KEYS
    }
    safe = dict(event, **fields)
    level = event.get("log_level")
    out = {
        "time": event.get("log_time"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace"),
        "text": formatEvent(safe),
    }
    out.update((key, _plain(value)) for key, value in fields.items())
    failure = event.get("log_failure")
    if failure is not None:
        out["failure"] = failure.getTraceback()
    return out


@implementer(ILogObserver)
class JsonLogObserver:
    """Writes one JSON object per event and line, each line in one write."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: dict) -> None:
        self.stream.write(json.dumps(record(event), default=str) + "\n")
        self.stream.flush()


def json_observer() -> JsonLogObserver:
    """For ``twistd --logger rendezvous.node.logs.json_observer``: JSON to standard output."""
    return JsonLogObserver()


class TopService(service.MultiService):
    """The top service of a twistd command; with ``json`` it chooses the log observer.

    twistd starts logging after makeService, with the ``ILogObserver``
    component of the application this service is added to (unless
    ``--logger`` names one), so the choice is made here.
    """

    def __init__(self, log_format: str = "text") -> None:
        super().__init__()
        self.log_format = log_format

    def setServiceParent(self, parent) -> None:
        if self.log_format == "json" and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, json_observer())
        super().setServiceParent(parent)
