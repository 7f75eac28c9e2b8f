"""``twistd relay``: a standalone TURN relay (RFC 8656), the composition root.

Relays are stateless towards each other; run many behind DNS SRV with REST
shared secrets. The relay also answers STUN Binding (RFC 8656 §3: a TURN
server is a STUN server).
"""

from twisted.application import internet, service
from twisted.python import usage

from rendezvous.node.accounts import AccountStore
from rendezvous.node.admin import AdminResource, LocalView, admin_token
from rendezvous.node.logs import TopService
from rendezvous.node.metrics import metrics_site
from rendezvous.stun.binding import Addresses, BindingServer
from rendezvous.node.tls import ReloadableTLS
from rendezvous.node.worker_view import WorkerFleet, socket_path

import dataclasses
import os
import signal

from relay.config import (
    LISTENER_OPTIONS,
    RELAY_OPTIONS,
    ConfigError,
    Option,
    RelayConfig,
    TomlOptions,
    check_listen_ips,
    parse_count,
    usage_options,
)
from relay.datagrams import receive_drops
from relay.drain import DrainService
from relay.listening import ListeningPort, listening_ips
from relay.handoff import MAX_WORKERS, HandoffFactory
from relay.quotas import SharedAllocationCounts, quota_path
from relay.service import add_listeners, make_relay, own_endpoints
from relay.workers import (
    NONCE_SECRET_ENV,
    WorkerSupervisor,
    cores,
    die_with_parent,
    inherited_listeners,
    port_slice,
)

PROCESS_OPTIONS = [
    Option("workers", parse_count, 0,
           "Relay processes sharing the ports with SO_REUSEPORT, each with its own slice of --relay-ports; "
           "0 runs one per core, 1 a single process."),
]


