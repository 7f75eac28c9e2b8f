"""Options of the relay and its listeners, from the command line and TOML.

Each option is one ``Option``: its name (as on the command line and as a key
in the ``--config`` TOML file), how to parse a value, its default and its
help. The command line wins over the file, the file over the defaults.
``twistd relay`` uses ``LISTENER_OPTIONS + RELAY_OPTIONS``;
``twistd rendezvous`` adds its own.
"""

import ipaddress
import os
import socket
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twisted.python import usage

from .peer_policy import NAT64_PREFIX_LENGTHS


class ConfigError(ValueError):
    """A bad option value or config file; the message says which and why."""


def default_state_dir() -> Path:
    """$TXRENDEZVOUS_STATE_DIR, else /var/lib/txrendezvous for root, else the XDG state dir."""
    if os.environ.get("TXRENDEZVOUS_STATE_DIR"):
        return Path(os.environ["TXRENDEZVOUS_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/txrendezvous")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "txrendezvous"


# The default listening addresses: every IPv4 and every IPv6 address, on separate sockets (relay.listening).
DUAL_STACK = ("0.0.0.0", "::")


def primary_address(version: int = 4) -> str | None:
    """The address of the default route of an IP version: IPv4 falls back to 127.0.0.1, IPv6 to None.

    A UDP connect() only consults the routing table; nothing is sent.
    """
    family, target = (socket.AF_INET, "192.0.2.1") if version == 4 else (socket.AF_INET6, "2001:db8::1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1" if version == 4 else None


def parse_ip(value) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f"{value!r} is not an IP address") from None


def parse_port(value) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 0-65535")
    return port


def parse_count(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise ConfigError(f"{number} is negative")
    return number


def parse_wakeup_hold(value) -> int:
    """Microseconds, 0-1000: a longer hold would add latency a relayed call can hear."""
    number = parse_count(value)
    if number > 1000:
        raise ConfigError(f"{number} µs is more than 1000")
    return number


def parse_path(value) -> Path:
    return Path(str(value)).expanduser()


def parse_text(value) -> str:
    return str(value)


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{value!r} is not true or false")


def parse_range(value) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in str(value).split("-"))
    except ValueError:
        raise ConfigError(f"{value!r} is not a port range LOW-HIGH") from None
    if not 1024 <= low < high <= 65535:
        raise ConfigError(f"port range {value} must lie within 1024-65535, low below high")
    return low, high


def parse_network(value) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ConfigError(f"{value!r} is not an address range (CIDR)") from None


def parse_nat64_prefix(value) -> str:
    """An IPv6 prefix a NAT64 translates, of a length RFC 6052 §2.2 allows."""
    try:
        network = ipaddress.IPv6Network(str(value))
    except ValueError:
        raise ConfigError(f"{value!r} is not an IPv6 prefix (like 2001:db8:64::/96)") from None
    if network.prefixlen not in NAT64_PREFIX_LENGTHS:
        raise ConfigError(f"NAT64 prefix {network} must be /32, /40, /48, /56, /64 or /96 (RFC 6052)")
    return str(network)


def parse_host_port(value) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), parse_port(port)


def parse_endpoint_or_off(value) -> tuple[str, int] | None:
    return None if str(value).lower() == "off" else parse_host_port(value)


def parse_log_format(value) -> str:
    if str(value) not in ("text", "json"):
        raise ConfigError(f"log format {value!r} is not text or json")
    return str(value)


def parse_user(value) -> tuple[str, str]:
    name, sep, password = str(value).partition(":")
    if not sep or not name or not password:
        raise ConfigError(f"user {name!r}: expected NAME:PASSWORD")
    return name, password


@dataclass(frozen=True)
class Option:
    name: str
    parse: object
    default: object
    help: str
    multi: bool = False  # repeatable; a TOML list
    flag: bool = False  # a switch; TOML true/false


LISTENER_OPTIONS = [
    Option("ip", parse_ip, DUAL_STACK,
           "IP to listen on (repeatable; default: every IPv4 and every IPv6 address, on separate sockets).",
           multi=True),
    Option("port", parse_port, 3478, "STUN/TURN port for UDP and TCP."),
    Option("tls-port", parse_port, 5349, "STUN/TURN over TLS port; 0 disables TLS."),
    Option("cert", parse_path, None, "TLS certificate chain (PEM); self-signed when omitted."),
    Option("key", parse_path, None, "TLS private key (PEM), with --cert."),
    Option("state-dir", parse_path, default_state_dir(), "Directory for generated certificates and state."),
    Option("software", parse_text, None, "SOFTWARE attribute to put in responses (off by default)."),
    Option("metrics", parse_endpoint_or_off, ("127.0.0.1", 9641),
           "HOST:PORT for /metrics (Prometheus), /healthz and /readyz, or off."),
    Option("log-format", parse_log_format, "text",
           "text (twistd's lines) or json (one JSON object per event, on standard output)."),
    Option("wakeup-hold", parse_wakeup_hold, 100,
           "Under a steady light UDP load, sleep up to this many µs before each wait so that one wakeup serves "
           "several datagrams (adaptive, like a NIC's interrupt coalescing); 0 = off."),
]

