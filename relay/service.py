"""Twisted services of the relay: the TURN core's clock and the listeners.

``RelayService`` owns the TURN core, its relay ports and the once-a-second
expiry sweep. ``add_listeners`` binds the client-facing UDP, TCP and TLS
ports for a Binding core and (optionally) a TURN core; both ``twistd relay``
and ``twistd rendezvous`` use it.
"""

import signal
from collections.abc import Sequence

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from rendezvous.stun.binding import Addresses, BindingServer

from .allocation import family_of
from .config import ConfigError, RelayConfig
from .credentials import Credentials, RestSecrets, StaticUsers
from .datagrams import hold_wakeups
from .listening import ListeningPort
from .listeners import ServerStreamFactory, UdpEndpoints
from .peer_policy import PeerPolicy
from .relay_ports import RelayPorts
from .nonces import Nonces
from .server import RelayPolicy, TurnServer
from .tcp_relay import TcpRelay

log = Logger()


class RelayService(service.Service):
    """Runs the TURN core: expiry sweep on start, allocations freed on stop.

    With a ``reload`` callable (returning a fresh RelayConfig or raising
    ConfigError), SIGHUP re-reads users, secrets, peer rules and quotas and
    applies them without touching existing allocations.
    """

    def __init__(self, turn: TurnServer, ports: RelayPorts, clock, reload=None, extra_sources=()) -> None:
        self.turn = turn
        self.ports = ports
        self.reload = reload
        self.reload_hooks: list = []  # more things SIGHUP re-reads (TLS certificates)
        self.extra_sources = extra_sources
        self._sweep = LoopingCall(lambda: turn.expire(clock.seconds()))
        self._sweep.clock = clock
        self._previous_handler = None

    def startService(self) -> None:
        super().startService()
        self._sweep.start(1.0, now=False)
        if self.reload is not None:
            from twisted.internet import reactor

            self._previous_handler = signal.signal(
                signal.SIGHUP, lambda signum, frame: reactor.callFromThread(self.reload_now)
            )

    def stopService(self):
        if self._sweep.running:
            self._sweep.stop()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
        self.turn.stop()
        self.ports.stop()
        return super().stopService()

    def reload_now(self) -> None:
        """Re-read the configuration; keep the old one if the new one is bad."""
        try:
            config = self.reload()
        except (ConfigError, usage.UsageError) as e:
            log.error("reload refused, keeping the running configuration: {error}", error=str(e))
            return
        self.apply(config)
        log.info("reloaded users, secrets, peer rules and quotas; {count} allocations kept",
                 count=len(self.turn.allocations))
        for hook in self.reload_hooks:
            try:
                hook()
            except ValueError as e:
                log.error("reload refused for part of the configuration: {error}", error=str(e))

    def apply(self, config: RelayConfig) -> None:
        """Use config's credentials, peer rules and quotas from now on."""
        turn = self.turn
        turn.credentials = credentials_for(config, self.extra_sources)
        old = turn.peers
        turn.peers = PeerPolicy(config.allow_peers, config.deny_peers, own_addresses=old.own,
                                relayed_addresses=old.relayed, relay_ports=old.relay_ports,
                                own_endpoints=old.own_endpoints, is_local=old.is_local,
                                nat64=config.nat64_prefixes)
        turn.policy = _policy(config, turn.policy.families)


def credentials_for(config: RelayConfig, extra_sources=()) -> Credentials:
    """The credential sources a RelayConfig names (plus e.g. the account store)."""
    sources = [StaticUsers(config.users, config.realm)] if config.users else []
    sources += list(extra_sources)
    rest = RestSecrets(config.auth_secrets) if config.auth_secrets else None
    return Credentials(sources, rest)


def _policy(config: RelayConfig, families: frozenset) -> RelayPolicy:
    return RelayPolicy(
        realm=config.realm,
        default_lifetime_seconds=config.default_lifetime,
        max_lifetime_seconds=config.max_lifetime,
        user_quota=config.user_quota,
        total_quota=config.total_quota,
        max_permissions=config.max_permissions,
        max_channels=config.max_channels,
        max_bps=config.max_bps,
        allocation_log_rate=config.allocation_log_rate,
        expire_with_credential=config.expire_with_credential,
        families=families,
    )


def make_relay(reactor, config: RelayConfig, listen_ips=(), software: bytes | None = None,
               extra_sources=(), reload=None, nonce_secret: bytes | None = None,
               own_endpoints=()) -> RelayService:
    """Build the TURN core and its relay ports from a RelayConfig.

    own_endpoints are the (address, port) pairs the process listens on (all
    of them: STUN/TURN, TLS, firewall, metrics and admin, echo; a wildcard
    address meaning every local one), which no peer rule opens; each is also
    refused at the advertised address of its --relay-ip.
    """
    ips = {family_of(ip): ip for ip in config.relay_ips}
    advertise = {family_of(ip): adv for ip, adv in zip(config.relay_ips, config.advertise_relay_ips)}
    ports = RelayPorts(reactor, ips, *config.relay_ports, advertise=advertise)
    policy = _policy(config, frozenset(ips))
    aliases = dict(zip(config.relay_ips, config.advertise_relay_ips))
    peers = PeerPolicy(
        config.allow_peers, config.deny_peers,
        own_addresses=list(config.relay_ips) + list(config.advertise_relay_ips) + list(listen_ips),
        relayed_addresses=list(config.relay_ips) + list(config.advertise_relay_ips),
        relay_ports=config.relay_range or config.relay_ports,
        own_endpoints=[*own_endpoints, *((aliases[ip], port) for ip, port in own_endpoints if ip in aliases)],
        nat64=config.nat64_prefixes,
    )
    warn_ephemeral_overlap(config.relay_range or config.relay_ports)
    tcp = TcpRelay(reactor, ips, *config.relay_ports, advertise=advertise)
    nonces = Nonces(policy.nonce_lifetime_seconds, nonce_secret)
    turn = TurnServer(policy, credentials_for(config, extra_sources), peers, ports, reactor,
                      nonces=nonces, software=software, tcp=tcp)
    turn.alternate = config.alternate_server
    log.info("TURN relay for realm {realm} on {ips}, ports {low}-{high}", realm=config.realm,
             ips=list(config.relay_ips), low=config.relay_ports[0], high=config.relay_ports[1])
    return RelayService(turn, ports, reactor, reload, extra_sources)


