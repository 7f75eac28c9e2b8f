"""``twistd rendezvous``: Options and makeService, the composition root.

A super node: the STUN server (RFC 8489 Binding, RFC 5780 behaviour
discovery, RFC 3489 classic clients) and the TURN relay (RFC 8656) on UDP,
TCP and TLS, built from a ``RendezvousConfig``.
"""

from twisted.application import service
from twisted.python import usage

from relay.config import TomlOptions, usage_options
from relay.service import add_listeners, make_relay
from rendezvous.stun.binding import Addresses, BindingServer

from .accounts import AccountStore
from .config import RENDEZVOUS_OPTIONS, RendezvousConfig
from .tls import tls_options


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


def _relay_config(options: Options):
    if options.config.relay is None:
        raise usage.UsageError("--no-relay cannot be switched on by a reload")
    return options.config.relay


def makeService(options, reactor=None) -> service.MultiService:
    """Build the MultiService that ``twistd rendezvous`` runs."""
    if reactor is None:
        from twisted.internet import reactor
    config: RendezvousConfig = options.config
    top = service.MultiService()
    addresses = Addresses(
        ip=config.ip,
        port=config.port,
        alt_ip=config.alt_ip,
        alt_port=config.alt_port if config.alt_ip else None,
        advertise_ip=config.advertise_ip,
        advertise_alt_ip=config.advertise_alt_ip,
    )
    software = config.software.encode("utf-8") if config.software else None
    binding = BindingServer(addresses, software=config.software)
    turn = None
    if config.relay is not None:
        listen_ips = [ip for ip in (config.ip, config.alt_ip, config.advertise_ip, config.advertise_alt_ip) if ip]
        accounts = AccountStore(config.relay.accounts or config.state_dir / ACCOUNTS_FILE)
        relay = make_relay(reactor, config.relay, listen_ips, software, extra_sources=[accounts],
                           reload=lambda: _relay_config(options.reparse()))
        relay.setServiceParent(top)
        turn = relay.turn
    tls = None
    if config.tls_port:
        try:
            tls = tls_options(config.cert, config.key, config.state_dir)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    add_listeners(top, addresses, binding, turn, config.tls_port, tls)
    top.binding_server = binding
    return top
