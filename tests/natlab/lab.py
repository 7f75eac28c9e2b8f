"""A lab of real Linux NATs in network namespaces, for tests that need them.

Everything lives in namespaces this module creates (named ``nl<suffix>-...``
with a random suffix per lab) and is deleted by ``Lab.close``, which tests
reach through a fixture finaliser, so a failed build or test still tears
down. Nothing is added to the host's own namespace: veth pairs are created
directly inside their namespaces.

Using it (root; ``unavailable_reason()`` says why not)::

    lab = Lab(workdir)
    try:
        lab.build_public()                               # bridge + super node namespace
        lab.start_server(relay=True, web_ports=True)     # twistd rendezvous, RFC 5780, TURN, 80/443
        a = lab.add_site("eim-apdf")                     # any number of sites, any kinds,
        b = lab.add_site("apdm-random", carrier="eim-apdf")   # all on the one public segment
        subprocess.run(a.exec_argv("python", "-c", ...))  # run a client behind a's NAT
    finally:
        lab.close()

Sites are numbered in creation order (site N: client 192.168.N.2, WAN
198.18.0.(10+N)), so sites of every kind, several of one kind too, live in
one lab and reach each other across the public segment at their WAN
addresses (``Site.wan_ip``). ``Lab.sites`` holds them by unique name (the
kind, with ``+cgn-...``/``+hop``/``+upnp`` and ``#N`` for repeats). A site's client
runs commands with ``Site.exec_argv``; the super node's namespace is
``Lab.server_ns``, the bridge's ``Lab.public_ns``. ``start_server`` may run
more than one node (different ``port``; only one with ``web_ports``).

Topology (addresses only from 198.18.0.0/15, 100.64.0.0/10, 192.168.0.0/16)::

    super node ns  198.18.0.1 + 198.18.0.2 (twistd rendezvous, RFC 5780)
         |
    public ns      bridge "br0": the "internet", 198.18.0.0/24
         |                       |
    router N ns    wan 198.18.0.(10+N), nftables NAT of a chosen kind
         |  lan 192.168.N.1/24
    client N ns    192.168.N.2, default route via the router

A double NAT puts a carrier router (lan 100.64.N.1/24) between the public
segment and the home router (wan 100.64.N.2).

``hop=True`` puts an "ISP router" namespace (``hopN``) between the outermost
router's ``wan`` and the bridge, so a packet from the site crosses one routed
hop before the public segment (a low-TTL SYN dies there, see
rendezvous/peer/tcp_punch.py). The router keeps its WAN address 198.18.0.(10+N),
as a /32 with a default route out of ``wan``; the hop has 198.18.0.(210+N)/24
on the bridge (``pub``), forwards, proxy-ARPs for the router's address on the
bridge and for everything towards the router (``cust``, with a host route to
the router's address), and drops the ICMP Time Exceeded it would send (as
many real routers rate-limit or filter them; Linux would abort a SYN-SENT
connect on it). Counted in nftables table ``natlab_hop``, chain ``output``.
Only sites 1-44 may have one.

NAT kinds (nftables table ``natlab`` in the router namespace):

``eim-eif``      full cone: SNAT to the WAN address (Linux keeps the source
                 port when it can, which makes the mapping endpoint-
                 independent) and a DNAT of every inbound UDP port to the
                 inside host, so anyone may send in.
``eim-adf``      restricted cone: as above, but inbound UDP is forwarded only
                 from an address the inside (address, port) has sent to, kept
                 in an nftables dynamic set filled by outbound packets.
``eim-apdf``     port restricted cone: plain masquerade; conntrack lets in only
                 replies from the exact address and port sent to.
``apdm-random``  symmetric: masquerade fully-random, a random port per
                 destination; conntrack filtering.
``udp-blocked``  masquerade, but the forward chain drops all UDP from the LAN.
``tcp-web-only`` masquerade behind a firewall that lets out only TCP to ports
                 80 and 443 (and the replies); everything else from the LAN
                 is dropped, so only the super node's firewall ports answer.

``hairpin=True`` (DNAT kinds only) also sends LAN packets addressed to the
WAN address back into the LAN, with the source rewritten to the WAN address.

``sip_alg=True`` turns on the kernel's SIP ALG in the (home) router: an
nftables ``ct helper`` of type "sip" for UDP and TCP to port 5060, so
nf_nat_sip rewrites the private addresses in SIP messages going out.

``upnp=True`` (not with a carrier NAT) runs a miniupnpd UPnP IGD (Debian
package ``miniupnpd-nftables``) in the router: it listens on ``lan``, maps on
``wan`` through its own nftables chains (table ``inet filter``), lets only
the site's LAN map ports 1024-65535 to themselves (secure mode), and learns
its external address with STUN against the lab's super node (miniupnpd treats
198.18.0.0/15 as reserved, so it needs ``ext_perform_stun``; start the server
first). The router's forward chain then also accepts inbound packets it has
DNATed, which only miniupnpd's mappings do on a non-DNAT kind.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import stop_process
from tests.natlab import transition
from tests.natlab.transition import (AFTR_IP, B4_IP, DNS_ROOT_IP, DNS_ROOT_IP6, PUBLIC6_PREFIX, SERVER_ALT_IP6,
                                     SERVER_IP6, SOFTWIRE_MTU, SOFTWIRE_PREFIX, TAYGA, TAYGA_IP, TAYGA_POOL, UNBOUND)

ROOT = Path(__file__).resolve().parents[2]
# The environment of processes the lab runs from this checkout.
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

SERVER_IP = "198.18.0.1"
SERVER_ALT_IP = "198.18.0.2"
SERVER_PORT = 3478
SERVER_ALT_PORT = 3479
SERVER_HTTP_PORT = 80
SERVER_HTTPS_PORT = 443
SERVER_ECHO_PORT = 5060
PUBLIC_RANGE = "198.18.0.0/15"
WEB_PORTS = (SERVER_HTTP_PORT, SERVER_HTTPS_PORT)
PUBLIC_PREFIX = 24

KINDS = ("eim-eif", "eim-adf", "eim-apdf", "apdm-random", "udp-blocked", "tcp-web-only")
# IPv6 transition kinds (see the module docstring); they take no NAT options.
TRANSITION_KINDS = ("nat64", "464xlat", "ds-lite")
DNAT_KINDS = ("eim-eif", "eim-adf")


class LabError(Exception):
    """The lab could not be built."""


def unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs `{tool}` (Debian packages iproute2 and nftables)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "`ip netns` is not usable here: " + probe.stderr.decode(errors="replace").strip()
    return None


def run(*argv: str, input: str | None = None) -> str:
    """Run a command; raise LabError with its stderr when it fails."""
    done = subprocess.run(argv, input=input, capture_output=True, check=False, text=True, timeout=30)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass
class Site:
    """A client host behind one or more NAT routers."""

    name: str
    kind: str
    client_ns: str
    client_ip: str
    routers: list[str]           # outermost first
    wan_ip: str                  # the public (198.18) address of the outermost router
    hairpin: bool = False
    upnp: bool = False           # a miniupnpd gateway runs in the (only) router
    hop: str | None = None       # the ISP router namespace outside the routers, if any
    client_ip6: str | None = None  # the client's global IPv6 address, on a site with IPv6
    nat64_prefix: str | None = None  # the NAT64 prefix of an IPv6-only site

    def exec_argv(self, *argv: str) -> list[str]:
        """argv that runs a command inside the client namespace."""
        return ["ip", "netns", "exec", self.client_ns, *argv]


@dataclass
class Lab:
    """Builds namespaces, links and NAT rules; ``close`` removes exactly those."""

    workdir: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    sites: dict[str, Site] = field(default_factory=dict)
    _next_port: int = 0
    _next_site: int = 0
    _v6_hosts: list[str] = field(default_factory=list)  # namespaces on the public segment with IPv6
    _v6_routes: list[tuple[str, str, str]] = field(default_factory=list)  # (prefix, via, owner namespace)
    resolver_files: list[Path] = field(default_factory=list)  # /etc/netns/NAME folders we made
    dns_root: bool = False  # start_dns_root ran: clients of later sites resolve through it

    @property
    def public_ns(self) -> str:
        return f"nl{self.suffix}-pub"

    @property
    def server_ns(self) -> str:
        return f"nl{self.suffix}-sn"

    # -- building blocks -------------------------------------------------

    def _namespace(self, role: str) -> str:
        name = f"nl{self.suffix}-{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self._ns(name, "ip", "link", "set", "lo", "up")
        for key, value in (("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
                           ("net.ipv4.conf.all.send_redirects", "0"),
                           ("net.ipv4.conf.default.send_redirects", "0"),
                           # IPv6 addresses usable at once (no duplicate address detection), no autoconfiguration
                           ("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0"),
                           ("net.ipv6.conf.all.accept_ra", "0"), ("net.ipv6.conf.default.accept_ra", "0")):
            self._ns(name, "sysctl", "-qw", f"{key}={value}")
        return name

    @staticmethod
    def _ns(namespace: str, *argv: str, input: str | None = None) -> str:
        return run("ip", "netns", "exec", namespace, *argv, input=input)

    def _link(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair made directly inside the two namespaces."""
        run("ip", "link", "add", "name", name_a, "netns", ns_a, "type", "veth",
            "peer", "name", name_b, "netns", ns_b)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            self._ns(ns, "sysctl", "-qw", f"net.ipv4.conf.{name}.rp_filter=0")
            self._ns(ns, "ip", "link", "set", name, "up")

    def _to_public(self, ns: str, name: str, cidr: str) -> None:
        """Plug ns into the public bridge with address cidr on interface name."""
        self._next_port += 1
        port = f"p{self._next_port}"
        self._link(ns, name, self.public_ns, port)
        self._ns(self.public_ns, "ip", "link", "set", port, "master", "br0")
        self._ns(ns, "ip", "addr", "add", cidr, "dev", name)

    # -- the public segment and the super node ---------------------------

    def build_public(self) -> None:
        """The public bridge and the super node namespace with its two addresses of each family
        (and the DNS root's, used by ``start_dns_root``)."""
        self._namespace("pub")
        self._ns(self.public_ns, "ip", "link", "add", "br0", "type", "bridge")
        self._ns(self.public_ns, "ip", "link", "set", "br0", "up")
        self._namespace("sn")
        self._to_public(self.server_ns, "eth0", f"{SERVER_IP}/{PUBLIC_PREFIX}")
        for cidr in (f"{SERVER_ALT_IP}/{PUBLIC_PREFIX}", f"{DNS_ROOT_IP}/{PUBLIC_PREFIX}",
                     f"{SERVER_IP6}/{PUBLIC6_PREFIX}", f"{SERVER_ALT_IP6}/{PUBLIC6_PREFIX}",
                     f"{DNS_ROOT_IP6}/{PUBLIC6_PREFIX}"):
            self._ns(self.server_ns, "ip", "addr", "add", cidr, "dev", "eth0")
        self._public_v6(self.server_ns)

    def _public_v6(self, ns: str, own_prefix: str | None = None, via: str | None = None) -> None:
        """ns is on the public segment with IPv6: it learns every site's LAN route, and
        every host learns own_prefix via ``via`` (each host routes the LANs, as a
        provider's routers would; the bridge only switches)."""
        for prefix, hop, owner in self._v6_routes:
            if owner != ns:
                self._ns(ns, "ip", "-6", "route", "add", prefix, "via", hop)
        if own_prefix is not None:
            for host in self._v6_hosts:
                self._ns(host, "ip", "-6", "route", "add", own_prefix, "via", via)
            self._v6_routes.append((own_prefix, via, ns))
        self._v6_hosts.append(ns)

    def start_dns_root(self) -> subprocess.Popen:
        """unbound in the super node namespace at DNS_ROOT_IP and DNS_ROOT_IP6: the
        lab's only DNS server on the "internet" (ipv4only.arpa, node.lab)."""
        process = self._start_unbound(self.server_ns, "root", transition.dns_root_config(str(self.workdir)))
        self.dns_root = True
        return process

    def start_server(self, *extra: str, port: int = SERVER_PORT, alternate: bool = True, relay: bool = False,
                     web_ports: bool = False, echo: bool = True, launcher: list[str] | None = None,
                     ip: str = SERVER_IP, alt_ip: str = SERVER_ALT_IP) -> subprocess.Popen:
        """``twistd -n rendezvous`` in the super node namespace; waits until it answers.

        With alternate, on both public addresses and ports (RFC 5780), else on
        SERVER_IP:port only. With relay, its TURN relay runs and may reach the
        public segment (``--allow-peer`` PUBLIC_RANGE: sites are seen at their
        WAN addresses there). With web_ports, it also listens on the firewall
        ports TCP 80 (plain) and 443 (TLS). With echo, the echo service for
        ALG detection runs on UDP+TCP 5060. extra are more options (they win
        over these); metrics are off unless extra asks for them. ``launcher``
        replaces the twistd executable (e.g. a script that patches the node).
        ``ip`` and ``alt_ip`` are its addresses (SERVER_IP6 and SERVER_ALT_IP6
        for a node on IPv6; one node per family and port).
        """
        name = f"twistd-{port}" if ip == SERVER_IP else f"twistd-{ip}-{port}"
        state = self.workdir / f"{name}-state"
        log_path = self.workdir / f"{name}.log"
        twistd = str(Path(sys.executable).with_name("twistd"))
        argv = ["ip", "netns", "exec", self.server_ns, *(launcher or [twistd]), "-n", "--pidfile=", "rendezvous",
                "--ip", ip, "--port", str(port), "--tls-port", "0", "--metrics", "off",
                "--state-dir", str(state)]
        argv += ["--allow-peer", PUBLIC_RANGE] if relay else ["--no-relay"]
        udp = [(ip, port)]
        tcp = []
        if alternate:
            argv += ["--alt-ip", alt_ip, "--alt-port", str(SERVER_ALT_PORT)]
            udp.append((alt_ip, SERVER_ALT_PORT))
        if web_ports:
            argv += ["--http-port", str(SERVER_HTTP_PORT), "--https-port", str(SERVER_HTTPS_PORT)]
            tcp += [(ip, p) for p in WEB_PORTS]
        if echo:
            argv += ["--echo-port", str(SERVER_ECHO_PORT)]
            tcp.append((ip, SERVER_ECHO_PORT))
        argv += extra
        with open(log_path, "wb") as log:
            # `ip netns exec` execs the command, so this pid is twistd's own.
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=ENV)
        self.processes.append(process)
        self._wait_for_server(process, log_path, udp, tcp)
        return process

    def _wait_for_server(self, process: subprocess.Popen, log_path: Path, udp: list[tuple[str, int]],
                         tcp: list[tuple[str, int]], seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LabError(f"twistd exited early:\n{log_path.read_text(errors='replace')}")
            answered = (all(udp_answers(self.server_ns, ip, port) for ip, port in udp)
                        and all(tcp_accepts(self.server_ns, ip, port) for ip, port in tcp))
            if answered:
                return
            time.sleep(0.2)
        raise LabError(f"twistd did not answer in {seconds} s:\n{log_path.read_text(errors='replace')}")

    # -- NAT sites -------------------------------------------------------

    def add_site(self, kind: str, hairpin: bool = False, carrier: str | None = None,
                 udp_timeout_seconds: int | None = None, upnp: bool = False, sip_alg: bool = False,
                 hop: bool = False, ipv6: str | None = None) -> Site:
        """A client behind a router of this kind; with carrier, behind a carrier NAT too.

        udp_timeout_seconds sets the router's conntrack UDP timeout (the
        binding lifetime of conntrack-filtered mappings). upnp runs a miniupnpd
        gateway in the router, sip_alg the kernel's SIP ALG, hop an ISP router
        between the outermost router and the bridge, ipv6 makes the site
        dual-stack behind an IPv6 stateful firewall: "firewall", with the LAN
        on 2001:db8:N::/64, or "nptv6", the LAN on fd00:N::/64 translated to
        2001:db8:N::/64 (see the module docstring).
        The transition kinds ("nat64", "ds-lite") take none of these options.
        """
        if kind in TRANSITION_KINDS:
            if hairpin or carrier or udp_timeout_seconds or upnp or sip_alg or hop or ipv6:
                raise ValueError(f"{kind} takes no NAT options")
            return self._transition_site(kind)
        if ipv6 not in (None, "firewall", "nptv6"):
            raise ValueError(f"unknown IPv6 kind {ipv6!r}")
        if ipv6 and (carrier is not None or hop):
            raise ValueError("ipv6 needs a single router on the public segment")
        if kind not in KINDS or (carrier is not None and carrier not in KINDS):
            raise ValueError(f"unknown NAT kind {kind!r}")
        if hairpin and kind not in DNAT_KINDS:
            raise ValueError(f"{kind} cannot hairpin in this lab")
        if upnp and (carrier is not None or kind in DNAT_KINDS):
            raise ValueError("upnp needs a single router of a non-DNAT kind")
        if upnp and shutil.which(MINIUPNPD) is None:
            raise LabError(f"upnp needs {MINIUPNPD} (Debian package miniupnpd-nftables)")
        self._next_site += 1
        n = self._next_site
        if n > 200 or (hop and n > HOP_SITES):
            raise ValueError("too many sites")
        wan_ip = f"198.18.0.{10 + n}"
        routers = []
        if carrier is not None:
            cgn = self._namespace(f"cgn{n}")
            routers.append(cgn)
            hop_ns = self._wan(cgn, n, wan_ip, hop)
            home = self._namespace(f"r{n}")
            routers.append(home)
            self._link(cgn, "lan", home, "wan")
            self._ns(cgn, "ip", "addr", "add", f"100.64.{n}.1/24", "dev", "lan")
            self._ns(home, "ip", "addr", "add", f"100.64.{n}.2/24", "dev", "wan")
            self._ns(home, "ip", "route", "add", "default", "via", f"100.64.{n}.1")
            self._router(cgn, carrier, f"198.18.0.{10 + n}", "100.64.0.0/10", f"100.64.{n}.2",
                         False, udp_timeout_seconds)
            home_wan = f"100.64.{n}.2"
        else:
            home = self._namespace(f"r{n}")
            routers.append(home)
            hop_ns = self._wan(home, n, wan_ip, hop)
            home_wan = wan_ip
        client = self._namespace(f"c{n}")
        self._link(home, "lan", client, "eth0")
        self._ns(home, "ip", "addr", "add", f"192.168.{n}.1/24", "dev", "lan")
        client_ip = f"192.168.{n}.2"
        self._ns(client, "ip", "addr", "add", f"{client_ip}/24", "dev", "eth0")
        self._ns(client, "ip", "route", "add", "default", "via", f"192.168.{n}.1")
        self._router(home, kind, home_wan, f"192.168.{n}.0/24", client_ip, hairpin, udp_timeout_seconds, upnp,
                     sip_alg)
        client_ip6 = self._firewall6(home, client, n, wan=True, nptv6=ipv6 == "nptv6") if ipv6 else None
        label = kind if carrier is None else f"{kind}+cgn-{carrier}"
        if sip_alg:
            label += "+sip-alg"
        if hop:
            label += "+hop"
        if upnp:
            label += "+upnp"
            self._start_miniupnpd(home, n)
        if ipv6:
            label += f"+ipv6-{ipv6}"
        return self._named(label, n, Site(label, kind, client, client_ip, routers, wan_ip, hairpin, upnp, hop_ns,
                                          client_ip6))

    def _named(self, label: str, n: int, site: Site) -> Site:
        if self.dns_root and site.nat64_prefix is None:  # a NAT64 site's client asks its DNS64
            self._resolv_conf(site.client_ns, DNS_ROOT_IP)
        if label in self.sites:
            site.name = label = f"{label}#{n}"
        self.sites[label] = site
        return site

    # -- IPv6 and the transition kinds -----------------------------------

    def _firewall6(self, router: str, client: str, n: int, wan: bool, nptv6: bool = False) -> str:
        """Site n's IPv6 LAN 2001:db8:n::/64 behind an RFC 6092 stateful firewall in
        router (on the public segment at wan6(n), added when wan); with nptv6 the LAN
        is fd00:n::/64 and leaves as 2001:db8:n::/64. The client's address."""
        lan = transition.ula6 if nptv6 else transition.lan6
        if wan:
            self._ns(router, "ip", "addr", "add", f"{transition.wan6(n)}/{PUBLIC6_PREFIX}", "dev", "wan")
        self._ns(router, "ip", "addr", "add", f"{lan(n, 1)}/64", "dev", "lan")
        self._ns(router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self._ns(router, "nft", "-f", "-", input=transition.FIREWALL6_RULESET)
        if nptv6:
            self._ns(router, "nft", "-f", "-", input=transition.nptv6_ruleset(n))
        client_ip6 = lan(n, 2)
        self._ns(client, "ip", "addr", "add", f"{client_ip6}/64", "dev", "eth0")
        self._ns(client, "ip", "-6", "route", "add", "default", "via", lan(n, 1))
        self._public_v6(router, transition.lan6_prefix(n), transition.wan6(n))
        return client_ip6

    def _transition_site(self, kind: str) -> Site:
        """An IPv6-only access with NAT64 and DNS64 (and a CLAT in the client: 464XLAT),
        or a DS-Lite home with its AFTR."""
        self._next_site += 1
        n = self._next_site
        if n > 200:
            raise ValueError("too many sites")
        wan_ip = f"198.18.0.{10 + n}"
        home = self._namespace(f"r{n}")
        client = self._namespace(f"c{n}")
        self._link(home, "lan", client, "eth0")
        if kind == "nat64":
            return self._named(kind, n, self._nat64_site(n, home, client, wan_ip))
        if kind == "464xlat":
            site = self._nat64_site(n, home, client, wan_ip)
            site.name = site.kind = kind
            site.client_ip = self._clat(n, client)
            return self._named(kind, n, site)
        return self._named(kind, n, self._dslite_site(n, home, client, wan_ip))

    def _nat64_site(self, n: int, router: str, client: str, wan_ip: str) -> Site:
        """The client has IPv6 only; the router (on the public segment with both
        families) routes IPv6 natively, unfiltered, and translates the NAT64 prefix
        with tayga, its IPv4 pool masqueraded to wan_ip (NAT44); unbound on the LAN
        is the client's DNS64."""
        for tool in (TAYGA, UNBOUND):
            if not os.path.exists(tool):
                raise LabError(f"nat64 needs {tool} (Debian packages tayga and unbound)")
        prefix = transition.nat64_prefix(n)
        self._to_public(router, "wan", f"{wan_ip}/{PUBLIC_PREFIX}")
        self._ns(router, "ip", "addr", "add", f"{transition.wan6(n)}/{PUBLIC6_PREFIX}", "dev", "wan")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            self._ns(router, "sysctl", "-qw", key)
        self._ns(router, "ip", "addr", "add", f"{transition.lan6(n, 1)}/64", "dev", "lan")
        client_ip6 = transition.lan6(n, 2)
        self._ns(client, "ip", "addr", "add", f"{client_ip6}/64", "dev", "eth0")
        self._ns(client, "ip", "-6", "route", "add", "default", "via", transition.lan6(n, 1))
        self._public_v6(router, transition.lan6_prefix(n), transition.wan6(n))
        data = self.workdir / f"tayga-{n}"
        data.mkdir()
        conf = self.workdir / f"tayga-{n}.conf"
        conf.write_text(transition.tayga_config(n, str(data)))
        self._ns(router, TAYGA, "--mktun", "-c", str(conf))  # a persistent device, gone with the namespace
        self._ns(router, "ip", "link", "set", "nat64", "up")
        self._ns(router, "ip", "addr", "add", "192.168.254.1/32", "dev", "nat64")  # the router's own, beside tayga's
        self._ns(router, "ip", "route", "add", TAYGA_POOL, "dev", "nat64")
        self._ns(router, "ip", "-6", "route", "add", prefix, "dev", "nat64")
        self._ns(router, "nft", "-f", "-", input=transition.NAT64_RULESET)
        # tayga -d logs to a buffered stdout: stdbuf makes it line-buffered, so its start shows
        self._start_logged(router, f"tayga-{n}", ["stdbuf", "-oL", TAYGA, "-d", "-c", str(conf)], "Dynamic pool")
        self._start_unbound(router, f"dns64-{n}", transition.dns64_config(n, str(self.workdir)))
        self._resolv_conf(client, transition.lan6(n, 1))
        return Site("nat64", "nat64", client, None, [router], wan_ip, client_ip6=client_ip6, nat64_prefix=prefix)

    def _clat(self, n: int, client: str) -> str:
        """RFC 6877's CLAT in the client, as clatd sets one up: a second tayga (device
        clat) gives the host an IPv4 address, CLAT_HOST_IP with the default IPv4 route,
        and translates it statelessly to a dedicated IPv6 address (proxied on eth0 for
        neighbour discovery) and IPv4 destinations into the NAT64 prefix; the
        router's tayga (the PLAT) translates it back. Returns the host's IPv4 address."""
        conf = self.workdir / f"clat-{n}.conf"
        conf.write_text(transition.clat_config(n))
        self._ns(client, TAYGA, "--mktun", "-c", str(conf))
        self._ns(client, "ip", "link", "set", "clat", "up")
        self._ns(client, "ip", "addr", "add", f"{transition.CLAT_HOST_IP}/{SOFTWIRE_PREFIX}", "dev", "clat")
        self._ns(client, "ip", "route", "add", "default", "dev", "clat")
        clat6 = transition.clat6(n)
        self._ns(client, "ip", "-6", "route", "add", clat6, "dev", "clat")
        for key in ("net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.eth0.proxy_ndp=1"):
            self._ns(client, "sysctl", "-qw", key)
        self._ns(client, "ip", "-6", "neigh", "add", "proxy", clat6, "dev", "eth0")
        self._start_logged(client, f"clat-{n}", ["stdbuf", "-oL", TAYGA, "-d", "-c", str(conf)], "NAT64 prefix")
        return transition.CLAT_HOST_IP

    def _dslite_site(self, n: int, home: str, client: str, wan_ip: str) -> Site:
        """RFC 6333: the home router (B4) has IPv6 only on the public segment, a
        dual-stack LAN with the IPv6 firewall, and sends IPv4 through a softwire
        (tests/natlab/softwire.py) to an AFTR namespace, which masquerades it to
        wan_ip (NAT44, EIM and APDF)."""
        aftr = self._namespace(f"aftr{n}")
        self._to_public(aftr, "wan", f"{wan_ip}/{PUBLIC_PREFIX}")
        self._ns(aftr, "ip", "addr", "add", f"{transition.aftr6(n)}/{PUBLIC6_PREFIX}", "dev", "wan")
        self._to_public(home, "wan", f"{transition.wan6(n)}/{PUBLIC6_PREFIX}")
        self._public_v6(aftr)
        lan_net = f"192.168.{n}.0/24"
        client_ip = f"192.168.{n}.2"
        self._ns(home, "ip", "addr", "add", f"192.168.{n}.1/24", "dev", "lan")
        self._ns(client, "ip", "addr", "add", f"{client_ip}/24", "dev", "eth0")
        self._ns(client, "ip", "route", "add", "default", "via", f"192.168.{n}.1")
        client_ip6 = self._firewall6(home, client, n, wan=False)
        for ns, device, local, remote, address in ((home, "sw0", transition.wan6(n), transition.aftr6(n), B4_IP),
                                                   (aftr, "lan", transition.aftr6(n), transition.wan6(n), AFTR_IP)):
            self._start_logged(ns, f"softwire-{ns}", [sys.executable, str(Path(__file__).with_name("softwire.py")),
                                                      device, local, remote], "ready")
            self._ns(ns, "ip", "link", "set", device, "mtu", str(SOFTWIRE_MTU), "up")
            self._ns(ns, "ip", "addr", "add", f"{address}/{SOFTWIRE_PREFIX}", "dev", device)
            self._ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self._ns(ns, "sysctl", "-qw", f"net.ipv4.conf.{device}.rp_filter=0")
        self._ns(home, "ip", "route", "add", "default", "dev", "sw0")
        self._ns(aftr, "ip", "route", "add", lan_net, "dev", "lan")
        self._ns(aftr, "nft", "-f", "-", input=ruleset("eim-apdf", wan_ip, lan_net, client_ip, False))
        return Site("ds-lite", "ds-lite", client, client_ip, [aftr, home], wan_ip, client_ip6=client_ip6)

    def _start_unbound(self, ns: str, name: str, config: str) -> subprocess.Popen:
        conf = self.workdir / f"unbound-{name}.conf"
        conf.write_text(config)
        return self._start_logged(ns, f"unbound-{name}", [UNBOUND, "-d", "-c", str(conf)], "start of service")

    def _start_logged(self, ns: str, name: str, argv: list[str], ready: str, seconds: float = 20.0
                      ) -> subprocess.Popen:
        """argv in namespace ns, its output in workdir/name.log; waits until the log says ``ready``."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self.workdir, env=ENV)
        self.processes.append(process)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if ready in text:
                return process
            if process.poll() is not None:
                raise LabError(f"{name} exited early:\n{text}")
            time.sleep(0.05)
        raise LabError(f"{name} did not start in {seconds} s:\n{log_path.read_text(errors='replace')}")

    def _resolv_conf(self, ns: str, nameserver: str) -> None:
        """The namespace's resolver (``ip netns exec`` mounts /etc/netns/NS/resolv.conf)."""
        folder = Path("/etc/netns") / ns
        folder.mkdir(parents=True)
        self.resolver_files.append(folder)
        (folder / "resolv.conf").write_text(f"nameserver {nameserver}\n")

    def _wan(self, router: str, n: int, wan_ip: str, hop: bool) -> str | None:
        """The outermost router's ``wan``: on the bridge, or behind an ISP router hop (returned)."""
        if not hop:
            self._to_public(router, "wan", f"{wan_ip}/{PUBLIC_PREFIX}")
            return None
        isp = self._namespace(f"hop{n}")
        self._to_public(isp, "pub", f"198.18.0.{210 + n}/{PUBLIC_PREFIX}")
        self._link(isp, "cust", router, "wan")
        self._ns(router, "ip", "addr", "add", f"{wan_ip}/32", "dev", "wan")
        self._ns(router, "ip", "route", "add", "default", "dev", "wan")
        self._ns(isp, "ip", "route", "add", f"{wan_ip}/32", "dev", "cust")
        self._ns(isp, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for dev in ("pub", "cust"):
            self._ns(isp, "sysctl", "-qw", f"net.ipv4.conf.{dev}.proxy_arp=1")
            self._ns(isp, "sysctl", "-qw", f"net.ipv4.neigh.{dev}.proxy_delay=0")  # answer at once
        self._ns(isp, "nft", "-f", "-", input=HOP_RULESET)
        return isp

    def _router(self, ns: str, kind: str, wan_ip: str, lan_net: str, inside_ip: str, hairpin: bool,
                udp_timeout_seconds: int | None, upnp: bool = False, sip_alg: bool = False) -> None:
        self._ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._ns(ns, "nft", "-f", "-", input=ruleset(kind, wan_ip, lan_net, inside_ip, hairpin, upnp))
        if sip_alg:
            self._ns(ns, "nft", "-f", "-", input=SIP_ALG_RULESET)
        if upnp:
            self._ns(ns, "nft", "-f", "-", input=MINIUPNPD_RULESET)
        if udp_timeout_seconds is not None:
            self._ns(ns, "sysctl", "-qw", f"net.netfilter.nf_conntrack_udp_timeout={int(udp_timeout_seconds)}")

    def _start_miniupnpd(self, ns: str, n: int, seconds: float = 20.0) -> subprocess.Popen:
        """miniupnpd in the foreground in router ns; waits until it listens."""
        conf = self.workdir / f"miniupnpd-{n}.conf"
        conf.write_text(miniupnpd_config(n))
        log_path = self.workdir / f"miniupnpd-{n}.log"
        argv = ["ip", "netns", "exec", ns, MINIUPNPD, "-f", str(conf), "-d",
                "-P", str(self.workdir / f"miniupnpd-{n}.pid")]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.processes.append(process)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if process.poll() is not None:
                raise LabError(f"miniupnpd exited early:\n{text}")
            if "Listening for NAT-PMP" in text:  # the last line of its start-up
                return process
            time.sleep(0.1)
        raise LabError(f"miniupnpd did not start in {seconds} s:\n{log_path.read_text(errors='replace')}")

    def flush_conntrack(self, site: Site) -> None:
        """Forget every mapping of the site's routers (needs the conntrack tool)."""
        if shutil.which("conntrack") is None:
            return
        for ns in site.routers:
            subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-F"], capture_output=True, check=False, timeout=10)

    # -- teardown --------------------------------------------------------

    def close(self) -> None:
        """End our processes (by pid) and delete our namespaces; never raises."""
        for process in self.processes:
            stop_process(process)
        self.processes.clear()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False, timeout=30)
        self.namespaces.clear()
        for folder in self.resolver_files:
            shutil.rmtree(folder, ignore_errors=True)
        self.resolver_files.clear()

    def add_host(self, role: str, ip: str) -> str:
        """A host of a test's own on the public segment at ip, without NAT (a database, another super
        node); use 198.18.0.100-199, which no site or hop takes. Returns its namespace."""
        namespace = self._namespace(role)
        self._to_public(namespace, "eth0", f"{ip}/{PUBLIC_PREFIX}")
        return namespace


MINIUPNPD = "/usr/sbin/miniupnpd"

HOP_SITES = 44  # hop N is 198.18.0.(210+N)

# An ISP router that sends no ICMP Time Exceeded (and counts what it held back).
HOP_RULESET = """table ip natlab_hop {
	chain output {
		type filter hook output priority filter; policy accept;
		icmp type time-exceeded counter drop
	}
}
"""

# The chains miniupnpd (nftables flavour, defaults) fills: forward filter rules
# in "miniupnpd", DNATs in "prerouting_miniupnpd", all in table inet filter.
# Policies accept: the natlab table keeps its own drop policy.
MINIUPNPD_RULESET = """table inet filter {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tjump miniupnpd
\t}
\tchain miniupnpd {
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump prerouting_miniupnpd
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump postrouting_miniupnpd
\t}
\tchain prerouting_miniupnpd {
\t}
\tchain postrouting_miniupnpd {
\t}
}
"""


# The kernel's SIP ALG (nf_conntrack_sip + nf_nat_sip) on SIP leaving the LAN.
SIP_ALG_RULESET = """table ip natlab_sip {
	ct helper sip-udp {
		type "sip" protocol udp
		l3proto ip
	}
	ct helper sip-tcp {
		type "sip" protocol tcp
		l3proto ip
	}
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname "lan" udp dport 5060 ct helper set "sip-udp"
		iifname "lan" tcp dport 5060 ct helper set "sip-tcp"
	}
}
"""


def miniupnpd_config(n: int) -> str:
    """miniupnpd.conf for the router of site n (interfaces ``wan`` and ``lan``)."""
    return (
        "ext_ifname=wan\n"
        "listening_ip=lan\n"
        "port=0\n"
        "enable_upnp=yes\n"
        "enable_natpmp=yes\n"
        "secure_mode=yes\n"
        "ext_perform_stun=yes\n"
        f"ext_stun_host={SERVER_IP}\n"
        f"ext_stun_port={SERVER_PORT}\n"
        "system_uptime=no\n"
        "notify_interval=60\n"
        "clean_ruleset_interval=600\n"
        f"uuid=6e3c2c8a-5f9e-4d2b-9c1a-00000000{n:04x}\n"
        f"allow 1024-65535 192.168.{n}.0/24 1024-65535\n"
        "deny 0-65535 0.0.0.0/0 0-65535\n"
    )


def ruleset(kind: str, wan_ip: str, lan_net: str, inside_ip: str, hairpin: bool, upnp: bool = False) -> str:
    """The nftables ruleset of one NAT router (interfaces ``wan`` and ``lan``);
    with upnp, inbound packets DNATed (by miniupnpd's rules) are forwarded."""
    ipaddress.ip_network(lan_net)  # validates
    pre, post, fwd = [], [], []
    if kind in DNAT_KINDS:
        # Ports are kept by the SNAT below, so an inbound packet to WAN:port
        # belongs to inside:port.
        pre.append(f'iifname "wan" ip daddr {wan_ip} udp dport 1024-65535 dnat to {inside_ip}')
        post.append(f'oifname "wan" snat to {wan_ip}')
    elif kind == "apdm-random":
        post.append('oifname "wan" masquerade fully-random')
    else:
        post.append('oifname "wan" masquerade')
    if hairpin:
        pre.append(f'iifname "lan" ip daddr {wan_ip} udp dport 1024-65535 dnat to {inside_ip}')
        post.append(f'oifname "lan" ip saddr {lan_net} ct status dnat snat to {wan_ip}')
        fwd.append('iifname "lan" oifname "lan" accept')
    if kind == "udp-blocked":
        fwd.append('iifname "lan" meta l4proto udp drop')
    if kind == "eim-adf":
        fwd.append('iifname "lan" oifname "wan" meta l4proto udp update @seen { ip saddr . udp sport . ip daddr }')
    fwd.append("ct state established,related accept")
    if kind == "tcp-web-only":  # the policy drops the rest
        fwd.append(f'iifname "lan" oifname "wan" tcp dport {{ {", ".join(map(str, WEB_PORTS))} }} accept')
    else:
        fwd.append('iifname "lan" oifname "wan" accept')
    if kind == "eim-eif":
        fwd.append('iifname "wan" oifname "lan" ct status dnat accept')
    elif kind == "eim-adf":
        fwd.append('iifname "wan" oifname "lan" ct status dnat ip daddr . udp dport . ip saddr @seen accept')
    if upnp:
        fwd.append('iifname "wan" oifname "lan" ct status dnat accept')

    # miniupnpd's STUN check wants answers from the node's other address and port.
    inp = [f'iifname "wan" ip saddr {{ {SERVER_IP}, {SERVER_ALT_IP} }} accept'] if upnp else []
    inp.append('iifname "wan" ct state new drop')

    def lines(rules: list[str]) -> str:
        return "".join(f"\t\t{rule}\n" for rule in rules)

    return (
        "table ip natlab {\n"
        "\tset seen {\n"
        "\t\ttype ipv4_addr . inet_service . ipv4_addr\n"
        "\t\tflags dynamic,timeout\n"
        "\t\ttimeout 5m\n"
        "\t}\n"
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{lines(pre)}\t}}\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f"{lines(post)}\t}}\n"
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n"
        f"{lines(fwd)}\t}}\n"
        # Like a home router's firewall: unsolicited packets to the router
        # itself are dropped before conntrack confirms them. Otherwise each
        # would leave an entry that makes the next outbound SNAT to that
        # peer pick another port, breaking hole punching in a way real
        # gateways don't.
        "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
        f"{lines(inp)}\t}}\n"
        "}\n"
    )


