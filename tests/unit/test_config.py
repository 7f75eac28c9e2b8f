"""Configuration: command line over TOML over defaults, and clear errors."""

from pathlib import Path

import pytest
from twisted.python import usage

from rendezvous.config import ConfigError, RendezvousConfig, build
from rendezvous.tap import Options


def test_defaults():
    """With nothing given, the embedded defaults apply."""
    config = build({})
    assert (config.ip, config.port, config.tls_port, config.alt_ip) == ("0.0.0.0", 3478, 5349, None)
    assert config.software is None


def test_toml_then_command_line(tmp_path):
    """A TOML file sets options; the command line overrides it."""
    path = tmp_path / "node.toml"
    path.write_text('ip = "127.0.0.1"\nalt-ip = "127.0.0.2"\nport = 4000\nsoftware = "x"\n')
    config = build({"port": "4001"}, path)
    assert (config.ip, config.alt_ip, config.port, config.software) == ("127.0.0.1", "127.0.0.2", 4001, "x")


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "blue"\n', "unknown option"),
        ("port = \n", "not valid TOML"),
        ('port = 70000\n', "outside"),
        ('ip = "nowhere"\n', "not an IP"),
        ('alt-ip = "127.0.0.2"\n', "specific --ip"),
        ('ip = "127.0.0.1"\nalt-ip = "::1"\n', "same address family"),
        ('ip = "127.0.0.1"\nalt-ip = "127.0.0.1"\n', "must differ"),
        ('cert = "/x.pem"\n', "go together"),
        ('advertise-alt-ip = "198.18.0.1"\n', "needs --alt-ip"),
    ],
)
def test_bad_config_is_refused(tmp_path, text, message):
    """A bad value or file is a ConfigError saying what is wrong."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build({}, path)


def test_missing_file():
    """A config file that cannot be read is a ConfigError."""
    with pytest.raises(ConfigError, match="cannot read"):
        build({}, Path("/nonexistent/config.toml"))


def test_options_turn_errors_into_usage_errors():
    """twistd's Options report bad values as UsageError (a message and non-zero exit)."""
    options = Options()
    with pytest.raises(usage.UsageError, match="outside"):
        options.parseOptions(["--port", "99999"])
    options = Options()
    options.parseOptions(["--ip", "127.0.0.1", "--alt-ip", "127.0.0.2"])
    assert isinstance(options.config, RendezvousConfig)
    assert options.config.alt_port == 3479


def test_help_documents_every_option():
    """--help names every option of the config."""
    text = str(Options())
    for name in ("ip", "port", "tls-port", "alt-ip", "alt-port", "advertise-ip", "advertise-alt-ip",
                 "cert", "key", "state-dir", "software", "config"):
        assert f"--{name}" in text
