"""The relay self-test's targets, verdict rules, report and command-line credentials (no sockets)."""

import argparse
import ipaddress
import json

import pytest

from relay.loadgen_config import ConfigError
from relay.probe import QUOTA_CHECK_MAX, ProbeConfig
from relay.peer_policy import V4_DENIED, V6_DENIED, denied_by_default
from relay.probe_targets import EMBEDDED_IPV4, IPV4_TARGETS, IPV6_NATIVE, IPV6_TARGETS, TARGETS, spellings
from relay.probe_verdicts import (CLOSED, OPEN, SKIPPED, Outcome, Report, Verdict, amplification_verdict, combine,
                                  peer_outcome)
from rendezvous.cli import main as cli_main
from rendezvous.cli.probe_relay import add_arguments, config_from_args, credentials


def embedded(address: str, form: str) -> str:
    """The IPv4 address an IPv6 spelling carries, read back with the standard library."""
    v6 = ipaddress.IPv6Address(address)
    if form == "IPv4-mapped":
        return str(v6.ipv4_mapped)
    if form == "6to4":
        return str(v6.sixtofour)
    if form == "Teredo":
        server, client = v6.teredo
        assert server == client
        return str(client)
    return str(ipaddress.IPv4Address(int(v6) & 0xFFFFFFFF))


@pytest.mark.parametrize("ipv4", EMBEDDED_IPV4)
def test_every_spelling_carries_its_ipv4_address(ipv4):
    """Each IPv6 form (mapped, compatible, translated, NAT64, local-use NAT64, 6to4, Teredo) embeds the address."""
    forms = spellings(ipv4)
    assert [form for _, form in forms] == ["IPv4-mapped", "IPv4-compatible", "IPv4-translated", "NAT64",
                                           "local-use NAT64", "6to4", "Teredo"]
    for address, form in forms:
        assert embedded(address, form) == ipv4, (address, form)


def test_spellings_sit_in_their_prefixes():
    """The forms use their well-known prefixes: ::ffff:0:0/96, 64:ff9b::/96, 64:ff9b:1::/48, 2002::/16, 2001::/32."""
    prefixes = {"IPv4-mapped": "::ffff:0:0/96", "IPv4-compatible": "::/96", "IPv4-translated": "::ffff:0:0:0/96",
                "NAT64": "64:ff9b::/96", "local-use NAT64": "64:ff9b:1::/48", "6to4": "2002::/16",
                "Teredo": "2001::/32"}
    for address, form in spellings("10.0.0.1"):
        assert ipaddress.IPv6Address(address) in ipaddress.IPv6Network(prefixes[form]), form


def test_targets_cover_every_range_once():
    """The targets name each dangerous range, hold no address twice and split by family."""
    assert {t.category for t in TARGETS} == {"unspecified", "loopback", "private", "cgn", "link-local", "metadata",
                                            "multicast", "broadcast", "reserved", "documentation"}
    values = [ipaddress.ip_address(t.address) for t in TARGETS]
    assert len(values) == len(set(values))
    assert {t.family for t in IPV4_TARGETS} == {4} and {t.family for t in IPV6_TARGETS} == {6}
    assert {"169.254.169.254", "0.0.0.0", "::ffff:169.254.169.254", "::1", "fe80::1", "fc00::1"} <= {
        t.address for t in TARGETS}


def test_every_range_the_relay_denies_is_probed():
    """Each range of the relay's default deny list holds at least one target, so probe-relay tries them all."""
    addresses = [ipaddress.ip_address(t.address) for t in TARGETS]
    for network in V4_DENIED + V6_DENIED:
        assert any(address in network for address in addresses), network


def test_every_target_is_denied_by_the_relays_default_policy():
    """Every target, native or an IPv6 spelling, is one a relay must refuse by default (none is a real peer)."""
    for target in TARGETS:
        assert denied_by_default(ipaddress.ip_address(target.address)), target


@pytest.mark.parametrize(("method", "code", "answered", "status"), [
    ("CreatePermission", None, True, OPEN),
    ("ChannelBind", 403, True, CLOSED),
    ("ChannelBind", 443, True, CLOSED),
    ("CreatePermission", 400, True, CLOSED),
    ("CreatePermission", 508, True, SKIPPED),
    ("CreatePermission", None, False, SKIPPED),
    ("Connect", None, True, OPEN),
    ("Connect", 447, True, OPEN),
    ("Connect", None, False, OPEN),
    ("Connect", 403, True, CLOSED),
    ("Connect", 500, True, SKIPPED),
])
def test_peer_outcome(method, code, answered, status):
    """Granted is OPEN, a refusal closed; a Connect the relay tried (447, or still trying) is OPEN."""
    assert peer_outcome(method, code, "why", answered).status == status


def test_combine_lets_open_win_then_closed():
    """One OPEN request makes the target OPEN; otherwise one refusal makes it closed; the detail groups methods."""
    refused = Outcome("CreatePermission", CLOSED, "403 Forbidden")
    skipped = Outcome("Connect", SKIPPED, "no TCP allocation")
    granted = Outcome("ChannelBind", OPEN, "granted")
    assert combine("peer-range", "10.0.0.1", "private", "", [refused, granted, skipped]).status == OPEN
    both = combine("peer-range", "10.0.0.1", "private", "RFC 1918", [refused, Outcome("ChannelBind", CLOSED,
                                                                                       "403 Forbidden"), skipped])
    assert both.status == CLOSED
    assert both.detail == "RFC 1918 - CreatePermission, ChannelBind: 403 Forbidden; Connect: no TCP allocation"
    assert combine("own-port", "x", "own", "", [skipped]).status == SKIPPED


