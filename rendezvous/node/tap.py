"""``twistd rendezvous``: Options and makeService, the composition root.

A super node: the STUN server (RFC 8489 Binding, RFC 5780 behaviour
discovery, RFC 3489 classic clients) and the TURN relay (RFC 8656) on UDP,
TCP and TLS, built from a ``RendezvousConfig``.
"""

import dataclasses
import ipaddress
import secrets

from twisted.application import internet, service
from twisted.python import usage

from relay.config import TomlOptions, primary_address, usage_options
from relay.datagrams import receive_drops
from relay.drain import DrainService
from relay.listening import ListeningPort, listening_ips
from relay.listeners import ServerStreamFactory
from relay.service import add_listeners, make_relay, own_endpoints
from rendezvous.stun.addresses import address_text
from rendezvous.stun.binding import BindingServer

from rendezvous.node.accounts import AccountError, AccountStore, StoreUnavailable
from rendezvous.node.accounts_async import AsyncAccounts, KeyMirror
from rendezvous.node.admin import AdminResource, LocalView, admin_token
from rendezvous.node.config import RENDEZVOUS_OPTIONS, RendezvousConfig
from rendezvous.node.echo import EchoCore, EchoDatagramProtocol, EchoStreamFactory
from rendezvous.node.gossip import GossipService
from rendezvous.node.logs import TopService
from rendezvous.node.metrics import metrics_site
from rendezvous.node.redis_directory import RedisDirectory
from rendezvous.node.signaling import SignalingConfig, SignalingNode, node_name
from rendezvous.node.signaling_protocol import DemuxFactory, SignalingFactory, SignalingService
from rendezvous.node.tls import ALPN_PROTOCOLS, WEB_ALPN_PROTOCOLS, ReloadableTLS
from rendezvous.node.results.retention import retention_service
from rendezvous.node.results.store import ResultsStore
from rendezvous.node.results.view import ResultsView
from rendezvous.node.web import site


ACCOUNTS_FILE = "accounts.sqlite"


class Options(TomlOptions):
    synopsis = "[options]"
    longdesc = (
        "Run a txrendezvous super node: a STUN server (RFC 8489) with RFC 5780 NAT "
        "behaviour discovery and a TURN relay (RFC 8656) on UDP, TCP and TLS. Every "
        "option can also be set in a TOML file given with --config (keys are the "
        "option names; repeatable options take a list)."
    )
    options = RENDEZVOUS_OPTIONS
    optParameters, optFlags = usage_options(RENDEZVOUS_OPTIONS)
    optParameters = optParameters + [["config", "c", None, "TOML config file."]]

    def validate(self) -> None:
        self.config = RendezvousConfig.from_values(self.values)


def _relay_config(options: Options, turn_secret: str):
    if options.config.relay is None:
        raise usage.UsageError("--no-relay cannot be switched on by a reload")
    relay = options.config.relay
    if turn_secret in relay.auth_secrets:
        return relay
    return dataclasses.replace(relay, auth_secrets=(*relay.auth_secrets, turn_secret))


