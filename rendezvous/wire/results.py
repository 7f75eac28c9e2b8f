"""The field-test submissions a peer may send a node (docs/PROTOCOL.md, results).

Two kinds, both opt-in: ``nat-check`` (a ``txrendezvous nat-check`` report
plus the lecture's form: router brand, model, firmware, ISP, connection) and
``outcome`` (what one ``connect()`` tried and which path won). They travel as
one JSON object in an HTTPS POST to ``/api/results``; the node checks each
against the JSON Schemas below (Draft 2020-12, through ``jsonschema``) before
anything reaches its database. A report may carry fields a newer nat-check
added; the node keeps only the fields named here.
"""

from __future__ import annotations

import json
from functools import cache


SUBMISSION_VERSION = 1
MAX_SUBMISSION_BYTES = 16 * 1024
MAX_FORM_CHARS = 64
MAX_TECHNIQUES = 32

FORM_FIELDS = ("router", "model", "firmware", "isp", "connection")
MAPPING_WORDS = ["endpoint-independent", "address-dependent", "address-and-port-dependent"]
OUTCOMES = ["succeeded", "failed", "selected", "not-selected", "skipped"]

_TEXT = {"type": "string", "maxLength": MAX_FORM_CHARS, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}
_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"}
_FLAG = {"type": ["boolean", "null"]}
_BEHAVIOUR = {"enum": [*MAPPING_WORDS, None]}
_SECONDS = {"type": ["number", "null"], "minimum": 0, "maximum": 86400}
_PORT = {"type": "integer", "minimum": 0, "maximum": 65535}

# What the node keeps of a nat-check report (rendezvous.peer.nat_check.report).
NAT_FIELDS = {
    "nat_type": {"type": ["string", "null"], "maxLength": 40},
    "udp_blocked": _FLAG,
    "nat_present": _FLAG,
    "rfc5780": _FLAG,
    "mapping": _BEHAVIOUR,
    "filtering": _BEHAVIOUR,
    "port_preservation": _FLAG,
    "hairpinning": _FLAG,
    "binding_lifetime_seconds": _SECONDS,
    "binding_lifetime_max_seconds": _SECONDS,
    "tcp_mapping": _BEHAVIOUR,
    "tcp_port_preservation": _FLAG,
    "mapped_address_rewritten": _FLAG,
    "alg": _FLAG,
}
_ALLOCATION = {
    "type": "object",
    "properties": {
        "pattern": {"enum": ["preserving", "sequential", "random", None]},
        "delta": {"type": ["integer", "null"], "minimum": -65535, "maximum": 65535},
        "prediction": {"enum": ["easy", "hard", None]},
        "samples": {"type": "array", "maxItems": 64, "items": {
            "type": "array", "prefixItems": [_PORT, _PORT], "minItems": 2, "maxItems": 2}},
    },
}
_GATEWAY = {"type": "object", "required": ["answered"], "properties": {"answered": {"type": "boolean"}}}
NAT_REPORT = {
    "type": "object",
    "required": ["nat_type", "mapping", "filtering"],
    "properties": {
        **NAT_FIELDS,
        "port_allocation": _ALLOCATION,
        "upnp": {"type": ["object", "null"], "maxProperties": 8, "propertyNames": {"pattern": "^[a-z0-9-]{1,16}$"},
                 "additionalProperties": _GATEWAY},
    },
}
NAT_CHECK_SCHEMA = {
    "type": "object",
    "required": ["kind", "version", "report"],
    "additionalProperties": False,
    "properties": {
        "kind": {"const": "nat-check"},
        "version": {"const": SUBMISSION_VERSION},
        "report": NAT_REPORT,
        "form": {"type": "object", "additionalProperties": False,
                 "properties": {name: _TEXT for name in FORM_FIELDS}},
    },
}

# One side's NAT as the peer knows it: the nat-check words, any may be unknown.
_SIDE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"nat_type": NAT_FIELDS["nat_type"], "mapping": _BEHAVIOUR, "filtering": _BEHAVIOUR},
}
OUTCOME_SCHEMA = {
    "type": "object",
    "required": ["kind", "version", "local", "remote", "attempts", "path"],
    "additionalProperties": False,
    "properties": {
        "kind": {"const": "outcome"},
        "version": {"const": SUBMISSION_VERSION},
        "local": _SIDE,
        "remote": _SIDE,
        "attempts": {"type": "array", "maxItems": MAX_TECHNIQUES, "items": {
            "type": "object",
            "required": ["technique", "outcome", "duration_ms"],
            "additionalProperties": False,
            "properties": {
                "technique": _NAME,
                "outcome": {"enum": OUTCOMES},
                "duration_ms": {"type": "number", "minimum": 0, "maximum": 600000},
            },
        }},
        "path": {"anyOf": [_NAME, {"type": "null"}]},
    },
}
KINDS = {"nat-check": NAT_CHECK_SCHEMA, "outcome": OUTCOME_SCHEMA}


@cache
def _validator(schema_name: str):
    """The Draft 2020-12 validator of KINDS[name] (or "form"), made when first needed: jsonschema costs
    ~90 ms to import, which a client that only reports outcomes would pay at every start."""
    from jsonschema import Draft202012Validator

    schema = NAT_CHECK_SCHEMA["properties"]["form"] if schema_name == "form" else KINDS[schema_name]
    return Draft202012Validator(schema)


def _first_error(schema_name: str, document):
    from jsonschema.exceptions import best_match

    return best_match(_validator(schema_name).iter_errors(document))


class SubmissionError(ValueError):
    """A refused submission; the message says why (the node answers 400 with it)."""


def parse_submission(body: bytes) -> dict:
    """The checked submission in body; raises SubmissionError naming the first problem."""
    if len(body) > MAX_SUBMISSION_BYTES:
        raise SubmissionError(f"submission is {len(body)} bytes; at most {MAX_SUBMISSION_BYTES}")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SubmissionError(f"not JSON: {e}") from None
    if not isinstance(document, dict):
        raise SubmissionError("not a JSON object")
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise SubmissionError(f"kind must be one of {sorted(KINDS)}")
    error = _first_error(kind, document)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise SubmissionError(f"{where}: {error.message[:200]}")
    return document


def check_form(form: dict[str, str]) -> None:
    """Raise SubmissionError unless the form fields pass the node's own check (the schema's), so a client
    refuses what the node would, and nothing else."""
    error = _first_error("form", form)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "form"
        raise SubmissionError(f"{where}: at most {MAX_FORM_CHARS} characters, no control characters")


def nat_check_submission(report: dict, form: dict[str, str] | None = None) -> dict:
    """A nat-check submission from a report's ``to_dict()``, with the form fields given."""
    document = {"kind": "nat-check", "version": SUBMISSION_VERSION, "report": report}
    if form:
        document["form"] = {name: value for name, value in form.items() if value}
    return document