def ephemeral_ports(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int] | None:
    """The kernel's range of ephemeral ports (net.ipv4.ip_local_port_range), or None where unknown."""
    try:
        with open(path) as f:
            low, high = (int(part) for part in f.read().split())
    except (OSError, ValueError):
        return None
    return low, high


def warn_ephemeral_overlap(relay_ports: tuple[int, int], path: str = "/proc/sys/net/ipv4/ip_local_port_range",
                           ) -> bool:
    """Log a warning (and return True) when the relay port range overlaps the kernel's ephemeral ports.

    Other processes' sockets then sit among the relayed ports; they are never
    peers (only live relayed addresses are), but the range and the ports they
    take are shared. docs/OPERATING.md says how to separate them.
    """
    ephemeral = ephemeral_ports(path)
    if ephemeral is None or relay_ports[1] < ephemeral[0] or ephemeral[1] < relay_ports[0]:
        return False
    log.warn("relay ports {low}-{high} overlap the kernel's ephemeral ports {ephemeral_low}-{ephemeral_high} "
             "(net.ipv4.ip_local_port_range): separate them with sysctl or --relay-ports",
             low=relay_ports[0], high=relay_ports[1], ephemeral_low=ephemeral[0], ephemeral_high=ephemeral[1])
    return True


def own_endpoints(groups: Sequence[Addresses], tls_port: int = 0, more=()) -> list[tuple[str, int]]:
    """What add_listeners binds for the address groups and tls_port, plus more (HOST, PORT) pairs, each
    also at its advertised address: the endpoints a relay must never relay to (``relay.peer_policy``)."""
    endpoints = [endpoint for addresses in groups for endpoint in addresses.endpoints()]
    if tls_port:
        endpoints += [(ip, tls_port) for ip in tls_ips(groups)]
    endpoints += [tuple(endpoint) for endpoint in more]
    advertised = {}
    for addresses in groups:
        advertised.update({addresses.ip: addresses.advertise_ip, addresses.alt_ip: addresses.advertise_alt_ip})
    return endpoints + [(advertised[ip], port) for ip, port in endpoints if advertised.get(ip)]


def tls_ips(groups: Sequence[Addresses]) -> list[str]:
    """The IPs TLS listens on: each group's primary and alternate."""
    return [ip for addresses in groups for ip in (addresses.ip, addresses.alt_ip) if ip]


def add_listeners(parent: service.MultiService, groups: Sequence[Addresses], binding: BindingServer,
                  turn: TurnServer | None, tls_port: int = 0, tls_options=None, wrap=None,
                  reactor=None, reuse_port: bool = False, wakeup_hold_us: int = 0) -> None:
    """UDP and TCP on every endpoint of each address group; TLS on each IP at tls_port.

    Each socket is bound by ``relay.listening`` (an IPv6 one IPv6-only).
    wrap, if given, wraps each stream factory (to share the port with
    another protocol, as the super node does with signaling). With
    reuse_port the sockets are bound with SO_REUSEPORT, for workers sharing
    the ports (relay.workers); otherwise a busy port fails the start.
    wakeup_hold_us bounds the hold that moderates the UDP sockets' wakeups
    under a steady light load (``relay.datagrams.hold_wakeups``).
    """
    if reactor is None:
        from twisted.internet import reactor
    hold_wakeups(reactor, wakeup_hold_us / 1e6)
    wrap = wrap or (lambda factory: factory)
    udp = UdpEndpoints(binding, turn)

    def listen(kind, ip, port, target, tls=None) -> None:
        ListeningPort(reactor, kind, ip, port, target, tls, reuse_port).setServiceParent(parent)

    for addresses in groups:
        for ip, port in addresses.endpoints():
            stream = wrap(ServerStreamFactory(binding, turn, (ip, port), "tcp"))
            if turn is not None and turn.tcp is not None:
                turn.tcp.listeners[(ip, port)] = stream
            listen("udp", ip, port, udp.protocol((ip, port)))
            listen("tcp", ip, port, stream)
    if tls_port:
        for ip in tls_ips(groups):
            stream = wrap(ServerStreamFactory(binding, turn, (ip, tls_port), "tls"))
            if turn is not None and turn.tcp is not None:
                turn.tcp.listeners[(ip, tls_port)] = stream  # the plain side, for TlsProxy pairs
            listen("tcp", ip, tls_port, stream, tls_options)
