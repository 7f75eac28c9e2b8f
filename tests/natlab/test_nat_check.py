"""The NAT analyzer: its decisions on observations (no root), over loopback
(no root), and its verdicts behind real Linux NATs of every kind (root)."""

import json
import os
import subprocess
import sys

import pytest

from rendezvous.peer import nat_check
from rendezvous.peer.nat_check import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    NatReport,
    PortAllocation,
    classic_type,
    filtering_behaviour,
    lifetime_bounds,
    lifetime_schedule,
    mapping_behaviour,
    port_allocation,
    prediction_easy,
)
from rendezvous.cli.nat_check import parse_server

from .lab import ENV, MINIUPNPD, ROOT, SERVER_IP, SERVER_PORT

EIM, ADM, APDM = ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT
EIF, ADF, APDF = ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT
M1, M2, M3 = ("198.18.0.11", 40000), ("198.18.0.11", 40001), ("198.18.0.11", 40002)


# -- sans-IO decisions (no root, no sockets) -----------------------------------


def test_same_mapping_everywhere_is_endpoint_independent():
    """The same mapped address toward the primary and alternate IP means EIM."""
    assert mapping_behaviour(M1, M1, None) == EIM


def test_mapping_kept_across_ports_is_address_dependent():
    """A new mapping for the alternate IP, reused for its alternate port, means ADM."""
    assert mapping_behaviour(M1, M2, M2) == ADM


def test_mapping_per_port_is_address_and_port_dependent():
    """A new mapping for every server address and port means APDM."""
    assert mapping_behaviour(M1, M2, M3) == APDM


def test_mapping_is_unknown_without_answers():
    """A missing test II or needed test III leaves the mapping unknown."""
    assert mapping_behaviour(M1, None, None) is None
    assert mapping_behaviour(M1, M2, None) is None


def test_filtering_follows_which_changed_answers_arrive():
    """Answers from the other IP and port mean EIF, from the other port only ADF, none APDF."""
    assert filtering_behaviour(True, False) == EIF
    assert filtering_behaviour(False, True) == ADF
    assert filtering_behaviour(False, False) == APDF
    assert filtering_behaviour(None, None) is None


def test_classic_labels():
    """Mapping and filtering map onto the RFC 3489 labels."""
    assert classic_type(False, True, EIM, EIF) == "full cone"
    assert classic_type(False, True, EIM, ADF) == "restricted cone"
    assert classic_type(False, True, EIM, APDF) == "port restricted cone"
    assert classic_type(False, True, APDM, APDF) == "symmetric"
    assert classic_type(False, True, ADM, EIF) == "symmetric"
    assert classic_type(False, False, EIM, EIF) == "open internet"
    assert classic_type(False, False, EIM, APDF) == "symmetric UDP firewall"
    assert classic_type(True, None, None, None) == "UDP blocked"
    assert classic_type(False, True, None, None) is None


def test_ports_kept_are_preserving():
    """Mapped ports equal to the local ports are a preserving allocation."""
    assert port_allocation([(5000, 5000), (6000, 6000), (7000, 7000)]).pattern == "preserving"


def test_ports_in_steps_are_sequential_with_their_delta():
    """Mapped ports a fixed step apart are sequential, tolerating one outlier in five steps."""
    steady = port_allocation([(1, 1000), (2, 1002), (3, 1004), (4, 1006)])
    assert (steady.pattern, steady.delta) == ("sequential", 2)
    bumped = port_allocation([(1, 1000), (2, 1001), (3, 1002), (4, 1009), (5, 1010), (6, 1011)])
    assert (bumped.pattern, bumped.delta) == ("sequential", 1)


def test_scattered_ports_are_random():
    """Mapped ports with no common step are random."""
    assert port_allocation([(1, 3969), (2, 11220), (3, 24019), (4, 47290)]).pattern == "random"


def test_too_few_samples_say_nothing():
    """Fewer than three non-preserved samples leave the pattern unknown."""
    assert port_allocation([]).pattern is None
    assert port_allocation([(1, 3969), (2, 11220)]).pattern is None


def test_prediction_is_easy_unless_ports_are_random():
    """EIM, preserving and sequential allocation are predictable; random APDM is not."""
    assert prediction_easy(EIM, PortAllocation("random")) is True
    assert prediction_easy(APDM, PortAllocation("sequential", 1)) is True
    assert prediction_easy(APDM, PortAllocation("preserving")) is True
    assert prediction_easy(APDM, PortAllocation("random")) is False
    assert prediction_easy(None, None) is None


def test_lifetime_schedule_stays_within_the_cap():
    """Every probe wait plus one probe fits in the cap; a tiny cap skips the search."""
    waits = lifetime_schedule(12, 3)
    assert waits == [1, 2, 3, 5, 8, 9]
    assert max(lifetime_schedule(600, 3)) + 3 <= 600
    assert lifetime_schedule(3, 3) == []


