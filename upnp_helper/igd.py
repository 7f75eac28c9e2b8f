"""A UPnP Internet Gateway Device, driven through miniupnpc.

The only module of the suite that imports miniupnpc. Its calls block (SSDP
discovery, SOAP over HTTP), so each one runs in a thread pool of this module's
own with ``deferToThreadPool``; the pool has a single thread, which also keeps
one miniupnpc ``UPnP`` object from being used by two threads at once. Its bare
exceptions become ours (``upnp_helper.errors``).

Actions used (UPnP IGD WANIPConnection:1/2): GetExternalIPAddress,
AddPortMapping, GetSpecificPortMappingEntry, GetGenericPortMappingEntry,
DeletePortMapping. A gateway that only supports permanent leases answers
AddPortMapping with error 725 (OnlyPermanentLeasesSupported); the request is
then repeated with a lease of 0 (IGD:1 section 2.2.18).

A gateway whose external address is reserved or private (a lab, or a carrier
NAT upstream) is still used: discovery does not insist on a "valid,
connected" IGD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .errors import MappingRefused, NoGateway, UpnpError, UpnpErrorCode, translate

log = Logger()

PROTOCOLS = ("UDP", "TCP")
DEFAULT_DESCRIPTION = "txrendezvous"
DEFAULT_TIMEOUT_SECONDS = 2.0
MAX_LIST_ENTRIES = 1024

# Runs fn(*args) somewhere (a thread) and returns a Deferred of its result.
Caller = Callable[..., Deferred]


@dataclass(frozen=True)
class PortMapping:
    """One port mapping on the gateway; ``lease_seconds`` 0 means permanent."""

    external_port: int
    protocol: str
    internal_host: str
    internal_port: int
    description: str = DEFAULT_DESCRIPTION
    lease_seconds: int = 0
    remote_host: str = ""
    enabled: bool = True

    def __str__(self) -> str:
        lease = "permanent" if not self.lease_seconds else f"lease {self.lease_seconds} s"
        return (f"{self.protocol} {self.external_port} -> {self.internal_host}:{self.internal_port} "
                f"({lease}, {self.description!r})")


def normal_protocol(protocol: str) -> str:
    """'udp'/'UDP' -> 'UDP'; ValueError for anything but UDP and TCP."""
    name = str(protocol).upper()
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be UDP or TCP, not {protocol!r}")
    return name


def check_port(port: int, what: str) -> int:
    """port when it is an int in 1-65535; ValueError naming ``what`` otherwise."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what} must be 1-65535, not {port!r}")
    return port


class Gateway:
    """A discovered IGD. Every method returns a Deferred; ``close`` when done.

    ``control_url`` is the WANIPConnection control URL, ``lan_address`` this
    host's address toward the gateway (the default internal host of mappings).
    """

    def __init__(self, reactor, upnp: Any, call: Caller, *, control_url: str = "",
                 close: Callable[[], None] | None = None) -> None:
        self._reactor = reactor
        self._upnp = upnp
        self._call = call
        self._close = close
        self.control_url = control_url
        self.lan_address: str = getattr(upnp, "lanaddr", "") or ""

    def _run(self, action: str, fn: Callable, *args) -> Deferred:
        """fn(*args) through the caller, with miniupnpc's exceptions translated."""

        def failed(failure):
            failure.trap(Exception)
            raise translate(failure.value, action)

        return self._call(fn, *args).addErrback(failed)

    def external_address(self) -> Deferred:
        """Fires with the gateway's external IPv4 address (str); fails with UpnpError."""

        def got(address):
            if not address:
                raise UpnpError("GetExternalIPAddress: the gateway gave no external address")
            return address

        return self._run("GetExternalIPAddress", self._upnp.externalipaddress).addCallback(got)

    def add_mapping(self, external_port: int, protocol: str = "UDP", internal_port: int | None = None, *,
                    internal_host: str | None = None, description: str = DEFAULT_DESCRIPTION,
                    lease_seconds: int = 3600) -> Deferred:
        """Map external_port/protocol to internal_host:internal_port (defaults: the
        same port, this host). Adding an existing mapping of ours renews its lease.

        Fires with the PortMapping made; its ``lease_seconds`` is 0 when the
        gateway only supports permanent leases (error 725, retried with 0).
        Fails with MappingRefused (the gateway's code and text) or UpnpError.
        """
        return Deferred.fromCoroutine(self._add(external_port, protocol, internal_port, internal_host,
                                                description, lease_seconds))

    async def _add(self, external_port, protocol, internal_port, internal_host, description, lease_seconds):
        protocol = normal_protocol(protocol)
        check_port(external_port, "external_port")
        internal_port = check_port(internal_port if internal_port is not None else external_port, "internal_port")
        if lease_seconds < 0:
            raise ValueError("lease_seconds must be >= 0")
        host = internal_host or self.lan_address
        if not host:
            raise UpnpError("no internal host given and no LAN address known")
        lease = int(lease_seconds)
        try:
            await self._run("AddPortMapping", self._upnp.addportmapping, external_port, protocol, host,
                            internal_port, description, "", lease)
        except MappingRefused as e:
            if e.code != UpnpErrorCode.ONLY_PERMANENT_LEASES_SUPPORTED or lease == 0:
                raise
            log.info("gateway supports only permanent leases; mapping {protocol} {port} permanently",
                     protocol=protocol, port=external_port)
            lease = 0
            await self._run("AddPortMapping", self._upnp.addportmapping, external_port, protocol, host,
                            internal_port, description, "", lease)
        return PortMapping(external_port, protocol, host, internal_port, description, lease)

    def get_mapping(self, external_port: int, protocol: str = "UDP") -> Deferred:
        """Fires with the PortMapping for external_port/protocol, or None when there is none."""
        protocol = normal_protocol(protocol)
        check_port(external_port, "external_port")

        def got(entry):
            # miniupnpc: (internal host, internal port, description, enabled, lease) or None
            if not entry:
                return None
            host, port, description, enabled, lease = entry
            return PortMapping(external_port, protocol, host, int(port), description or "", int(lease or 0),
                               "", bool(enabled))

        return self._run("GetSpecificPortMappingEntry", self._upnp.getspecificportmapping,
                         external_port, protocol).addCallback(got)

    def list_mappings(self) -> Deferred:
        """Fires with a list of every PortMapping on the gateway (of every host)."""
        return self._run("GetGenericPortMappingEntry", self._list_blocking)

    def _list_blocking(self) -> list[PortMapping]:
        """Walks GetGenericPortMappingEntry indexes until the gateway says there are no more."""
        found = []
        for index in range(MAX_LIST_ENTRIES):
            try:
                entry = self._upnp.getgenericportmapping(index)
            except Exception as e:  # index past the end on some gateways: 713
                if translate(e).__class__ is MappingRefused:
                    break
                raise
            if entry is None:
                break
            # miniupnpc: (ext port, proto, (int host, int port), description, enabled, remote host, lease)
            port, protocol, (host, internal_port), description, enabled, remote, lease = entry
            found.append(PortMapping(int(port), str(protocol).upper(), host, int(internal_port), description or "",
                                     int(lease or 0), remote or "", str(enabled) not in ("0", "False", "")))
        return found

    def delete_mapping(self, external_port: int, protocol: str = "UDP") -> Deferred:
        """Remove the mapping; fires with None, fails with MappingRefused (714
        NoSuchEntryInArray when there is none) or UpnpError."""
        protocol = normal_protocol(protocol)
        check_port(external_port, "external_port")
        return self._run("DeletePortMapping", self._upnp.deleteportmapping, external_port, protocol
                         ).addCallback(lambda _: None)

    def close(self) -> None:
        """Stop the thread pool (idempotent)."""
        if self._close is not None:
            close, self._close = self._close, None
            close()