def makeService(options, reactor=None) -> service.MultiService:
    """Build the MultiService that ``twistd rendezvous`` runs."""
    if reactor is None:
        from twisted.internet import reactor
    config: RendezvousConfig = options.config
    top = TopService(options.values["log-format"])
    ips = listening_ips(config.ips)
    groups = config.address_groups(ips)
    software = config.software.encode("utf-8") if config.software else None
    binding = BindingServer(groups, software=config.software)
    hosts = _public_hosts(config, ips)
    realm = config.relay.realm if config.relay else "txrendezvous"
    accounts, turn_keys = _accounts(config, reactor, realm)
    accounts.setServiceParent(top)
    turn = None
    turn_secret = None
    relays = []
    if config.relay is not None:
        listen_ips = [*ips, *config.alt_ips.values(), *config.advertise_ips.values(),
                      *config.advertise_alt_ips.values()]
        # The node hands out REST-style credentials for its own relay; with
        # no operator secret it signs them with one of its own.
        turn_secret = config.relay.auth_secrets[0] if config.relay.auth_secrets else secrets.token_urlsafe(32)
        # Every port this process listens on, which the relay must never relay to.
        more = [(ip, port) for ip in ips for port in (config.http_port, config.https_port, config.echo_port) if port]
        endpoints = own_endpoints(groups, config.tls_port, more + ([config.metrics] if config.metrics else []))
        relay = make_relay(reactor, _relay_config(options, turn_secret), listen_ips, software,
                           extra_sources=[turn_keys], own_endpoints=endpoints,
                           reload=lambda: _relay_config(options.reparse(), turn_secret))
        relay.setServiceParent(top)
        turn = relay.turn
        relays = _turn_urls(config, hosts)
    name = config.node_name or node_name()
    static_cache = [{"host": host, "port": port} for host, port in config.peer_nodes]
    directory = None
    if isinstance(turn_keys, KeyMirror) and config.relay is not None:
        turn_keys.setServiceParent(top)
    if config.redis:
        directory = RedisDirectory(reactor, config.redis, name, hosts[0], config.port)
        directory.setServiceParent(top)
    node = SignalingNode(accounts, reactor, SignalingConfig(
        realm=realm,
        node_name=name,
        open_registration=config.open_registration,
        latest_client_version=config.latest_client_version,
        host_cache=list(static_cache),
        relays=relays,
        turn_secret=turn_secret,
        address=(hosts[0], config.port),
        public_ips=tuple(hosts),
        results_url=_results_url(config, hosts[0]),
    ), directory)
    if directory is not None:
        directory.node = node
    SignalingService(node, reactor).setServiceParent(top)
    GossipService(reactor, node).setServiceParent(top)
    drain = DrainService(reactor, turn, config.relay.drain_timeout if config.relay else 600,
                         hooks=[node.start_draining], sessions=lambda: len(node.sessions))
    drain.setServiceParent(top)
    if config.metrics:
        host, port = config.metrics
        view, token = LocalView(reactor, turn, node), admin_token(config.state_dir)
        internet.TCPServer(port, metrics_site(binding, turn, node, ready=lambda: not drain.draining,
                                              admin=lambda samples: AdminResource(view, token, samples),
                                              udp_drops=lambda: receive_drops(reactor)),
                           interface=host).setServiceParent(top)
    signaling = SignalingFactory(node)
    reloads = relay.reload_hooks if config.relay is not None else []
    tls = _tls(config, ALPN_PROTOCOLS, reloads) if config.tls_port else None
    add_listeners(top, groups, binding, turn, config.tls_port, tls,
                  wrap=lambda stun: DemuxFactory(stun, signaling), reactor=reactor, wakeup_hold_us=config.wakeup_hold)
    web = site(node, _results(top, config, accounts, reactor), reactor)
    _add_web_ports(top, reactor, config, ips, binding, turn, signaling, web, reloads)
    if config.echo_port:
        _add_echo(top, config, ips, reactor)
    top.binding_server = binding
    return top


def _accounts(config: RendezvousConfig, reactor, realm: str) -> tuple[AsyncAccounts, object]:
    """The account store (its schema made or upgraded now) and the relay's source of TURN keys.

    An SQLite file answers the relay's key lookups directly; a PostgreSQL
    database, a network away, through a KeyMirror.
    """
    database = config.database or (config.relay.accounts if config.relay else None) \
        or config.state_dir / ACCOUNTS_FILE
    try:
        store = AccountStore(database)
    except (AccountError, StoreUnavailable) as e:
        raise usage.UsageError(f"account store: {e}") from None
    accounts = AsyncAccounts(lambda: AccountStore(database, upgrade=False), reactor)
    if str(database).startswith(("postgresql://", "postgres://")):
        store.close()
        return accounts, KeyMirror(accounts, realm, reactor)
    return accounts, store


