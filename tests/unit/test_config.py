"""Configuration: command line over TOML over defaults, and clear errors."""

import pytest
from twisted.python import usage

from relay.config import RELAY_OPTIONS, default_relay_ips
from rendezvous.node.relay_tap import Options as RelayOptions
from rendezvous.node.config import RENDEZVOUS_OPTIONS
from rendezvous.node.tap import Options, _results_url, _turn_urls


def parse(*args, options_class=Options):
    options = options_class()
    options.parseOptions(list(args))
    return options


def test_defaults():
    """With nothing given, the node listens dual-stack (IPv4 and IPv6 wildcards) and the relay is on."""
    config = parse().config
    assert (config.ips, config.port, config.tls_port, config.alt_ips) == (("0.0.0.0", "::"), 3478, 5349, {})
    assert config.software is None and config.wakeup_hold == 100
    assert config.relay.relay_ports == (49152, 65535) and config.relay.realm == "txrendezvous"
    assert config.relay.relay_ips == default_relay_ips(("0.0.0.0", "::"))
    assert [(g.ip, g.alt_ip) for g in config.address_groups()] == [("0.0.0.0", None), ("::", None)]


def test_default_relay_addresses_follow_each_family():
    """A relayed address per listened family: a specific --ip itself, a wildcard's default route, none without."""
    routes = {4: "192.0.2.7", 6: None}
    assert default_relay_ips(("0.0.0.0", "::"), routes.get) == ("192.0.2.7",)
    routes[6] = "2001:db8::7"
    assert default_relay_ips(("0.0.0.0", "::"), routes.get) == ("192.0.2.7", "2001:db8::7")
    assert default_relay_ips(("::1", "127.0.0.1", "127.0.0.2"), routes.get) == ("::1", "127.0.0.1")


def test_several_addresses_with_an_alternate_per_family():
    """--ip, --alt-ip and --advertise-ip repeat; each alternate and advertised address joins its family's --ip."""
    config = parse("--ip", "127.0.0.1", "--ip", "::1", "--alt-ip", "fd00:15::2", "--alt-ip", "127.0.0.2",
                   "--advertise-ip", "198.51.100.1", "--advertise-alt-ip", "198.51.100.2").config
    assert config.ips == ("127.0.0.1", "::1")
    groups = config.address_groups()
    assert [(g.ip, g.alt_ip, g.advertise_ip, g.advertise_alt_ip) for g in groups] == [
        ("127.0.0.1", "127.0.0.2", "198.51.100.1", "198.51.100.2"), ("::1", "fd00:15::2", None, None)]
    assert config.relay.relay_ips == ("127.0.0.1", "::1")
    relay = parse("--ip", "127.0.0.1", "--ip", "::1", options_class=RelayOptions)
    assert relay.ips == ("127.0.0.1", "::1") and relay.relay_config.relay_ips == ("127.0.0.1", "::1")


def test_toml_then_command_line(tmp_path):
    """A TOML file sets options, lists for repeatable ones; the command line overrides it."""
    path = tmp_path / "node.toml"
    path.write_text(
        'ip = "127.0.0.1"\nalt-ip = "127.0.0.2"\nport = 4000\nsoftware = "x"\n'
        'user = ["a:1", "b:2"]\nallow-peer = ["198.18.0.0/15"]\nno-relay = false\n'
    )
    config = parse("--config", str(path), "--port", "4001").config
    assert (config.ips, config.alt_ips, config.port, config.software) == (("127.0.0.1",), {4: "127.0.0.2"}, 4001, "x")
    assert config.relay.users == {"a": "1", "b": "2"}
    assert config.relay.allow_peers == ("198.18.0.0/15",)
    assert config.relay.relay_ips == ("127.0.0.1",)


