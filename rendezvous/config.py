"""Typed configuration of ``twistd rendezvous``, from the command line and TOML.

Every option has one entry in ``OPTIONS``: its name (as on the command line
and as a key in the ``--config`` TOML file), how to parse it, its default and
its help. The command line wins over the file, the file over the defaults.
"""

import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A bad option value or config file; the message says which and why."""


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/txrendezvous"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "txrendezvous")


def _ip(value) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f"{value!r} is not an IP address") from None


def _port(value) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 0-65535")
    return port


def _path(value) -> Path:
    return Path(str(value)).expanduser()


def _text(value) -> str:
    return str(value)


# name, parser, default, help
OPTIONS = [
    ("ip", _ip, "0.0.0.0", "Primary IP to listen on (default: all IPv4 addresses)."),
    ("port", _port, 3478, "STUN/TURN port for UDP and TCP."),
    ("tls-port", _port, 5349, "STUN/TURN over TLS port; 0 disables TLS."),
    ("alt-ip", _ip, None, "Second IP for RFC 5780 CHANGE-REQUEST (needs a specific --ip)."),
    ("alt-port", _port, 3479, "Second port for RFC 5780 CHANGE-REQUEST (used with --alt-ip)."),
    ("advertise-ip", _ip, None, "Public address of --ip when behind a 1:1 NAT."),
    ("advertise-alt-ip", _ip, None, "Public address of --alt-ip when behind a 1:1 NAT."),
    ("cert", _path, None, "TLS certificate chain (PEM); self-signed when omitted."),
    ("key", _path, None, "TLS private key (PEM), with --cert."),
    ("state-dir", _path, _default_state_dir(), "Directory for generated certificates and state."),
    ("software", _text, None, "SOFTWARE attribute to put in responses (off by default)."),
]


@dataclass(frozen=True)
class RendezvousConfig:
    """What ``twistd rendezvous`` runs with, validated."""

    ip: str = "0.0.0.0"
    port: int = 3478
    tls_port: int = 5349
    alt_ip: str | None = None
    alt_port: int = 3479
    advertise_ip: str | None = None
    advertise_alt_ip: str | None = None
    cert: Path | None = None
    key: Path | None = None
    state_dir: Path = Path(_default_state_dir())
    software: str | None = None

    def __post_init__(self) -> None:
        if self.alt_ip is not None:
            if ipaddress.ip_address(self.ip).is_unspecified:
                raise ConfigError("--alt-ip needs a specific --ip, not a wildcard")
            if ipaddress.ip_address(self.ip).version != ipaddress.ip_address(self.alt_ip).version:
                raise ConfigError("--ip and --alt-ip must be of the same address family")
            if self.alt_ip == self.ip:
                raise ConfigError("--alt-ip must differ from --ip")
            if self.alt_port == self.port:
                raise ConfigError("--alt-port must differ from --port")
        if self.advertise_alt_ip and not self.alt_ip:
            raise ConfigError("--advertise-alt-ip needs --alt-ip")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together")


def load_toml(path: Path) -> dict:
    """Read a TOML config file; keys are option names."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    known = {name for name, *_ in OPTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config {path}: unknown option(s) {', '.join(unknown)}")
    return data


def build(command_line: dict, config_file: Path | None = None) -> RendezvousConfig:
    """Merge command line (None = not given), TOML file and defaults."""
    from_file = load_toml(config_file) if config_file else {}
    values = {}
    for name, parse, default, _ in OPTIONS:
        raw = command_line.get(name)
        if raw is None:
            raw = from_file.get(name, default)
        values[name.replace("-", "_")] = None if raw is None else parse(raw)
    assert {f.name for f in fields(RendezvousConfig)} == set(values)
    return RendezvousConfig(**values)