class Options(TomlOptions):
    synopsis = "[options]"
    longdesc = (
        "Run a txrendezvous TURN relay (RFC 8656) on UDP, TCP and TLS. Every option can "
        "also be set in a TOML file given with --config."
    )
    options = LISTENER_OPTIONS + RELAY_OPTIONS + PROCESS_OPTIONS
    optParameters, optFlags = usage_options(options)
    optParameters = optParameters + [
        ["config", "c", None, "TOML config file."],
        ["worker-index", None, None, "Internal: this process's worker number (set by the first worker)."],
    ]

    def validate(self) -> None:
        if (self.values["cert"] is None) != (self.values["key"] is None):
            raise ConfigError("--cert and --key go together")
        self.ips = check_listen_ips(self.values["ip"])
        config = RelayConfig.from_values(self.values, self.ips)
        low, high = config.relay_ports
        # By default one per core, as many as the relay port range has room for.
        workers = self.values["workers"] or max(1, min(cores(), MAX_WORKERS, (high - low + 1) // 2))
        index = int(self["worker-index"] or 0)
        if not 0 <= index < workers:
            raise ConfigError("--worker-index out of range")
        if workers > MAX_WORKERS:
            raise ConfigError(f"at most {MAX_WORKERS} workers")
        if workers > 1:
            try:
                config = dataclasses.replace(config, relay_ports=port_slice(*config.relay_ports, workers, index),
                                             relay_range=config.relay_ports)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self.workers, self.worker_index, self.relay_config = workers, index, config


def makeService(options, reactor=None) -> service.MultiService:
    """Build the MultiService that ``twistd relay`` runs."""
    if reactor is None:
        from twisted.internet import reactor
    values = options.values
    top = TopService(values["log-format"])
    software = values["software"].encode("utf-8") if values["software"] else None
    accounts = [AccountStore(options.relay_config.accounts)] if options.relay_config.accounts else []
    nonce_secret = supervisor = None
    if options.workers > 1:
        if options.worker_index == 0:
            nonce_secret = os.urandom(32)
            supervisor = WorkerSupervisor(reactor, options.workers, options.argv, nonce_secret)
            supervisor.setServiceParent(top)
        else:
            die_with_parent()
            nonce_secret = bytes.fromhex(os.environ.pop(NONCE_SECRET_ENV))
    ips = listening_ips(options.ips)
    groups = [Addresses(ip=ip, port=values["port"]) for ip in ips]
    endpoints = own_endpoints(groups, values["tls-port"], [values["metrics"]] if values["metrics"] else [])
    relay = make_relay(reactor, options.relay_config, ips, software, extra_sources=accounts,
                       reload=lambda: options.reparse().relay_config, nonce_secret=nonce_secret,
                       own_endpoints=endpoints)
    relay.turn.id_prefix = str(options.worker_index)
    relay.setServiceParent(top)
    tls = None
    if values["tls-port"]:
        try:
            tls = ReloadableTLS(values["cert"], values["key"], values["state-dir"])
            relay.reload_hooks.append(tls.reload)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    drain = DrainService(reactor, relay.turn, options.relay_config.drain_timeout)
    if supervisor is not None:
        # The first process reloads and drains the others too, and waits for them to end.
        relay.reload_hooks.append(lambda: supervisor.signal_workers(signal.SIGHUP))
        drain.hooks.append(supervisor.drain)
        drain.sessions = lambda: len(supervisor.processes)
    drain.setServiceParent(top)
    binding = BindingServer(groups, software=values["software"])
    add_listeners(top, groups, binding, relay.turn, values["tls-port"], tls, reactor=reactor,
                  reuse_port=options.workers > 1, wakeup_hold_us=values["wakeup-hold"])
    shared = [s for s in top if isinstance(s, ListeningPort)]
    if supervisor is not None:
        supervisor.listeners = shared
    elif options.workers > 1:
        inherited = inherited_listeners()
        for listener in shared:
            listener.inherited_fd = inherited.get(listener.key)
    if options.workers > 1:
        _add_handoff(top, reactor, options, relay.turn)
        _share_counts(reactor, options, relay.turn)
    if values["metrics"]:
        _add_status(top, reactor, options, binding, relay.turn, ready=lambda: not drain.draining)
    return top


def _add_handoff(top, reactor, options, turn) -> None:
    """Across workers, CONNECTION-IDs and RESERVATION-TOKENs name their worker: ConnectionBinds move
    to it (RFC 6062), and it gives up reserved relay sockets (RFC 8656 §7.2) to the worker asking."""
    index = options.worker_index
    supervisor_pid = os.getpid() if index == 0 else os.getppid()
    paths = {i: socket_path(options.values["state-dir"], supervisor_pid, i, "fd") for i in range(options.workers)}
    others = {i: path for i, path in paths.items() if i != index}
    for holder in (turn.tcp, turn.ports):
        holder.worker_index, holder.handoff_paths = index, others
    paths[index].parent.mkdir(parents=True, exist_ok=True)
    paths[index].unlink(missing_ok=True)
    handoff = HandoffFactory(reactor, turn.tcp.listeners, turn.ports)
    internet.UNIXServer(str(paths[index]), handoff, mode=0o600).setServiceParent(top)


def _share_counts(reactor, options, turn) -> None:
    """Quotas hold for the whole relay: every worker counts its allocations in one file (relay.quotas)."""
    first = options.worker_index == 0
    path = quota_path(options.values["state-dir"], os.getpid() if first else os.getppid())
    if first:
        path.unlink(missing_ok=True)  # the workers start after this, and open what this creates
    turn.counts = counts = SharedAllocationCounts(path, options.worker_index, options.workers)

    def close() -> None:
        counts.close()
        if first:
            path.unlink(missing_ok=True)

    reactor.addSystemEventTrigger("after", "shutdown", close)


def _add_status(top, reactor, options, binding, turn, ready) -> None:
    """Metrics, health and the admin API: public on the first worker, private on the others."""
    values = options.values
    token = admin_token(values["state-dir"])
    local = LocalView(reactor, turn)
    index, workers = options.worker_index, options.workers

    def drops() -> int:
        return receive_drops(reactor)

    if index > 0:
        path = socket_path(values["state-dir"], os.getppid(), index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        site = metrics_site(binding, turn, ready=ready, admin=lambda samples: AdminResource(local, token, samples),
                            udp_drops=drops)
        internet.UNIXServer(str(path), site, mode=0o600).setServiceParent(top)
        return
    view = local
    fleet = None
    if workers > 1:
        paths = {i: socket_path(values["state-dir"], os.getpid(), i) for i in range(1, workers)}
        view = fleet = WorkerFleet(reactor, local, paths, token)
    site = metrics_site(binding, turn, ready=ready, admin=lambda samples: AdminResource(view, token, samples),
                        workers=fleet, udp_drops=drops)
    host, port = values["metrics"]
    internet.TCPServer(port, site, interface=host).setServiceParent(top)