def test_repeatable_options_on_the_command_line():
    """--user and --auth-secret may be given several times."""
    config = parse("--ip", "127.0.0.1", "--user", "a:1", "--user", "b:x:y", "--auth-secret", "s1",
                   "--auth-secret", "s2", "--no-relay").config
    assert config.relay is None
    relay = parse("--ip", "127.0.0.1", "--user", "a:1", "--user", "b:x:y", options_class=RelayOptions).relay_config
    assert relay.users == {"a": "1", "b": "x:y"}


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "blue"\n', "unknown option"),
        ("port = \n", "not valid TOML"),
        ('port = 70000\n', "outside"),
        ('ip = "nowhere"\n', "not an IP"),
        ('alt-ip = "127.0.0.2"\n', "specific --ip"),
        ('ip = "127.0.0.1"\nalt-ip = "::1"\n', "same address family"),
        ('ip = ["127.0.0.1", "127.0.0.2"]\nalt-ip = "127.0.0.3"\n', "one --ip of its family, not 2"),
        ('ip = ["127.0.0.1", "::1"]\nalt-ip = ["127.0.0.2", "127.0.0.3"]\n', "one --alt-ip per address family"),
        ('ip = ["127.0.0.1", "127.0.0.1"]\n', "given twice"),
        ('ip = ["0.0.0.0", "127.0.0.1"]\n', "already covers every IPv4 address"),
        ('ip = ["::", "::1"]\n', "already covers every IPv6 address"),
        ('advertise-ip = ["198.51.100.1", "198.51.100.2"]\n', "one --advertise-ip per address family"),
        ('ip = "127.0.0.1"\nalt-ip = "127.0.0.1"\n', "must differ"),
        ('cert = "/x.pem"\n', "go together"),
        ('advertise-alt-ip = "198.18.0.1"\n', "needs --alt-ip"),
        ('user = ["nopassword"]\n', "NAME:PASSWORD"),
        ('relay-ports = "5-6"\n', "1024-65535"),
        ('relay-ports = "x"\n', "LOW-HIGH"),
        ('allow-peer = ["nonsense"]\n', "CIDR"),
        ('relay-ip = ["127.0.0.1", "127.0.0.2"]\n', "one --relay-ip per address family"),
        ('relay-ip = ["0.0.0.0"]\n', "specific --relay-ip"),
        ('default-lifetime = 5000\n', "exceeds --max-lifetime"),
        ('max-bps = -1\n', "negative"),
        ('wakeup-hold = 1001\n', "more than 1000"),
        ('expire-with-credential = "yes"\n', "true or false"),
    ],
)
def test_bad_config_is_refused(tmp_path, text, message):
    """A bad value or file is a UsageError saying what is wrong."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(usage.UsageError, match=message):
        parse("--config", str(path))


def test_missing_file():
    """A config file that cannot be read is refused with its name."""
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse("--config", "/nonexistent/config.toml")


def test_options_turn_errors_into_usage_errors():
    """twistd's Options report bad values as UsageError (a message and non-zero exit)."""
    with pytest.raises(usage.UsageError, match="outside"):
        parse("--port", "99999")
    assert parse("--ip", "127.0.0.1", "--alt-ip", "127.0.0.2").config.alt_port == 3479


@pytest.mark.parametrize("options_class, table", [(Options, RENDEZVOUS_OPTIONS),
                                                  (RelayOptions, RELAY_OPTIONS)])
def test_help_documents_every_option(options_class, table):
    """--help names every option of the config."""
    text = str(options_class())
    for option in table + [type("O", (), {"name": "config"})]:
        assert f"--{option.name}" in text


def test_urls_handed_to_clients_bracket_ipv6_hosts():
    """TURN URLs (RFC 7065) and the results URL write an IPv6 host in brackets (RFC 3986 §3.2.2), IPv4 bare."""
    config = parse("--port", "3478", "--tls-port", "5349", "--https-port", "8443").config
    assert _turn_urls(config, ["198.51.100.1", "2001:db8::1"]) == [
        "turn:198.51.100.1:3478?transport=udp", "turn:198.51.100.1:3478?transport=tcp",
        "turns:198.51.100.1:5349?transport=tcp",
        "turn:[2001:db8::1]:3478?transport=udp", "turn:[2001:db8::1]:3478?transport=tcp",
        "turns:[2001:db8::1]:5349?transport=tcp"]
    assert _results_url(config, "2001:db8::1") == "https://[2001:db8::1]:8443/api/results"
    assert _results_url(parse("--http-port", "8080").config, "198.51.100.1") == "http://198.51.100.1:8080/api/results"
