"""``twistd rendezvous``: Options and makeService, the composition root.

Builds the STUN server (RFC 8489 Binding, RFC 5780 behaviour discovery,
RFC 3489 classic clients) on UDP, TCP and TLS from a ``RendezvousConfig``.
"""

from pathlib import Path

from twisted.application import internet, service, strports
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.python import usage

from . import config as cfg
from .binding import Addresses, BindingServer
from .listeners import StunStreamFactory, UdpEndpoints
from .tls import self_signed

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a txrendezvous super node: a STUN server (RFC 8489) with RFC 5780 NAT "
        "behaviour discovery on UDP, TCP and TLS. Every option can also be set in a "
        "TOML file given with --config (keys are the option names)."
    )
    optParameters = [["config", "c", None, "TOML config file."]] + [
        [name, None, None, f"{text} [default: {default}]" if default is not None else text]
        for name, _, default, text in cfg.OPTIONS
    ]

    def postOptions(self) -> None:
        try:
            self.config = cfg.build(
                {name: self[name] for name, *_ in cfg.OPTIONS},
                Path(self["config"]) if self["config"] else None,
            )
        except cfg.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _interface(ip: str) -> str:
    return ip.replace(":", "\\:")


def makeService(options, reactor=None) -> service.MultiService:
    """Build the MultiService that ``twistd rendezvous`` runs."""
    config: cfg.RendezvousConfig = options.config if isinstance(options, Options) else options
    top = service.MultiService()
    addresses = Addresses(
        ip=config.ip,
        port=config.port,
        alt_ip=config.alt_ip,
        alt_port=config.alt_port if config.alt_ip else None,
        advertise_ip=config.advertise_ip,
        advertise_alt_ip=config.advertise_alt_ip,
    )
    server = BindingServer(addresses, software=config.software)
    udp = UdpEndpoints(server)
    for ip, port in addresses.endpoints():
        internet.UDPServer(port, udp.protocol((ip, port)), interface=ip).setServiceParent(top)
        strports.service(
            f"tcp:{port}:interface={_interface(ip)}", StunStreamFactory(server, (ip, port))
        ).setServiceParent(top)
    if config.tls_port:
        cert, key = (config.cert, config.key) if config.cert else self_signed(config.state_dir)
        tls = _tls_options(cert, key)
        ips = [config.ip] + ([config.alt_ip] if config.alt_ip else [])
        for ip in ips:
            internet.SSLServer(
                config.tls_port, StunStreamFactory(server, (ip, config.tls_port)), tls, interface=ip
            ).setServiceParent(top)
    log.info(
        "STUN on {endpoints} (UDP, TCP), TLS port {tls}",
        endpoints=addresses.endpoints(),
        tls=config.tls_port or "off",
    )
    top.binding_server = server
    return top


def _tls_options(cert: Path, key: Path) -> ssl.CertificateOptions:
    try:
        pem = Path(cert).read_bytes() + b"\n" + Path(key).read_bytes()
        return ssl.PrivateCertificate.loadPEM(pem).options()
    except (OSError, ValueError) as e:
        raise usage.UsageError(f"cannot load TLS certificate {cert} / key {key}: {e}") from None
