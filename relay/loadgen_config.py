"""What a load test is asked to do: LoadConfig, the limits its options must stay within, and
each client's packet budget."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

HARD_CAP_PACKETS = 100_000_000  # over all clients and processes, whatever the options say
MAX_CLIENTS = 20_000
MAX_PROCESSES = 64
MAX_RATE_PPS = 1_000_000  # per client
MAX_SECONDS = 24 * 3600
MIN_SIZE_BYTES = 16  # sequence number and send time
MAX_SIZE_BYTES = 65_000


class ConfigError(ValueError):
    """A load-test option is out of range or malformed."""


@dataclass(frozen=True)
class LoadConfig:
    """Everything one load test needs; picklable, so worker processes get a copy."""

    server: tuple[str, int]
    username: str
    password: str
    realm: str | None = None
    transport: str = "udp"
    clients: int = 1
    processes: int = 1
    mode: str = "channel"
    size: int = 100
    rate: float = 100.0
    seconds: float = 10.0
    peer_ip: str = "127.0.0.1"
    tls_verify: bool = True
    tls_ca_file: str | None = None
    tls_hostname: str | None = None
    tick_seconds: float | None = None  # None: auto_tick_seconds(clients in the worker)
    setup_timeout_seconds: float = 10.0
    drain_seconds: float = 1.0
    max_packets: int = HARD_CAP_PACKETS

    def validate(self) -> LoadConfig:
        """Return self, or raise ConfigError naming the bad option."""
        host, port = self.server
        if not host or not 0 < port < 65536:
            raise ConfigError(f"--server: bad address {host}:{port}")
        if self.transport not in ("udp", "tcp", "tls"):
            raise ConfigError("--transport must be udp, tcp or tls")
        if self.mode not in ("channel", "send"):
            raise ConfigError("--mode must be channel or send")
        check_range("--clients", self.clients, 1, MAX_CLIENTS)
        check_range("--processes", self.processes, 1, MAX_PROCESSES)
        check_range("--size", self.size, MIN_SIZE_BYTES, MAX_SIZE_BYTES)
        check_range("--rate", self.rate, 0.001, MAX_RATE_PPS)
        check_range("--seconds", self.seconds, 0.1, MAX_SECONDS)
        if self.tick_seconds is not None:
            check_range("--tick-ms", self.tick_seconds * 1000, 1, 1000)
        check_range("--setup-timeout", self.setup_timeout_seconds, 0.5, 600)
        check_range("--drain", self.drain_seconds, 0, 60)
        check_range("--max-packets", self.max_packets, 1, HARD_CAP_PACKETS)
        try:
            ipaddress.ip_address(self.peer_ip)
        except ValueError:
            raise ConfigError(f"--peer-ip must be an IP address, not {self.peer_ip!r}") from None
        if not self.username or not self.password:
            raise ConfigError("--user must be NAME:PASSWORD")
        return self

    @property
    def packets_per_client(self) -> int:
        """The send budget of one client: rate x seconds, within the packet caps."""
        return per_client_budget(self.rate, self.seconds, self.clients, self.max_packets)


def check_range(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{option} must be between {low:g} and {high:g}, not {value:g}")


def per_client_budget(rate: float, seconds: float, clients: int, max_packets: int) -> int:
    """Packets one client may send: ceil(rate x seconds), capped by max_packets / clients.

    max_packets itself is capped at HARD_CAP_PACKETS; every client may send
    at least one packet.
    """
    cap = min(max_packets, HARD_CAP_PACKETS) // clients
    return max(1, min(math.ceil(rate * seconds), cap))