def discover(reactor, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, interface: str | None = None) -> Deferred:
    """Find the Internet Gateway Device on the LAN (SSDP, waiting timeout_seconds).

    Fires with a Gateway (call its ``close`` when done); fails with NoGateway
    when nothing answers, UpnpError when miniupnpc is missing or the device
    description cannot be read.
    """
    from twisted.python.threadpool import ThreadPool

    try:
        import miniupnpc
    except ImportError as e:  # pragma: no cover - depends on the install
        from twisted.internet.defer import fail

        return fail(UpnpError(f"miniupnpc is not installed ({e}); pip install miniupnpc"))
    pool = ThreadPool(minthreads=0, maxthreads=1, name="upnp_helper")
    pool.start()
    trigger = reactor.addSystemEventTrigger("during", "shutdown", pool.stop)

    def close() -> None:
        reactor.removeSystemEventTrigger(trigger)
        pool.stop()

    def call(fn, *args) -> Deferred:
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(reactor, pool, fn, *args)

    def find():
        upnp = miniupnpc.UPnP()
        upnp.discoverdelay = max(1, int(timeout_seconds * 1000))
        if interface:
            upnp.multicastif = interface
        try:
            devices = upnp.discover()
        except Exception as e:
            # miniupnpc raises with strerror(errno) when nothing answers
            # ("Success" for a plain silence) or the M-SEARCH could not be sent.
            reason = str(e).strip()
            detail = f" ({reason})" if reason and reason != "Success" else ""
            raise NoGateway(f"no UPnP gateway answered discovery within {timeout_seconds:g} s{detail}") from None
        if not devices:
            raise NoGateway(f"no UPnP gateway answered discovery within {timeout_seconds:g} s")
        try:
            url = upnp.selectigd()
        except Exception as e:
            error = translate(e, "selectigd")
            if isinstance(error, NoGateway):
                raise NoGateway(f"{devices} UPnP device(s) answered, but none is an Internet Gateway Device"
                                ) from None
            raise error from None
        return upnp, url

    def found(result):
        upnp, url = result
        gateway = Gateway(reactor, upnp, call, control_url=url, close=close)
        log.info("UPnP gateway {url}, our LAN address {lan}", url=url, lan=gateway.lan_address)
        return gateway

    def failed(failure):
        if failure.check(CancelledError):
            return failure  # the pool goes once the thread is done (settle)
        close()
        failure.trap(Exception)
        raise translate(failure.value, "discover")

    # miniupnpc's discovery blocks its thread and cannot be interrupted: cancelling stops the waiting
    # at once (CancelledError), and the thread's result, when it comes, is let go with the pool.
    cancelled: list = []
    searching = call(find)
    out = Deferred(lambda _: cancelled.append(True))

    def settle(result):
        if cancelled:
            close()  # the thread has finished: stopping its pool does not wait
            if isinstance(result, Failure):
                result.trap(Exception)
            return None
        out.callback(result)  # a Failure goes to the errbacks
        return None

    searching.addBoth(settle)
    return out.addCallbacks(found, failed)