def test_amplification_compares_the_worst_ratio_with_the_limit():
    """The largest answer/request ratio decides: above the limit is OPEN; no answer at all is skipped."""
    assert amplification_verdict([(20, 116), (28, 116)], 5.0).status == OPEN
    within = amplification_verdict([(20, 92), (28, 92)], 5.0)
    assert within.status == CLOSED and "ratio 4.6" in within.detail
    assert amplification_verdict([], 5.0).status == SKIPPED


def test_report_text_and_json():
    """The text has one line per verdict and a summary; the JSON carries the same verdicts and counts."""
    report = Report("relay.example:3478", "udp", [
        Verdict("peer-range", "10.0.0.1", OPEN, "granted"),
        Verdict("amplification", "-", CLOSED, "ratio 4.0"),
        Verdict("quota", "50", SKIPPED, "no answer"),
    ], seconds=1.25)
    lines = report.text().splitlines()
    assert lines[1].startswith("OPEN") and "10.0.0.1" in lines[1]
    assert "summary: 1 open, 1 closed, 1 skipped in 1.2 s" in lines
    body = json.loads(report.to_json())
    assert body["summary"] == {"OPEN": 1, "closed": 1, "skipped": 1}
    assert [v["target"] for v in body["verdicts"]] == ["10.0.0.1", "-", "50"]
    assert report.open == [report.verdicts[0]]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


class Terminal:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_credentials_from_the_user_option_and_the_environment():
    """NAME:PASS is split at the first colon; a bare NAME takes TXRENDEZVOUS_PASSWORD (load-test's rules)."""
    assert credentials(parse("h:1", "--user", "alice:se:cret"), {}) == ("alice", "se:cret")
    assert credentials(parse("h:1", "--user", "alice"), {"TXRENDEZVOUS_PASSWORD": "pw"}) == ("alice", "pw")


def test_credentials_from_a_password_file(tmp_path):
    """--password-file gives the first line; with NAME:PASS too, or empty, it is an error."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\nignored\n")
    assert credentials(parse("h:1", "--user", "alice", "--password-file", str(secret)), {}) == ("alice", "s3cret")
    with pytest.raises(ConfigError, match="once"):
        credentials(parse("h:1", "--user", "alice:x", "--password-file", str(secret)), {})
    secret.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        credentials(parse("h:1", "--user", "alice", "--password-file", str(secret)), {})
    with pytest.raises(ConfigError, match="No such file"):
        credentials(parse("h:1", "--user", "alice", "--password-file", str(tmp_path / "missing")), {})


def test_credentials_prompt_only_on_a_terminal():
    """A bare NAME with no other source prompts on a terminal, and is an error without one."""
    asked = []
    args = parse("h:1", "--user", "alice")
    got = credentials(args, {}, prompt=lambda text: asked.append(text) or "typed", terminal=Terminal(True))
    assert got == ("alice", "typed") and asked == ["password of alice: "]
    with pytest.raises(ConfigError, match="--password-file"):
        credentials(args, {}, prompt=lambda text: "never", terminal=Terminal(False))


def test_config_from_args():
    """Options become a validated ProbeConfig; --metrics-port 0 turns that port off."""
    config = config_from_args(parse("[::1]:3478", "--user", "a:b", "--also-port", "22", "--also-port", "5349",
                                    "--metrics-port", "0", "--quota-check", "50", "--transport", "tcp"), {})
    assert config.server == ("::1", 3478)
    assert config.also_ports == (22, 5349) and config.metrics_port is None
    assert (config.quota_check, config.transport) == (50, "tcp")


@pytest.mark.parametrize("argv", [
    ["nowhere", "--user", "a:b"],
    ["h:1", "--user", "a:b", "--quota-check", str(QUOTA_CHECK_MAX + 1)],
    ["h:1", "--user", "a:b", "--also-port", "70000"],
    ["h:1", "--user", "a:b", "--timeout", "0"],
    ["h:1", "--user", "a:b", "--max-amplification", "-1"],
])
def test_bad_options_are_config_errors(argv):
    """Out-of-range or malformed options raise ConfigError with a message (the CLI exits 2)."""
    with pytest.raises(ConfigError):
        config_from_args(parse(*argv), {})


def test_probe_config_defaults_validate():
    """The defaults are valid: metrics port 9641, no quota check, bounded time."""
    config = ProbeConfig(("127.0.0.1", 3478), "a", "b").validate()
    assert (config.metrics_port, config.quota_check, config.max_seconds) == (9641, 0, 180.0)


def test_probe_relay_is_a_subcommand():
    """txrendezvous probe-relay is registered and parses its options."""
    args = cli_main.build_parser(["probe-relay"]).parse_args(["probe-relay", "h:1", "--user", "a:b", "--json"])
    assert args.command == "probe-relay" and args.json
