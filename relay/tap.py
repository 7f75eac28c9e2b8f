"""``twistd relay``: a standalone TURN relay (RFC 8656), the composition root.

Relays are stateless towards each other; run many behind DNS SRV with REST
shared secrets. The relay also answers STUN Binding (RFC 8656 §3: a TURN
server is a STUN server).
"""

from twisted.application import service
from twisted.python import usage

from rendezvous.accounts import AccountStore
from rendezvous.stun.binding import Addresses, BindingServer
from rendezvous.tls import tls_options

from .config import LISTENER_OPTIONS, RELAY_OPTIONS, ConfigError, RelayConfig, TomlOptions, usage_options
from .service import add_listeners, make_relay


class Options(TomlOptions):
    synopsis = "[options]"
    longdesc = (
        "Run a txrendezvous TURN relay (RFC 8656) on UDP, TCP and TLS. Every option can "
        "also be set in a TOML file given with --config."
    )
    options = LISTENER_OPTIONS + RELAY_OPTIONS
    optParameters, optFlags = usage_options(options)
    optParameters = optParameters + [["config", "c", None, "TOML config file."]]

    def validate(self) -> None:
        if (self.values["cert"] is None) != (self.values["key"] is None):
            raise ConfigError("--cert and --key go together")
        self.relay_config = RelayConfig.from_values(self.values, self.values["ip"])


def makeService(options, reactor=None) -> service.MultiService:
    """Build the MultiService that ``twistd relay`` runs."""
    if reactor is None:
        from twisted.internet import reactor
    values = options.values
    top = service.MultiService()
    software = values["software"].encode("utf-8") if values["software"] else None
    accounts = [AccountStore(options.relay_config.accounts)] if options.relay_config.accounts else []
    relay = make_relay(reactor, options.relay_config, [values["ip"]], software, extra_sources=accounts,
                       reload=lambda: options.reparse().relay_config)
    relay.setServiceParent(top)
    addresses = Addresses(ip=values["ip"], port=values["port"])
    tls = None
    if values["tls-port"]:
        try:
            tls = tls_options(values["cert"], values["key"], values["state-dir"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    add_listeners(top, addresses, BindingServer(addresses, software=values["software"]), relay.turn,
                  values["tls-port"], tls)
    return top
