"""coturn's client tools (``turnutils_stunclient``, ``turnutils_natdiscovery``) against our node.

RFC 8489 Binding and RFC 5780 §4.3 (mapping), §4.4 (filtering), §4.6 (mapping
lifetime, which exercises RESPONSE-PORT), CHANGE-REQUEST and PADDING, as
coturn 4.6's own clients send them. Both tools are UDP only (their getopt
strings are "p:L:f" and "mftcPHp:L:l:A:T:"), so TCP and TLS are covered by
``test_aioice.py`` instead. coturn's ``-H`` (hairpinning) test is left out:
after the first Binding it only talks to itself.

coturn prints the first address line of a run twice (a quirk of its logger,
which coturn's own server triggers too); the parser keeps the first.
"""

import re
import shutil
import subprocess

import pytest

from tests.conftest import free_port

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not (shutil.which("turnutils_stunclient") and shutil.which("turnutils_natdiscovery")),
        reason="coturn's turnutils_stunclient/turnutils_natdiscovery are not installed "
        "(apt-get install coturn); CI installs them",
    ),
]

TOOL_TIMEOUT_SECONDS = 30

_ADDRESS = r"(\d+\.\d+\.\d+\.\d+):(\d+)"
_FIELDS = {
    "origin": re.compile(r"Response origin: : " + _ADDRESS),
    "other": re.compile(r"Other addr: : " + _ADDRESS),
    "reflexive": re.compile(r"UDP reflexive addr:? " + _ADDRESS),
    "local": re.compile(r"Local addr: : " + _ADDRESS),
}
_VERDICT = re.compile(r"^(No NAT!.*|NAT with .*)$", re.M)


def run_tool(*args: str) -> str:
    """Run a coturn client tool to completion and return its stdout."""
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def responses(output: str) -> dict[int, dict[str, tuple[str, int]]]:
    """Each "RFC 5780 response N" block as {field: (ip, port)}, first occurrence of each field."""
    blocks = {}
    for number, body in re.findall(r"RFC 5780 response (\d+)\n(.*?)(?=\n=====|\Z)", output, re.S):
        fields = {}
        for name, pattern in _FIELDS.items():
            found = pattern.search(body)
            if found:
                fields[name] = (found[1], int(found[2]))
        blocks[int(number)] = fields
    return blocks


def verdicts(output: str) -> list[str]:
    """The discovery results natdiscovery prints between ===== rules, in order."""
    return _VERDICT.findall(output)


# -- turnutils_stunclient ------------------------------------------------------


@pytest.fixture(scope="module")
def stunclient(node):
    """One run of turnutils_stunclient bound to 127.0.0.1: its parsed responses."""
    output = run_tool("turnutils_stunclient", "-L", node.ip, "-p", str(node.port), node.ip)
    assert "error" not in output and "timeout" not in output, output
    return responses(output)


def test_stunclient_reports_our_mapping_and_rfc5780_addresses(stunclient, node):
    """A plain Binding returns the client's 127.0.0.1 mapping, our origin and the alternate as OTHER-ADDRESS."""
    first = stunclient[1]
    ip, port = first["reflexive"]
    assert ip == "127.0.0.1"
    assert 0 < port < 65536
    assert first["origin"] == (node.ip, node.port)
    assert first["other"] == (node.alt_ip, node.alt_port)


def test_stunclient_change_request_with_response_port(stunclient, node):
    """CHANGE-REQUEST(ip, port) with RESPONSE-PORT is answered from the alternate to the named port."""
    # coturn sends this one from the first socket with RESPONSE-PORT =
    # first port + 1 and reads it on a new socket bound to that port.
    second = stunclient[2]
    assert second["origin"] == (node.alt_ip, node.alt_port)
    assert second["other"] == (node.alt_ip, node.alt_port)
    assert second["reflexive"] == stunclient[1]["reflexive"]


def test_stunclient_change_request_with_padding(stunclient, node):
    """CHANGE-REQUEST(ip, port) with 1500 bytes of PADDING is answered from the alternate."""
    third = stunclient[3]
    assert third["origin"] == (node.alt_ip, node.alt_port)
    ip, port = stunclient[1]["reflexive"]
    assert third["reflexive"] == (ip, port + 1)