RELAY_OPTIONS = [
    Option("realm", parse_text, "txrendezvous", "Realm of the long-term credentials."),
    Option("user", parse_user, (), "A TURN user NAME:PASSWORD (repeatable).", multi=True),
    Option("auth-secret", parse_text, (),
           "Shared secret for REST-API ephemeral credentials (repeatable, for rotation).", multi=True),
    Option("accounts", parse_path, None,
           "SQLite account store to take TURN users from (see `txrendezvous accounts`); "
           "twistd rendezvous uses STATE_DIR/accounts.sqlite when not given."),
    Option("relay-ip", parse_ip, (),
           "Address to bind relayed ports on, one per family (repeatable; default: the first --ip of each "
           "family, or the address of that family's default route when it is a wildcard).", multi=True),
    Option("advertise-relay-ip", parse_ip, (),
           "Public address of a --relay-ip behind a 1:1 NAT (repeatable, same order).", multi=True),
    Option("relay-ports", parse_range, (49152, 65535), "Relay port range LOW-HIGH."),
    Option("allow-peer", parse_network, (), "Peer range the relay may reach despite the default deny (repeatable).",
           multi=True),
    Option("deny-peer", parse_network, (), "Peer range the relay must not reach (repeatable).", multi=True),
    Option("nat64-prefix", parse_nat64_prefix, (),
           "A local NAT64 prefix (RFC 6052: /32 to /96): a peer under it is judged by the IPv4 address "
           "it carries, as under 64:ff9b::/96 (repeatable).", multi=True),
    Option("default-lifetime", parse_count, 600, "Allocation lifetime when the client asks for less, seconds."),
    Option("max-lifetime", parse_count, 3600, "Longest allocation lifetime granted, seconds."),
    Option("user-quota", parse_count, 0, "Allocations per user; 0 = unlimited (486 when exceeded)."),
    Option("total-quota", parse_count, 0, "Allocations in all; 0 = unlimited (508 when exceeded)."),
    Option("max-permissions", parse_count, 1000, "Permissions per allocation (508 when exceeded)."),
    Option("max-channels", parse_count, 1000, "Channels per allocation (508 when exceeded)."),
    Option("max-bps", parse_count, 0, "Relayed bytes per second per allocation; 0 = unlimited."),
    Option("allocation-log-rate", parse_count, 20,
           "Allocation made/ended lines logged one by one per second; past it they are counted in a summary "
           "line every 10 s; 0 = log every one."),
    Option("expire-with-credential", parse_bool, False,
           "End allocations when their REST credential expires.", flag=True),
    Option("alternate-server", parse_host_port, None,
           "HOST:PORT named in 300 Try Alternate while draining (SIGUSR1); without it, 508."),
    Option("drain-timeout", parse_count, 600, "Seconds a draining node waits for allocations to end."),
]


def usage_options(options: Sequence[Option]) -> tuple[list, list]:
    """optParameters and optFlags for a twisted.python.usage.Options class."""
    parameters, flags = [], []
    for o in options:
        if o.multi:
            continue  # TomlOptions gives these an opt_ method
        if o.flag:
            flags.append([o.name, None, o.help])
        else:
            text = o.help if o.default in (None, ()) or o.multi else f"{o.help} [default: {_show(o.default)}]"
            parameters.append([o.name, None, None, text])
    return parameters, flags


