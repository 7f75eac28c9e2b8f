"""docs/PROTOCOL.md against the signaling code: every op, error code and limit the node uses is documented, and
the document names nothing the node does not do."""

import ast
import importlib
import re
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from rendezvous.node.accounts import AccountStore
from rendezvous.node.accounts_async import AsyncAccounts
from rendezvous.node.signaling import SignalingConfig, SignalingNode

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
# Where the node speaks signaling: the core, its adapters, and the account rules it answers with.
SOURCES = sorted((ROOT / "rendezvous" / "node" / "signaling").glob("*.py")) + [
    ROOT / "rendezvous" / "node" / "signaling_protocol.py", ROOT / "rendezvous" / "node" / "accounts.py"]
# Modules whose numeric constants are all signaling limits, and the few taken from elsewhere.
LIMIT_MODULES = ["rendezvous.node.signaling.core", "rendezvous.node.signaling.session",
                 "rendezvous.node.signaling.login", "rendezvous.node.signaling.buddies",
                 "rendezvous.node.signaling.connects", "rendezvous.node.signaling_protocol",
                 "rendezvous.wire.frames", "rendezvous.wire.streams", "rendezvous.wire.host_entries"]
LIMITS_ELSEWHERE = {"rendezvous.node.accounts": ["MAX_BUDDIES", "MIN_PASSWORD_CHARS", "BUDDY_PAGE"]}
NOT_LIMITS = {"MAGIC", "VERSION"}  # the frame header, documented in its own diagram


def section(title: str) -> str:
    start = DOC.index(f"### {title}\n")
    end = DOC.find("\n### ", start + 1)
    return DOC[start:end if end != -1 else None]


def first_column(title: str) -> list[str]:
    """The backticked names in the first column of the table in section title."""
    names = []
    for line in section(title).splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([^`]+)`", line.split("|")[1])
    return names


def literals() -> tuple[set, set]:
    """(error codes, ops) the node's code writes: SignalingError/AccountPolicyError codes and
    {"code": ...}, {"op": ...} literals."""
    codes, ops = set(), set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("SignalingError",
                                                                                  "AccountPolicyError"):
                if isinstance(node.args[0], ast.Constant):  # else passed on, e.g. an AccountPolicyError's
                    codes.add(node.args[0].value)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                        if key.value == "code":
                            codes.add(value.value)
                        elif key.value == "op":
                            ops.add(value.value)
    return codes, ops


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    store = AccountStore(tmp_path_factory.mktemp("doc") / "accounts.sqlite")
    yield SignalingNode(AsyncAccounts.inline(store), Clock(), SignalingConfig())
    store.close()


def test_requests_table_is_the_dispatch_table(core):
    """The requests table lists exactly the ops the node dispatches, each with the right 'before login'."""
    rows = {}
    for line in section("Requests and replies").splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.split("|")]
            rows[cells[1].strip("`")] = cells[2]
    assert set(rows) == set(core._ops)
    assert {op for op, before in rows.items() if before == "yes"} == core._open_ops


def test_error_codes_table_is_every_code_the_node_sends():
    """The error-code table lists exactly the codes in the node's code."""
    codes, _ = literals()
    assert set(first_column("Error codes")) == codes


def test_frames_the_node_sends_are_documented(core):
    """Every op the node writes in a frame is in the table of frames it sends, and that table has no other."""
    _, ops = literals()
    assert set(first_column("Frames the node sends")) == ops


def test_limits_table_matches_the_constants():
    """Every signaling limit constant is in the limits table with its value, and each row names a real constant."""
    documented = {}
    for line in section("Limits, timeouts and thresholds").splitlines():
        match = re.match(r"\| `([A-Z_]+)` \| ([0-9.]+) \|", line)
        if match:
            documented[match.group(1)] = float(match.group(2))
    actual = {}
    for name in LIMIT_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.isupper() and attr not in NOT_LIMITS and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                actual[attr] = value
    for name, attrs in LIMITS_ELSEWHERE.items():
        module = importlib.import_module(name)
        actual.update({attr: getattr(module, attr) for attr in attrs})
    assert documented == {name: float(value) for name, value in actual.items()}