def test_lifetime_bounds_bracket_the_first_expiry():
    """The lifetime lies between the last survivor before the first death and that death."""
    assert lifetime_bounds([(1, True), (5, True), (8, False), (9, False)]) == (5, 8)
    assert lifetime_bounds([(1, True), (2, True)]) == (2, None)
    assert lifetime_bounds([(1, False), (2, True)]) == (None, 1)
    assert lifetime_bounds([]) == (None, None)


def test_report_reads_like_the_nat_analyzer():
    """The text report says the mapping and whether port prediction is easy."""
    report = NatReport(server="198.18.0.1:3478", server_answered=True, mapping=EIM, filtering=APDF,
                       port_allocation=PortAllocation("preserving"), port_prediction_easy=True,
                       binding_lifetime_seconds=5, binding_lifetime_max_seconds=8)
    text = report.to_text()
    assert "Endpoint independent mapping, port prediction is easy" in text
    assert "Address and port dependent filtering" in text
    assert "between 5 and 8 s" in text
    assert "not tested (unsupported by server)" in text


def test_report_json_has_the_agreed_keys():
    """The JSON carries mapping, filtering, hairpinning, lifetime, allocation and a null alg with its reason."""
    data = json.loads(NatReport(server="x:1", mapping=EIM, filtering=ADF).to_json())
    for key in ("mapping", "filtering", "hairpinning", "binding_lifetime_seconds", "port_allocation", "alg"):
        assert key in data
    assert (data["mapping"], data["filtering"]) == ("endpoint-independent", "address-dependent")
    assert data["alg"] is None and data["alg_reason"] == "unsupported by server"


def test_report_says_which_gateway_answered():
    """The text names the protocols that answered with their external address, or that none did."""
    from upnp_helper.probe import GatewayAnswer

    found = NatReport(server="x:1", upnp={"igd": GatewayAnswer("igd", True, "198.18.0.11", "http://gw/ctl")})
    assert "UPnP IGD answered, external address 198.18.0.11" in found.to_text()
    assert json.loads(found.to_json())["upnp"]["igd"]["external_address"] == "198.18.0.11"
    silent = NatReport(server="x:1", upnp={"igd": GatewayAnswer("igd", False, error="no UPnP gateway")})
    assert "no gateway answered (UPnP IGD)" in silent.to_text()
    assert "Port mapping:         not tested" in NatReport(server="x:1").to_text()


def test_server_argument_parses():
    """SERVER[:PORT] takes a default port and bracketed IPv6."""
    assert parse_server("198.18.0.1") == ("198.18.0.1", 3478)
    assert parse_server("stun.example.org:3479") == ("stun.example.org", 3479)
    assert parse_server("[2001:db8::1]:5000") == ("2001:db8::1", 5000)
    with pytest.raises(ValueError):
        parse_server("host:0")


# -- the command, run in a namespace or on loopback ------------------------------


def _argv(*args: str) -> list[str]:
    """The nat-check command line."""
    return [sys.executable, "-m", "rendezvous.cli.main", "nat-check", *args]


def run_nat_check(*args: str, prefix: tuple[str, ...] = (), timeout: float = 90) -> tuple[int, dict | None, str]:
    """Run nat-check --json; (exit status, report, stderr)."""
    done = subprocess.run([*prefix, *_argv(*args, "--json")], capture_output=True, check=False, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)
    report = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, report, done.stderr


def test_loopback_is_open_internet(node):
    """Against a loopback super node there is no NAT: open internet, EIM, EIF, hairpinning."""
    status, report, stderr = run_nat_check(f"{node.ip}:{node.port}", "--lifetime-max-seconds", "5", "--no-upnp")
    assert status == 0, stderr
    assert report["nat_present"] is False and report["rfc5780"] is True
    assert (report["mapping"], report["filtering"]) == (EIM, EIF)
    assert report["nat_type"] == "open internet"
    assert report["hairpinning"] is True
    assert report["tcp_mapping"] == EIM
    assert report["upnp"] is None  # --no-upnp: nothing sent to the host's LAN
    assert report["alg"] is None and report["alg_reason"] == "no echo service answered at port 5060"
    assert report["binding_lifetime_seconds"] == 2 and report["binding_lifetime_max_seconds"] is None
    assert "test II" in stderr  # progress while the tests run


def test_server_without_rfc5780_gives_a_partial_report(plain_node):
    """A server without an alternate address exits 3 and still reports what it can."""
    status, report, stderr = run_nat_check(f"{plain_node.ip}:{plain_node.port}", "--lifetime-max-seconds", "0",
                                           "--no-upnp")
    assert status == 3
    assert "RFC 5780" in stderr
    assert report["rfc5780"] is False and report["mapping"] is None and report["filtering"] is None
    assert report["mapped_address"] is not None and report["port_allocation"]["pattern"] == "preserving"


