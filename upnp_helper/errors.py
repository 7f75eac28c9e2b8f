"""The exceptions of upnp_helper, and the translation of miniupnpc's bare ones.

miniupnpc raises plain ``Exception(text)`` where ``text`` is its
``strupnperror()`` string for the UPnP error code (UPnP IGD:1 WANIPConnection
and IGD:2 WANIPConnection:2 section 2.4 error tables) or for one of its own
negative ``UPNPCOMMAND_*`` codes; the code itself is lost, so it is recovered
here from the text.
"""

from __future__ import annotations

from enum import IntEnum


class UpnpError(Exception):
    """A UPnP operation failed (transport trouble, a bad answer, or a gateway error)."""


class NoGateway(UpnpError):
    """No UPnP Internet Gateway Device answered discovery."""


class MappingRefused(UpnpError):
    """The gateway answered a mapping request with an error code (UPnP, NAT-PMP or PCP)."""

    def __init__(self, code: int | None, text: str, action: str = "", protocol: str = "UPnP") -> None:
        self.code = code
        self.text = text
        self.action = action
        self.protocol = protocol
        where = f"{action}: " if action else ""
        number = f"{protocol} error {code}" if code is not None else f"{protocol} error"
        super().__init__(f"{where}the gateway refused ({number} {text})")


class UpnpErrorCode(IntEnum):
    """UPnP control error codes a gateway may answer (UPnP Device Architecture and IGD)."""

    INVALID_ACTION = 401
    INVALID_ARGS = 402
    ACTION_FAILED = 501
    ACTION_NOT_AUTHORIZED = 606
    SPECIFIED_ARRAY_INDEX_INVALID = 713
    NO_SUCH_ENTRY_IN_ARRAY = 714
    WILDCARD_NOT_PERMITTED_IN_SRC_IP = 715
    WILDCARD_NOT_PERMITTED_IN_EXT_PORT = 716
    CONFLICT_IN_MAPPING_ENTRY = 718
    SAME_PORT_VALUES_REQUIRED = 724
    ONLY_PERMANENT_LEASES_SUPPORTED = 725
    REMOTE_HOST_ONLY_SUPPORTS_WILDCARD = 726
    EXTERNAL_PORT_ONLY_SUPPORTS_WILDCARD = 727
    NO_PORT_MAPS_AVAILABLE = 728
    CONFLICT_WITH_OTHER_MECHANISMS = 729
    PORT_MAPPING_NOT_FOUND = 730
    WILDCARD_NOT_PERMITTED_IN_INT_PORT = 732


# miniupnpc's strupnperror() texts for the codes above.
_CODE_OF_TEXT = {
    "Invalid Action": UpnpErrorCode.INVALID_ACTION,
    "Invalid Args": UpnpErrorCode.INVALID_ARGS,
    "Action Failed": UpnpErrorCode.ACTION_FAILED,
    "Action not authorized": UpnpErrorCode.ACTION_NOT_AUTHORIZED,
    "SpecifiedArrayIndexInvalid": UpnpErrorCode.SPECIFIED_ARRAY_INDEX_INVALID,
    "NoSuchEntryInArray": UpnpErrorCode.NO_SUCH_ENTRY_IN_ARRAY,
    "WildCardNotPermittedInSrcIP": UpnpErrorCode.WILDCARD_NOT_PERMITTED_IN_SRC_IP,
    "WildCardNotPermittedInExtPort": UpnpErrorCode.WILDCARD_NOT_PERMITTED_IN_EXT_PORT,
    "ConflictInMappingEntry": UpnpErrorCode.CONFLICT_IN_MAPPING_ENTRY,
    "SamePortValuesRequired": UpnpErrorCode.SAME_PORT_VALUES_REQUIRED,
    "OnlyPermanentLeasesSupported": UpnpErrorCode.ONLY_PERMANENT_LEASES_SUPPORTED,
    "RemoteHostOnlySupportsWildcard": UpnpErrorCode.REMOTE_HOST_ONLY_SUPPORTS_WILDCARD,
    "ExternalPortOnlySupportsWildcard": UpnpErrorCode.EXTERNAL_PORT_ONLY_SUPPORTS_WILDCARD,
    "NoPortMapsAvailable": UpnpErrorCode.NO_PORT_MAPS_AVAILABLE,
    "ConflictWithOtherMechanisms": UpnpErrorCode.CONFLICT_WITH_OTHER_MECHANISMS,
    "PortMappingNotFound": UpnpErrorCode.PORT_MAPPING_NOT_FOUND,
    "WildCardNotPermittedInIntPort": UpnpErrorCode.WILDCARD_NOT_PERMITTED_IN_INT_PORT,
}

_NO_DEVICE_TEXT = "No UPnP device discovered"


def translate(error: BaseException, action: str = "") -> UpnpError:
    """Our exception for one miniupnpc raised: NoGateway, MappingRefused for a
    gateway's UPnP error, UpnpError for anything else (HTTP, socket, parsing)."""
    if isinstance(error, UpnpError):
        return error
    text = str(error).strip()
    if text == _NO_DEVICE_TEXT:
        return NoGateway("no UPnP gateway answered discovery")
    code = _CODE_OF_TEXT.get(text)
    if code is not None:
        return MappingRefused(int(code), text, action)
    where = f"{action}: " if action else ""
    return UpnpError(f"{where}{text or type(error).__name__}")
