"""upnp_helper without a network: error translation, the 725 retry, listing,
lease renewal at half-life and the Service's start/stop, on a fake miniupnpc
object run synchronously with task.Clock."""

import argparse

import pytest
from twisted.internet import task
from twisted.internet.defer import fail, maybeDeferred, succeed

from upnp_helper import (
    Gateway,
    LeaseKeeper,
    MappingRefused,
    MappingRequest,
    NoGateway,
    PortMapping,
    PortMappingService,
    UpnpError,
)
from upnp_helper.errors import translate
from upnp_helper.service import renewal_delay_seconds, retry_delay_seconds


class FakeUpnp:
    """Answers like miniupnpc.UPnP, keeping mappings in a dict; raises bare Exceptions like it."""

    lanaddr = "192.168.1.2"

    def __init__(self, permanent_only=False, refuse=None):
        self.table = {}
        self.adds = []
        self.permanent_only = permanent_only
        self.refuse = refuse

    def externalipaddress(self):
        return "198.18.0.11"

    def addportmapping(self, eport, proto, host, iport, desc, remote, lease):
        self.adds.append((eport, proto, lease))
        if self.refuse:
            raise Exception(self.refuse)
        if self.permanent_only and lease:
            raise Exception("OnlyPermanentLeasesSupported")
        self.table[(eport, proto)] = (host, iport, desc, True, lease)
        return True

    def getspecificportmapping(self, eport, proto):
        return self.table.get((eport, proto))

    def getgenericportmapping(self, index):
        items = sorted(self.table.items())
        if index >= len(items):
            return None
        (eport, proto), (host, iport, desc, enabled, lease) = items[index]
        return (eport, proto, (host, iport), desc, "1", "", lease)

    def deleteportmapping(self, eport, proto):
        if self.table.pop((eport, proto), None) is None:
            raise Exception("NoSuchEntryInArray")
        return True


def sync(fn, *args):
    """Runs the 'blocking' call at once instead of in a thread."""
    return maybeDeferred(fn, *args)


def result_of(d):
    """The result of a fired Deferred, raising its failure."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def gateway(upnp=None, clock=None):
    return Gateway(clock or task.Clock(), upnp or FakeUpnp(), sync, control_url="http://192.168.1.1:1/ctl")


# -- error translation ------------------------------------------------------------


def test_no_device_text_becomes_no_gateway():
    """miniupnpc's 'No UPnP device discovered' becomes NoGateway."""
    assert isinstance(translate(Exception("No UPnP device discovered")), NoGateway)


def test_upnp_error_texts_become_mapping_refused_with_their_code():
    """A gateway's UPnP error text becomes MappingRefused carrying the code and text."""
    error = translate(Exception("ConflictInMappingEntry"), "AddPortMapping")
    assert isinstance(error, MappingRefused)
    assert (error.code, error.text) == (718, "ConflictInMappingEntry")
    assert "AddPortMapping" in str(error) and "718" in str(error)
    assert translate(Exception("Action not authorized")).code == 606
    assert translate(Exception("OnlyPermanentLeasesSupported")).code == 725


def test_miniupnpc_own_errors_become_upnp_error():
    """Transport and parsing errors of miniupnpc become a plain UpnpError."""
    error = translate(Exception("Miniupnpc HTTP error"), "GetExternalIPAddress")
    assert type(error) is UpnpError
    assert "Miniupnpc HTTP error" in str(error)


# -- the gateway ------------------------------------------------------------------


def test_add_get_list_delete():
    """A mapping added is got, listed and deleted; get answers None afterwards."""
    gw = gateway()
    made = result_of(gw.add_mapping(40000, "udp", lease_seconds=600))
    assert made == PortMapping(40000, "UDP", "192.168.1.2", 40000, "txrendezvous", 600)
    result_of(gw.add_mapping(40001, "TCP", 5000, lease_seconds=0))
    assert result_of(gw.get_mapping(40000, "UDP")).lease_seconds == 600
    listed = result_of(gw.list_mappings())
    assert [(m.external_port, m.protocol, m.internal_port) for m in listed] == [(40000, "UDP", 40000),
                                                                               (40001, "TCP", 5000)]
    result_of(gw.delete_mapping(40000, "UDP"))
    assert result_of(gw.get_mapping(40000, "UDP")) is None


def test_permanent_only_gateway_gets_a_permanent_retry():
    """Error 725 on a leased mapping is retried once with lease 0, and the mapping says so."""
    upnp = FakeUpnp(permanent_only=True)
    made = result_of(gateway(upnp).add_mapping(40000, "UDP", lease_seconds=3600))
    assert made.lease_seconds == 0
    assert upnp.adds == [(40000, "UDP", 3600), (40000, "UDP", 0)]


def test_refusal_fails_with_mapping_refused():
    """A gateway refusal fails add_mapping with MappingRefused, without a retry."""
    upnp = FakeUpnp(refuse="ConflictInMappingEntry")
    with pytest.raises(MappingRefused) as caught:
        result_of(gateway(upnp).add_mapping(40000, "UDP"))
    assert caught.value.code == 718 and len(upnp.adds) == 1