def test_silent_server_exits_with_a_message():
    """No answer over UDP (TCP not tried) exits 2 with a message."""
    from tests.conftest import free_port

    status, report, stderr = run_nat_check(f"127.0.0.1:{free_port()}", "--no-tcp", "--lifetime-max-seconds", "0",
                                           "--rto-seconds", "0.05", "--no-upnp")
    assert status == 2
    assert "no answer" in stderr
    assert report["server_answered"] is False and report["mapping"] is None


# -- behind real NATs (root) -----------------------------------------------------

SERVER = f"{SERVER_IP}:{SERVER_PORT}"
natlab_test = pytest.mark.natlab


def check_behind(site, *args: str) -> tuple[int, dict, str]:
    status, report, stderr = run_nat_check(SERVER, *args, prefix=tuple(site.exec_argv()))
    assert report is not None, stderr
    return status, report, stderr


@natlab_test
def test_full_cone_with_hairpinning(natlab):
    """Behind EIM + EIF with hairpinning the verdict is full cone, and hairpinning works."""
    status, report, stderr = check_behind(natlab("eim-eif", hairpin=True), "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert (report["mapping"], report["filtering"]) == (EIM, EIF)
    assert report["nat_type"] == "full cone"
    assert report["hairpinning"] is True
    assert report["port_preservation"] is True and report["port_allocation"]["prediction"] == "easy"


@natlab_test
def test_restricted_cone(natlab):
    """Behind EIM + ADF the verdict is restricted cone, without hairpinning."""
    status, report, stderr = check_behind(natlab("eim-adf"), "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert (report["mapping"], report["filtering"]) == (EIM, ADF)
    assert report["nat_type"] == "restricted cone"
    assert report["hairpinning"] is False


@natlab_test
def test_port_restricted_cone_masquerade(natlab):
    """Behind plain masquerade the verdict is EIM + APDF, ports preserved, TCP EIM too."""
    site = natlab("eim-apdf")
    status, report, stderr = check_behind(site, "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert (report["mapping"], report["filtering"]) == (EIM, APDF)
    assert report["nat_type"] == "port restricted cone"
    assert report["mapped_address"].startswith(site.wan_ip + ":")
    assert report["port_allocation"]["pattern"] == "preserving"
    assert report["hairpinning"] is False
    assert report["tcp_mapping"] == EIM
    assert report["upnp"]["igd"]["answered"] is False
    assert "no UPnP gateway" in report["upnp"]["igd"]["error"]
    assert report["upnp"]["natpmp"]["answered"] is False and report["upnp"]["pcp"]["answered"] is False
    assert report["alg"] is False and report["alg_rewritten"] == {"udp": [], "tcp": []}


@natlab_test
def test_binding_lifetime_is_bracketed(natlab):
    """With a 6 s conntrack UDP timeout the lifetime search brackets it between 5 and 8 s."""
    site = natlab("eim-apdf", udp_timeout_seconds=6)
    status, report, stderr = check_behind(site, "--lifetime-max-seconds", "12", "--no-tcp")
    assert status == 0, stderr
    assert report["binding_lifetime_seconds"] == 5
    assert report["binding_lifetime_max_seconds"] == 8


@natlab_test
def test_symmetric_random_ports(natlab):
    """Behind masquerade fully-random the verdict is APDM, random ports, prediction hard."""
    status, report, stderr = check_behind(natlab("apdm-random"), "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert (report["mapping"], report["filtering"]) == (APDM, APDF)
    assert report["nat_type"] == "symmetric"
    assert report["port_allocation"]["pattern"] == "random"
    assert report["port_allocation"]["prediction"] == "hard"
    assert report["tcp_mapping"] == APDM


@natlab_test
def test_home_nat_behind_carrier_nat(natlab):
    """A full-cone home NAT behind a masquerading carrier NAT shows EIM + APDF from outside."""
    site = natlab("eim-eif", carrier="eim-apdf")
    status, report, stderr = check_behind(site, "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert (report["mapping"], report["filtering"]) == (EIM, APDF)
    assert report["mapped_address"].startswith(site.wan_ip + ":")


@natlab_test
def test_udp_blocked(natlab):
    """Behind a firewall dropping outbound UDP the verdict is UDP blocked, TCP still measured."""
    status, report, stderr = check_behind(natlab("udp-blocked"), "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert report["udp_blocked"] is True and report["nat_type"] == "UDP blocked"
    assert report["mapping"] is None and report["filtering"] is None
    assert report["tcp_mapping"] == EIM


@natlab_test
def test_udp_blocked_without_tcp_is_no_answer(natlab):
    """Behind the UDP-blocking firewall with --no-tcp nothing answers: exit 2."""
    status, report, stderr = check_behind(natlab("udp-blocked"), "--lifetime-max-seconds", "0", "--no-tcp")
    assert status == 2
    assert "no answer" in stderr
    assert report["udp_blocked"] is None


@natlab_test
def test_kernel_sip_alg_is_caught_rewriting(natlab):
    """Behind a router whose nf_nat_sip ALG rewrites SIP, the echoed INVITE shows the rewritten fields over UDP and TCP."""
    status, report, stderr = check_behind(natlab("eim-apdf", sip_alg=True), "--lifetime-max-seconds", "0",
                                          "--no-upnp")
    assert status == 0, stderr
    assert report["alg"] is True and report["alg_reason"] is None
    assert {"via", "sdp c=", "sdp o="} <= set(report["alg_rewritten"]["udp"]), report["alg_rewritten"]
    assert {"sdp c=", "sdp o="} <= set(report["alg_rewritten"]["tcp"]), report["alg_rewritten"]


@natlab_test
def test_gateway_with_upnp_is_reported(natlab):
    """Behind a router running miniupnpd, the report says UPnP IGD, NAT-PMP and PCP answered, with the WAN address."""
    if not os.path.exists(MINIUPNPD):
        pytest.skip(f"no {MINIUPNPD} (apt-get install miniupnpd-nftables)")
    site = natlab("eim-apdf", upnp=True)
    status, report, stderr = check_behind(site, "--lifetime-max-seconds", "0", "--no-tcp")
    assert status == 0, stderr
    igd = report["upnp"]["igd"]
    assert igd["answered"] is True and igd["external_address"] == site.wan_ip, igd
    assert igd["gateway"].startswith("http://192.168.")
    for name in ("natpmp", "pcp"):
        answer = report["upnp"][name]
        assert answer["answered"] is True and answer["external_address"] == site.wan_ip, answer
        assert answer["gateway"] == f"{name}://192.168.{site.client_ip.split('.')[2]}.1:5351"
    done = subprocess.run(site.exec_argv(*_argv(SERVER, "--lifetime-max-seconds", "0", "--no-tcp")),
                          capture_output=True, check=False, text=True, timeout=60, cwd=ROOT,
                          env=ENV)
    assert f"UPnP IGD answered, external address {site.wan_ip}" in done.stdout, done.stdout + done.stderr


@natlab_test
def test_tcp_web_only_firewall_is_udp_blocked_via_port_80(natlab):
    """Behind a firewall letting out only TCP 80/443 the verdict is UDP blocked, found through the node's port 80."""
    status, report, stderr = check_behind(natlab("tcp-web-only"), "--lifetime-max-seconds", "0")
    assert status == 0, stderr
    assert report["udp_blocked"] is True and report["nat_type"] == "UDP blocked"
    assert report["tcp_server_port"] == 80
    assert f"TCP to port {SERVER_PORT} failed" in " ".join(report["notes"])
    assert report["mapped_address"] is None and report["tcp_mapping"] is None


@natlab_test
def test_tcp_web_only_without_fallback_is_no_answer(natlab):
    """Behind the TCP 80/443 firewall, with the port-80 fallback off, nothing answers: exit 2."""
    status, report, stderr = check_behind(natlab("tcp-web-only"), "--lifetime-max-seconds", "0",
                                          "--tcp-fallback-port", "0", "--rto-seconds", "0.05")
    assert status == 2, stderr
    assert report["server_answered"] is False and report["tcp_server_port"] is None


def test_module_exports_check():
    """Apps reach the analyzer through nat_check.check."""
    assert callable(nat_check.check)


@natlab_test
def test_lab_teardown_removes_its_namespaces(tmp_path):
    """Closing a lab deletes every namespace it made, and only those, ends the processes it started
    (unbound, tayga, the softwires) and removes the resolver files it wrote."""
    from .lab import Lab, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path)
    try:
        lab.build_public()
        lab.add_site("eim-apdf")
        only_nat = len(lab.namespaces)
        lab.start_dns_root()
        lab.add_site("eim-apdf", ipv6="firewall")
        nat64 = lab.add_site("464xlat")  # NAT64 and DNS64 in the router, a CLAT in the client
        lab.add_site("ds-lite")
        made, processes, resolvers = list(lab.namespaces), list(lab.processes), list(lab.resolver_files)
    finally:
        lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False, text=True).stdout
    assert only_nat == 4 and len(made) == 11
    assert not any(name in listed for name in made)
    # unbound twice (the DNS root, the DNS64), tayga twice (NAT64, CLAT), the two ends of the softwire
    assert len(processes) == 6 and all(process.poll() is not None for process in processes)
    assert len(resolvers) == 3 and not any(path.exists() for path in resolvers)
    assert nat64.client_ns in str(resolvers)