def test_stunclient_without_alternate_sees_no_rfc5780(plain_node):
    """A node without --alt-ip sends no OTHER-ADDRESS, so coturn stops after the plain Binding."""
    output = run_tool("turnutils_stunclient", "-p", str(plain_node.port), plain_node.ip)
    assert "RFC 5780 response" not in output
    found = _FIELDS["reflexive"].search(output)
    assert found and found[1] == "127.0.0.1", output


# -- turnutils_natdiscovery ----------------------------------------------------


def test_natdiscovery_mapping_is_endpoint_independent(node):
    """RFC 5780 §4.3 through coturn reports Endpoint Independent Mapping on loopback."""
    output = run_tool("turnutils_natdiscovery", "-m", "-p", str(node.port), node.ip)
    assert verdicts(output) == ["NAT with Endpoint Independent Mapping!"], output
    found = responses(output)
    # Test II goes to the alternate IP and the primary port; OTHER-ADDRESS
    # seen from there is the primary IP and the alternate port.
    assert found[2]["origin"] == (node.alt_ip, node.port)
    assert found[2]["other"] == (node.ip, node.alt_port)
    assert found[2]["reflexive"] == found[1]["reflexive"]


def test_natdiscovery_mapping_from_a_bound_address_sees_no_nat(node):
    """Bound to 127.0.0.1 and a chosen port, coturn sees its own address mapped: No NAT."""
    port = free_port(ips=(node.ip,))
    output = run_tool(
        "turnutils_natdiscovery", "-m", "-L", node.ip, "-l", str(port), "-p", str(node.port), node.ip
    )
    assert verdicts(output) == [
        "No NAT! (Endpoint Independent Mapping)",
        "NAT with Endpoint Independent Mapping!",
    ], output
    found = responses(output)
    assert found[1]["reflexive"] == (node.ip, port)
    assert found[2]["reflexive"] == (node.ip, port)


def test_natdiscovery_filtering_is_endpoint_independent(node):
    """RFC 5780 §4.4 through coturn reports Endpoint Independent Filtering on loopback."""
    output = run_tool("turnutils_natdiscovery", "-f", "-p", str(node.port), node.ip)
    assert verdicts(output) == ["NAT with Endpoint Independent Filtering!"], output
    # coturn does not look at where test II came from; we do: CHANGE-REQUEST
    # (ip, port) must have been answered from the alternate IP and port.
    assert responses(output)[2]["origin"] == (node.alt_ip, node.alt_port)


def test_natdiscovery_mapping_and_filtering_with_padding(node):
    """With -P (1500 bytes of PADDING in every request) both verdicts stay endpoint independent."""
    output = run_tool("turnutils_natdiscovery", "-m", "-f", "-P", "-p", str(node.port), node.ip)
    assert verdicts(output) == [
        "NAT with Endpoint Independent Mapping!",
        "NAT with Endpoint Independent Filtering!",
    ], output
    assert responses(output)[4]["origin"] == (node.alt_ip, node.alt_port)


def test_natdiscovery_lifetime_probe_uses_response_port(node):
    """The §4.6 lifetime probe (timer 0) gets its RESPONSE-PORT answer on the first socket."""
    # coturn sends the second request from a new socket with RESPONSE-PORT =
    # the first socket's mapped port, and reads the answer on the first one.
    output = run_tool("turnutils_natdiscovery", "-t", "-T", "0", "-p", str(node.port), node.ip)
    assert "timeout" not in output, output
    found = responses(output)
    assert found[2]["origin"] == (node.ip, node.port)
    assert found[2]["reflexive"][0] == "127.0.0.1"
    assert found[2]["reflexive"] != found[1]["reflexive"]


def test_natdiscovery_collision_maps_each_local_address(node):
    """The collision probe from 127.0.0.1 and 127.0.0.3 on one port gets each mapped as itself."""
    output = run_tool(
        "turnutils_natdiscovery", "-c", "-A", "127.0.0.3", "-p", str(node.port), node.ip
    )
    found = responses(output)
    first_ip, port = found[1]["reflexive"]
    assert first_ip == "127.0.0.1"
    assert found[2]["reflexive"] == ("127.0.0.3", port)