def _add_echo(top, config: RendezvousConfig, ips: tuple, reactor) -> None:
    """The rate-limited echo service for ALG detection, on UDP and TCP at each IP (rendezvous.node.echo)."""
    core = EchoCore()
    for ip in ips:
        ListeningPort(reactor, "udp", ip, config.echo_port, EchoDatagramProtocol(core, reactor)).setServiceParent(top)
        ListeningPort(reactor, "tcp", ip, config.echo_port, EchoStreamFactory(core, reactor)).setServiceParent(top)


def _results(top, config: RendezvousConfig, accounts: AsyncAccounts, reactor) -> ResultsView | None:
    """The field test's view over the account store's database, with its retention sweep."""
    if not config.results:
        return None
    store = ResultsStore(accounts)
    if config.results_retention_days:
        retention_service(store, reactor, config.results_retention_days).setServiceParent(top)
    return ResultsView(store, reactor)


def _tls(config: RendezvousConfig, protocols: list[bytes], reloads: list) -> ReloadableTLS:
    """TLS for a listener; SIGHUP re-reads the certificate."""
    try:
        tls = ReloadableTLS(config.cert, config.key, config.state_dir, protocols)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    reloads.append(tls.reload)
    return tls


def _add_web_ports(top, reactor, config: RendezvousConfig, ips: tuple, binding, turn, signaling, web,
                   reloads) -> None:
    """The firewall ports at each IP: STUN/TURN, signaling and HTTP told apart by first bytes.

    Ports below 1024 are bound during twistd's privileged start-up, before
    --uid/--gid drop root (or with CAP_NET_BIND_SERVICE).
    """
    tls = _tls(config, WEB_ALPN_PROTOCOLS, reloads) if config.https_port else None
    for ip in ips:
        if config.http_port:
            stun = ServerStreamFactory(binding, turn, (ip, config.http_port), "tcp")
            ListeningPort(reactor, "tcp", ip, config.http_port,
                          DemuxFactory(stun, signaling, web)).setServiceParent(top)
        if config.https_port:
            stun = ServerStreamFactory(binding, turn, (ip, config.https_port), "tls")
            ListeningPort(reactor, "tcp", ip, config.https_port, DemuxFactory(stun, signaling, web),
                          tls).setServiceParent(top)


def _public_hosts(config: RendezvousConfig, ips: tuple) -> list[str]:
    """The addresses clients should use for this node, one per family listened on, in the order of ips.

    A family's advertised address, else its specific --ip, else its relayed
    address or the address of its default route.
    """
    hosts: dict[int, str] = {}
    relay_ips = {ipaddress.ip_address(ip).version: ip for ip in (config.relay.relay_ips if config.relay else ())}
    for ip in ips:
        version = ipaddress.ip_address(ip).version
        if version in hosts:
            continue
        host = config.advertise_ips.get(version)
        if host is None and not ipaddress.ip_address(ip).is_unspecified:
            host = ip
        host = host or relay_ips.get(version) or primary_address(version)
        if host:
            hosts[version] = host
    return list(hosts.values()) or [primary_address()]


def _results_url(config: RendezvousConfig, host: str) -> str | None:
    """Where clients submit field-test results (host: this node's public address): the TLS firewall port,
    else the plain one."""
    if not config.results or not (config.https_port or config.http_port):
        return None
    if config.https_port:
        return f"https://{address_text((host, config.https_port))}/api/results"
    return f"http://{address_text((host, config.http_port))}/api/results"


def _turn_urls(config: RendezvousConfig, hosts: list[str]) -> list[str]:
    """The TURN URLs (RFC 7065) of this node's relay at each of its public addresses, for clients."""
    urls = []
    for host in hosts:
        turn = address_text((host, config.port))
        urls += [f"turn:{turn}?transport=udp", f"turn:{turn}?transport=tcp"]
        if config.tls_port:
            urls.append(f"turns:{address_text((host, config.tls_port))}?transport=tcp")
    return urls