def _show(value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return f"{value[0]}:{value[1]}"
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _collector(option: Option):
    def collect(self, value):
        self.repeated[option.name].append(value)

    collect.__doc__ = option.help
    return collect


class TomlOptions(usage.Options):
    """A usage.Options whose values may also come from a TOML ``--config``.

    Subclasses set ``options``; repeatable options may be given many times.
    After parsing, ``self.values`` maps every option name to its parsed value.
    """

    options: Sequence[Option] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        # An opt_<name> method per repeatable option: `--user a:b --user c:d`.
        super().__init_subclass__(**kwargs)
        for o in cls.options:
            if o.multi:
                setattr(cls, "opt_" + o.name.replace("-", "_"), _collector(o))

    def __init__(self) -> None:
        super().__init__()
        self.repeated: dict[str, list] = {o.name: [] for o in self.options if o.multi}
        self.argv: list[str] = []

    def parseOptions(self, options=None) -> None:
        # Kept so SIGHUP can parse the same command line (and re-read --config).
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def reparse(self) -> "TomlOptions":
        """A fresh instance parsed from the same arguments; raises UsageError."""
        again = type(self)()
        again.parseOptions(self.argv)
        return again

    def postOptions(self) -> None:
        command_line = {}
        for o in self.options:
            if o.multi:
                command_line[o.name] = self.repeated[o.name] or None
            elif o.flag:
                command_line[o.name] = True if self[o.name] else None
            else:
                command_line[o.name] = self[o.name]
        try:
            self.values = build(self.options, command_line, Path(self["config"]) if self.get("config") else None)
            self.validate()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def validate(self) -> None:
        """Check option combinations; raise ConfigError."""


def load_toml(path: Path, options: Sequence[Option]) -> dict:
    """Read a TOML config file; keys are option names."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - {o.name for o in options})
    if unknown:
        raise ConfigError(f"config {path}: unknown option(s) {', '.join(unknown)}")
    return data


def build(options: Sequence[Option], command_line: dict, config_file: Path | None = None) -> dict:
    """Merge command line (None = not given), TOML file and defaults into parsed values."""
    from_file = load_toml(config_file, options) if config_file else {}
    values = {}
    for o in options:
        raw = command_line.get(o.name)
        if raw is None:
            raw = from_file.get(o.name)
        if raw is None:
            values[o.name] = o.default
        elif o.multi:
            items = raw if isinstance(raw, list) else [raw]
            values[o.name] = tuple(o.parse(item) for item in items)
        else:
            values[o.name] = o.parse(raw)
    return values


def check_listen_ips(ips: Sequence[str]) -> tuple[str, ...]:
    """The --ip values, checked: no repeats, and no wildcard beside a specific address of its family
    (both would want the same ports)."""
    if len(set(ips)) != len(ips):
        raise ConfigError("an --ip is given twice")
    for ip in ips:
        address = ipaddress.ip_address(ip)
        if address.is_unspecified and any(ipaddress.ip_address(other).version == address.version
                                          for other in ips if other != ip):
            raise ConfigError(f"--ip {ip} already covers every IPv{address.version} address")
    return tuple(ips)


def default_relay_ips(listen_ips: Sequence[str], default_route=primary_address) -> tuple[str, ...]:
    """One relayed address per family listened on: the first --ip of the family, or for a wildcard the
    address of the family's default route (none for IPv6 without one)."""
    chosen = {}
    for ip in listen_ips:
        version = ipaddress.ip_address(ip).version
        if version not in chosen:
            chosen[version] = default_route(version) if ipaddress.ip_address(ip).is_unspecified else ip
    return tuple(ip for ip in chosen.values() if ip)


@dataclass(frozen=True)
class RelayConfig:
    """What the TURN relay runs with, validated."""

    realm: str = "txrendezvous"
    users: dict = field(default_factory=dict)
    auth_secrets: tuple = ()
    accounts: Path | None = None
    relay_ips: tuple = ()
    advertise_relay_ips: tuple = ()
    relay_ports: tuple = (49152, 65535)
    # The whole --relay-ports range when relay_ports is one worker's slice of it.
    relay_range: tuple | None = None
    allow_peers: tuple = ()
    deny_peers: tuple = ()
    nat64_prefixes: tuple = ()
    default_lifetime: int = 600
    max_lifetime: int = 3600
    user_quota: int = 0
    total_quota: int = 0
    max_permissions: int = 1000
    max_channels: int = 1000
    max_bps: int = 0
    allocation_log_rate: int = 20
    expire_with_credential: bool = False
    alternate_server: tuple | None = None
    drain_timeout: int = 600

    @classmethod
    def from_values(cls, values: dict, listen_ips: Sequence[str]) -> "RelayConfig":
        relay_ips = values["relay-ip"] or default_relay_ips(listen_ips)
        families = [ipaddress.ip_address(ip).version for ip in relay_ips]
        if len(set(families)) != len(families):
            raise ConfigError("at most one --relay-ip per address family")
        if any(ipaddress.ip_address(ip).is_unspecified for ip in relay_ips):
            raise ConfigError("relayed addresses need a specific --relay-ip (or a specific --ip)")
        if values["advertise-relay-ip"] and len(values["advertise-relay-ip"]) != len(relay_ips):
            raise ConfigError("give one --advertise-relay-ip per --relay-ip")
        if values["default-lifetime"] > values["max-lifetime"]:
            raise ConfigError("--default-lifetime exceeds --max-lifetime")
        return cls(
            realm=values["realm"],
            users=dict(values["user"]),
            auth_secrets=values["auth-secret"],
            accounts=values["accounts"],
            relay_ips=relay_ips,
            advertise_relay_ips=values["advertise-relay-ip"],
            relay_ports=values["relay-ports"],
            allow_peers=values["allow-peer"],
            deny_peers=values["deny-peer"],
            nat64_prefixes=values["nat64-prefix"],
            default_lifetime=values["default-lifetime"],
            max_lifetime=values["max-lifetime"],
            user_quota=values["user-quota"],
            total_quota=values["total-quota"],
            max_permissions=values["max-permissions"],
            max_channels=values["max-channels"],
            max_bps=values["max-bps"],
            allocation_log_rate=values["allocation-log-rate"],
            expire_with_credential=values["expire-with-credential"],
            alternate_server=values["alternate-server"],
            drain_timeout=values["drain-timeout"],
        )