# Sends STUN Binding requests (argv: ip port tries), exits 0 on the first answer.
_STUN_PROBE = (
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.settimeout(0.2)\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    s.sendto(bytes.fromhex('000100002112a442') + os.urandom(12), (sys.argv[1], int(sys.argv[2])))\n"
    "    try:\n"
    "        s.recvfrom(2048)\n"
    "        sys.exit(0)\n"
    "    except OSError:\n"
    "        pass\n"
    "sys.exit(1)\n"
)


def udp_answers(ns: str, ip: str, port: int, tries: int = 5) -> bool:
    """Whether a STUN server answers at ip:port from inside namespace ns (within tries x 0.2 s)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _STUN_PROBE, ip, str(port), str(tries)]
    return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0


# Connects over TCP to argv[1]:argv[2] within 1 s; exits 0 when accepted.
_TCP_PROBE = (
    "import socket, sys\n"
    "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n"
)


def tcp_accepts(ns: str, ip: str, port: int) -> bool:
    """Whether something accepts TCP connections at ip:port from inside namespace ns."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _TCP_PROBE, ip, str(port)]
    return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0


__all__ = [
    "ENV",
    "KINDS",
    "PUBLIC_RANGE",
    "SERVER_ALT_IP",
    "SERVER_ALT_PORT",
    "SERVER_HTTP_PORT",
    "SERVER_HTTPS_PORT",
    "SERVER_IP",
    "SERVER_PORT",
    "Lab",
    "LabError",
    "MINIUPNPD",
    "Site",
    "ruleset",
    "tcp_accepts",
    "udp_answers",
    "unavailable_reason",
]
