"""Typed configuration of ``twistd rendezvous``: listeners, RFC 5780, and the relay.

The option machinery and the listener and relay options live in
``relay.config``; this module adds the RFC 5780 alternate address,
``--no-relay``, the firewall ports and the echo service.
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from rendezvous.stun.binding import Addresses

from relay.config import (
    LISTENER_OPTIONS,
    RELAY_OPTIONS,
    ConfigError,
    Option,
    RelayConfig,
    check_listen_ips,
    parse_bool,
    parse_count,
    parse_host_port,
    parse_ip,
    parse_port,
    parse_text,
)


RENDEZVOUS_OPTIONS = LISTENER_OPTIONS + [
    Option("alt-ip", parse_ip, (),
           "Second IP for RFC 5780 CHANGE-REQUEST, paired with the one specific --ip of its family "
           "(repeatable, one per family).", multi=True),
    Option("alt-port", parse_port, 3479, "Second port for RFC 5780 CHANGE-REQUEST (used with --alt-ip)."),
    Option("advertise-ip", parse_ip, (),
           "Public address of the --ip of its family when behind a 1:1 NAT (repeatable, one per family).",
           multi=True),
    Option("advertise-alt-ip", parse_ip, (),
           "Public address of the --alt-ip of its family when behind a 1:1 NAT (repeatable, one per family).",
           multi=True),
    Option("no-relay", parse_bool, False, "Run without the TURN relay.", flag=True),
    Option("open-registration", parse_bool, False, "Let anyone register an account over signaling.", flag=True),
    Option("latest-client-version", parse_text, None, "Client version announced at login, so clients can upgrade."),
    Option("peer-node", parse_host_port, (), "Another super node HOST:PORT for the host cache (repeatable).",
           multi=True),
    Option("node-name", parse_text, None, "This node's name in presence and lookups (default: host:pid)."),
    Option("redis", parse_text, None,
           "Redis URL (redis://host:port/db) shared by super nodes: presence, node registry, routing."),
    Option("web-ports", parse_bool, False,
           "Also listen on TCP 80 (plain) and 443 (TLS) for STUN/TURN, signaling and HTTP.", flag=True),
    Option("http-port", parse_port, None, "Plain firewall port (STUN/TURN, signaling, HTTP); 80 with --web-ports."),
    Option("https-port", parse_port, None, "TLS firewall port (STUN/TURN, signaling, HTTPS); 443 with --web-ports."),
    Option("echo-port", parse_port, 0,
           "UDP+TCP port of the rate-limited echo service for ALG detection (nat-check uses 5060); 0 = off."),
    Option("no-results", parse_bool, False,
           "Do not serve the field test (/results pages, /api/results submissions) on the firewall ports.",
           flag=True),
    Option("results-retention-days", parse_count, 365,
           "Delete field-test submissions older than this many days; 0 keeps them forever."),
    Option("database", parse_text, None,
           "Account store: postgresql://USER:PASSWORD@HOST/DB, shared by super nodes, or an SQLite file "
           "(default: --accounts, else STATE_DIR/accounts.sqlite)."),
] + RELAY_OPTIONS


def _version(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _by_family(ips: tuple, option: str) -> dict[int, str]:
    """--alt-ip and the --advertise-* options: at most one per address family."""
    chosen: dict[int, str] = {}
    for ip in ips:
        if _version(ip) in chosen:
            raise ConfigError(f"at most one --{option} per address family")
        chosen[_version(ip)] = ip
    return chosen


@dataclass(frozen=True)
class RendezvousConfig:
    """What ``twistd rendezvous`` runs with, validated.

    ``ips`` are the listening addresses (by default the IPv4 and the IPv6
    wildcard); the alternate and advertised addresses are keyed by IP
    version and belong to the one --ip of their family.
    """

    ips: tuple
    port: int
    tls_port: int
    alt_ips: dict
    alt_port: int
    advertise_ips: dict
    advertise_alt_ips: dict
    cert: Path | None
    key: Path | None
    state_dir: Path
    software: str | None
    relay: RelayConfig | None
    open_registration: bool = False
    latest_client_version: str | None = None
    peer_nodes: tuple = ()
    node_name: str | None = None
    http_port: int | None = None
    https_port: int | None = None
    redis: str | None = None
    metrics: tuple | None = None
    wakeup_hold: int = 0  # µs, relay.service.add_listeners
    echo_port: int = 0
    results: bool = True
    results_retention_days: int = 365
    database: str | None = None

    def address_groups(self, ips: tuple | None = None) -> list[Addresses]:
        """A Binding address group per listening IP (of ips, by default all), with its family's alternate."""
        groups = []
        for ip in self.ips if ips is None else ips:
            version = _version(ip)
            alt_ip = self.alt_ips.get(version)
            groups.append(Addresses(
                ip=ip, port=self.port, alt_ip=alt_ip, alt_port=self.alt_port if alt_ip else None,
                advertise_ip=self.advertise_ips.get(version), advertise_alt_ip=self.advertise_alt_ips.get(version),
            ))
        return groups

    @classmethod
    def from_values(cls, values: dict) -> "RendezvousConfig":
        ips = check_listen_ips(values["ip"])
        alt_ips = _by_family(values["alt-ip"], "alt-ip")
        advertise_ips = _by_family(values["advertise-ip"], "advertise-ip")
        advertise_alt_ips = _by_family(values["advertise-alt-ip"], "advertise-alt-ip")
        for option, chosen in (("alt-ip", alt_ips), ("advertise-ip", advertise_ips)):
            for version, ip in chosen.items():
                own = [listen for listen in ips if _version(listen) == version]
                if not own:
                    raise ConfigError(f"--{option} {ip} needs an --ip of the same address family")
                if len(own) > 1:
                    raise ConfigError(f"--{option} {ip} needs one --ip of its family, not {len(own)}")
        for version, alt_ip in alt_ips.items():
            (ip,) = [ip for ip in ips if _version(ip) == version]
            if ipaddress.ip_address(ip).is_unspecified:
                raise ConfigError("--alt-ip needs a specific --ip of its family, not a wildcard")
            if alt_ip == ip:
                raise ConfigError("--alt-ip must differ from --ip")
        if alt_ips and values["alt-port"] == values["port"]:
            raise ConfigError("--alt-port must differ from --port")
        if set(advertise_alt_ips) - set(alt_ips):
            raise ConfigError("--advertise-alt-ip needs --alt-ip of its family")
        if (values["cert"] is None) != (values["key"] is None):
            raise ConfigError("--cert and --key go together")
        return cls(
            ips=ips,
            port=values["port"],
            tls_port=values["tls-port"],
            alt_ips=alt_ips,
            alt_port=values["alt-port"],
            advertise_ips=advertise_ips,
            advertise_alt_ips=advertise_alt_ips,
            cert=values["cert"],
            key=values["key"],
            state_dir=values["state-dir"],
            software=values["software"],
            relay=None if values["no-relay"] else RelayConfig.from_values(values, ips),
            open_registration=values["open-registration"],
            latest_client_version=values["latest-client-version"],
            peer_nodes=values["peer-node"],
            node_name=values["node-name"],
            http_port=values["http-port"] or (80 if values["web-ports"] else None),
            https_port=values["https-port"] or (443 if values["web-ports"] else None),
            redis=values["redis"],
            metrics=values["metrics"],
            wakeup_hold=values["wakeup-hold"],
            echo_port=values["echo-port"],
            results=not values["no-results"],
            results_retention_days=values["results-retention-days"],
            database=values["database"],
        )
