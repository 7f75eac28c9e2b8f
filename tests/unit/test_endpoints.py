"""``rendezvous:`` endpoint strings: what clientFromString and serverFromString make of them, and the
clear errors for bad ones (no password on the command line, unknown parameters)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.task import Clock

from rendezvous.peer.endpoints import ClientEndpoint, Login, ServerEndpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "alice.pw"
    path.write_text("s3cret:with=colons\n")
    return path


def test_a_client_string_names_the_node_the_login_and_the_peer(password_file):
    """Every parameter lands in the endpoint's Login; the password comes from the file's first line."""
    endpoint = clientFromString(Clock(), f"rendezvous:host=198.18.0.1:port=443:user=alice:password-file="
                                         f"{password_file}:peer=bob:tls=yes:insecure=yes:state-dir=/var/lib/a:"
                                         f"relay-only=yes:loopback=yes:timeout=12:linger=0")
    assert isinstance(endpoint, ClientEndpoint) and endpoint.peer == "bob" and endpoint.linger_seconds == 0
    assert endpoint.source == Login((("198.18.0.1", 443),), "alice", "s3cret:with=colons", tls=True,
                                    tls_verify=False, options=(("direct_transports", ()), ("include_loopback", True),
                                                               ("state_dir", Path("/var/lib/a")),
                                                               ("timeout_seconds", 12.0)))
    assert "s3cret" not in repr(endpoint.source)


def test_a_server_string_reads_the_password_from_the_environment(monkeypatch):
    """password-env names a variable; allow lists the buddies let in; the default port follows tls."""
    monkeypatch.setenv("BOB_PW", "bob-pw")
    endpoint = serverFromString(Clock(), r"rendezvous:host=node.example:user=bob:password-env=BOB_PW:allow=alice,carol")
    assert isinstance(endpoint, ServerEndpoint) and endpoint.allow == {"alice", "carol"}
    assert endpoint.source == Login((("node.example", 3478),), "bob", "bob-pw")
    tls = serverFromString(Clock(), "rendezvous:host=node.example:user=bob:password-env=BOB_PW:tls=yes")
    assert tls.source.servers == (("node.example", 5349),) and tls.source.tls


@pytest.mark.parametrize("tail, error", [
    ("user=alice:password=hunter2:peer=bob", "no password="),
    ("user=alice:peer=bob", "one of password-file=PATH or password-env=NAME"),
    ("user=alice:password-env=NO_SUCH_VARIABLE_SET:peer=bob", "is empty"),
    ("user=alice:password-file=/nonexistent/pw:peer=bob", "cannot read password-file"),
    ("user=alice:password-env=PW", "needs peer=BUDDY"),
    ("password-env=PW:peer=bob", "needs host=NODE and user=NAME"),
    ("user=alice:password-env=PW:peer=bob:colour=blue", "unknown rendezvous: endpoint parameters: colour"),
    ("user=alice:password-env=PW:peer=bob:tls=maybe", "say yes or no"),
    ("user=alice:password-env=PW:peer=bob:linger=soon", "not a number of seconds"),
    ("user=alice:password-env=PW:peer=bob:port=70000", "out of range"),
    ("bob:user=alice:password-env=PW", "only name=value parameters"),
])
def test_a_bad_client_string_says_what_is_wrong(monkeypatch, tail, error):
    """Each mistake is a ValueError that names it, before any network traffic."""
    monkeypatch.setenv("PW", "pw")
    monkeypatch.delenv("NO_SUCH_VARIABLE_SET", raising=False)
    with pytest.raises(ValueError, match=error):
        clientFromString(Clock(), f"rendezvous:host=127.0.0.1:{tail}")


def test_the_installed_plugin_parses_strings_from_a_fresh_interpreter(tmp_path):
    """The installed twisted/plugins copy (scripts/setup) provides the parsers, twice: once writing
    dropin.cache and once reading it, away from the checkout."""
    code = ("import os\nfrom twisted.internet.endpoints import clientFromString, serverFromString\n"
            "from twisted.internet.task import Clock\nos.environ['PW'] = 'pw'\n"
            "import rendezvous, twisted.plugins\n"
            "checkout = os.environ['CHECKOUT']\n"
            "assert not rendezvous.__file__.startswith(os.path.join(checkout, 'rendezvous')), rendezvous.__file__\n"
            "assert os.path.join(checkout, 'twisted', 'plugins') not in twisted.plugins.__path__\n"
            "c = clientFromString(Clock(), 'rendezvous:host=127.0.0.1:user=a:password-env=PW:peer=b')\n"
            "s = serverFromString(Clock(), 'rendezvous:host=127.0.0.1:user=b:password-env=PW')\n"
            "print(type(c).__name__, type(s).__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CHECKOUT"] = str(ROOT)
    for _ in range(2):
        result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"rerun scripts/setup --test?\n{result.stderr}"
        assert result.stdout.split() == ["ClientEndpoint", "ServerEndpoint"], result
