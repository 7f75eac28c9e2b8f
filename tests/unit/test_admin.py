"""The admin API: its guard and bounds, and listing and ending allocations of a TURN core on a task.Clock."""

import json

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from rendezvous.node.admin import MAX_LIMIT, AdminResource, LocalView, admin_token, page
from rendezvous.stun import Method
from tests.turn_helpers import code
from tests.unit.test_turn_server import CLIENT, Client, make_server


def call(resource, method=b"GET", path=(b"allocations",), token="t0k", args=None):
    request = DummyRequest(list(path))
    request.method = method
    request.args = args or {}
    if token:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    body = resource.render(request)
    if body is not None and body != 1:  # NOT_DONE_YET is 1
        request.write(body)
    return request.responseCode or 200, json.loads(b"".join(request.written))


def test_token_is_required_and_compared():
    """Without the token, or with another, every admin call is 401."""
    resource = AdminResource(LocalView(Clock()), "t0k", dict)
    assert call(resource, token=None)[0] == 401
    assert call(resource, token="other")[0] == 401
    assert call(resource)[0] == 200


def test_limits_are_bounded_and_pages_slice():
    """limit above the cap is refused; a page holds at most limit items, in id order."""
    resource = AdminResource(LocalView(Clock()), "t0k", dict)
    assert call(resource, args={b"limit": [str(MAX_LIMIT + 1).encode()]})[0] == 400
    assert call(resource, args={b"offset": [b"x"]})[0] == 400
    items = [{"id": f"0-{i:02d}"} for i in range(30, 0, -1)]
    got = page(items, 5, 10)
    assert got["total"] == 30 and [i["id"] for i in got["items"]] == [f"0-{i:02d}" for i in range(6, 16)]


def test_unknown_calls_and_ids():
    """Unknown paths are 404, other methods 405, an id with odd characters is not accepted."""
    resource = AdminResource(LocalView(Clock()), "t0k", dict)
    assert call(resource, path=(b"nothing",))[0] == 404
    assert call(resource, method=b"POST")[0] == 405
    assert call(resource, method=b"DELETE", path=(b"allocations", b"../x"))[0] == 404
    assert call(resource, method=b"DELETE", path=(b"allocations", b"0-abc"))[0] == 404  # no such allocation


def test_token_file_is_made_once_and_private(tmp_path):
    """The token file is created with mode 0600 and reused."""
    first = admin_token(tmp_path)
    assert admin_token(tmp_path) == first and len(first) >= 32
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600


def test_lists_and_ends_allocations_of_a_turn_core():
    """An allocation shows with its user, client, relayed address and lifetime; DELETE frees it (437 after)."""
    clock = Clock()
    clock.advance(1_000_000)
    turn = make_server(clock)
    client = Client(turn)
    client.allocate()
    clock.advance(30)
    resource = AdminResource(LocalView(clock, turn), "t0k", dict)
    status, listed = call(resource)
    assert status == 200 and listed["total"] == 1
    item = listed["items"][0]
    assert (item["user"], item["client"], item["transport"]) == ("alice", f"{CLIENT[0]}:{CLIENT[1]}", "udp")
    assert item["relayed"] == ["198.18.0.1:49152"] and item["age_seconds"] == 30.0
    assert item["lifetime_left_seconds"] == 570.0
    assert call(resource, method=b"DELETE", path=(b"allocations", item["id"].encode()))[0] == 200
    assert not turn.allocations and call(resource)[1]["total"] == 0
    assert code(client.request(Method.REFRESH)) == 437