def test_deleting_a_missing_mapping_is_refused():
    """Deleting what is not there fails with MappingRefused 714."""
    with pytest.raises(MappingRefused) as caught:
        result_of(gateway().delete_mapping(40000, "UDP"))
    assert caught.value.code == 714


def test_bad_arguments_raise_value_error():
    """An unknown protocol or an out-of-range port is refused before any call."""
    with pytest.raises(ValueError):
        gateway().get_mapping(40000, "SCTP")
    with pytest.raises(ValueError):
        result_of(gateway().add_mapping(0, "UDP"))


# -- lease renewal ------------------------------------------------------------------


def test_renewal_schedule():
    """Leases renew at half-life, permanent ones never; retries halve what is left."""
    assert renewal_delay_seconds(3600) == 1800
    assert renewal_delay_seconds(0) is None
    assert retry_delay_seconds(100) == 50
    assert retry_delay_seconds(1) is None


def test_keeper_renews_at_half_life():
    """A 100 s lease is re-added at 50 s and again 50 s after that."""
    clock, upnp = task.Clock(), FakeUpnp()
    gw = gateway(upnp, clock)
    keeper = LeaseKeeper(clock, gw, result_of(gw.add_mapping(40000, "UDP", lease_seconds=100)))
    keeper.start()
    clock.advance(49.9)
    assert len(upnp.adds) == 1
    clock.advance(0.1)
    assert len(upnp.adds) == 2 and keeper.renewals == 1
    clock.advance(50)
    assert len(upnp.adds) == 3
    keeper.stop()
    assert clock.getDelayedCalls() == []


def test_keeper_leaves_permanent_mappings_alone():
    """A permanent mapping schedules no renewal."""
    clock = task.Clock()
    keeper = LeaseKeeper(clock, gateway(clock=clock), PortMapping(40000, "UDP", "192.168.1.2", 40000))
    keeper.start()
    assert clock.getDelayedCalls() == []


def test_keeper_retries_then_reports_the_lease_lost():
    """Failed renewals retry at half of what is left, then report the mapping lost."""
    clock, upnp = task.Clock(), FakeUpnp()
    gw = gateway(upnp, clock)
    lost = []
    keeper = LeaseKeeper(clock, gw, result_of(gw.add_mapping(40000, "UDP", lease_seconds=8)), lost.append)
    keeper.start()
    upnp.refuse = "Miniupnpc HTTP error"
    clock.pump([4, 2, 1])  # renew at 4 (fails, 4 s left), retry at 6 (2 left), retry at 7 (1 left: lost)
    assert len(upnp.adds) == 4
    assert keeper.lost and [m.external_port for m in lost] == [40000]
    assert clock.getDelayedCalls() == []


# -- the service ----------------------------------------------------------------------


def fake_discover(upnp, closed):
    def discover(reactor, timeout_seconds):
        return succeed(Gateway(reactor, upnp, sync, close=lambda: closed.append(True)))

    return discover


def test_service_maps_on_start_and_unmaps_on_stop():
    """Starting maps every request and keeps its lease; stopping deletes them and closes the gateway."""
    clock, upnp, closed = task.Clock(), FakeUpnp(), []
    svc = PortMappingService(clock, [MappingRequest(40000), MappingRequest(5000, "tcp", external_port=45000)],
                             lease_seconds=100, discover=fake_discover(upnp, closed))
    svc.startService()
    mappings = result_of(svc.when_ready())
    assert [(m.external_port, m.protocol) for m in mappings] == [(40000, "UDP"), (45000, "TCP")]
    assert svc.external_address == "198.18.0.11"
    clock.advance(50)
    assert len(upnp.adds) == 4  # both renewed
    result_of(svc.stopService())
    assert upnp.table == {} and closed == [True]
    assert clock.getDelayedCalls() == []


def test_service_reports_no_gateway():
    """Without a gateway when_ready fails with NoGateway and stopping is harmless."""
    svc = PortMappingService(task.Clock(), [MappingRequest(40000)],
                             discover=lambda reactor, timeout_seconds: fail(NoGateway("nothing answered")))
    svc.startService()
    with pytest.raises(NoGateway):
        result_of(svc.when_ready())
    result_of(svc.stopService())


def test_cli_arguments_parse():
    """The upnp subcommand parses map, list and unmap with their options."""
    from rendezvous.cli.upnp import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["map", "40000", "--protocol", "tcp", "--lease-seconds", "60"])
    assert (args.action, args.port, args.protocol, args.lease_seconds) == ("map", 40000, "TCP", 60)
    assert parser.parse_args(["unmap", "40000"]).protocol == "UDP"
    assert parser.parse_args(["list"]).action == "list"
    with pytest.raises(SystemExit):
        parser.parse_args(["map", "0"])
