"""Wire constants of STUN and its extensions, named as in the RFCs.

RFC 8489 §5 (header), §18 (registries); RFC 5780 §7 (NAT behaviour discovery);
RFC 3489 §11.2 (classic attributes); RFC 8656 §18 and RFC 6062 §6 (TURN);
RFC 8445 §16 (ICE); RFC 7635 (ACCESS-TOKEN).
"""

from enum import IntEnum

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12
FINGERPRINT_XOR = 0x5354554E


class Class(IntEnum):
    """The message class, RFC 8489 §5 (the C1/C0 bits)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(IntEnum):
    """STUN methods, RFC 8489 §18.2, RFC 8656 §18, RFC 6062 §6.1."""

    BINDING = 0x001
    SHARED_SECRET = 0x002  # RFC 3489, reserved since RFC 5389
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class Attr(IntEnum):
    """Attribute types; below 0x8000 comprehension-required (RFC 8489 §14, §18.3)."""

    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    ACCESS_TOKEN = 0x001B
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    CONNECTION_ID = 0x002A
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    TRANSACTION_TRANSMIT_COUNTER = 0x8025
    CACHE_TIMEOUT = 0x8027
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C
    # The code points of draft-ietf-tram-turnbis that coturn (4.6) still sends
    # and answers for the two attributes above that RFC 8656 put at 0x8000 and
    # 0x8001; unassigned by IANA, accepted so its dual allocation (-Z) works.
    DRAFT_ADDITIONAL_ADDRESS_FAMILY = 0x8032
    DRAFT_ADDRESS_ERROR_CODE = 0x8033


def comprehension_required(attr_type: int) -> bool:
    """True for types 0x0000-0x7FFF, which an agent must understand (RFC 8489 §14)."""
    return attr_type < 0x8000


class Error(IntEnum):
    """ERROR-CODE values, RFC 8489 §14.8, RFC 8656 §18, RFC 6062 §6.3, RFC 8445 §16."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    MOBILITY_FORBIDDEN = 405
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    CONNECTION_ALREADY_EXISTS = 446
    CONNECTION_TIMEOUT_OR_FAILURE = 447
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


REASONS = {
    Error.TRY_ALTERNATE: "Try Alternate",
    Error.BAD_REQUEST: "Bad Request",
    Error.UNAUTHENTICATED: "Unauthenticated",
    Error.FORBIDDEN: "Forbidden",
    Error.MOBILITY_FORBIDDEN: "Mobility Forbidden",
    Error.UNKNOWN_ATTRIBUTE: "Unknown Attribute",
    Error.ALLOCATION_MISMATCH: "Allocation Mismatch",
    Error.STALE_NONCE: "Stale Nonce",
    Error.ADDRESS_FAMILY_NOT_SUPPORTED: "Address Family not Supported",
    Error.WRONG_CREDENTIALS: "Wrong Credentials",
    Error.UNSUPPORTED_TRANSPORT_PROTOCOL: "Unsupported Transport Protocol",
    Error.PEER_ADDRESS_FAMILY_MISMATCH: "Peer Address Family Mismatch",
    Error.CONNECTION_ALREADY_EXISTS: "Connection Already Exists",
    Error.CONNECTION_TIMEOUT_OR_FAILURE: "Connection Timeout or Failure",
    Error.ALLOCATION_QUOTA_REACHED: "Allocation Quota Reached",
    Error.ROLE_CONFLICT: "Role Conflict",
    Error.SERVER_ERROR: "Server Error",
    Error.INSUFFICIENT_CAPACITY: "Insufficient Capacity",
}


class PasswordAlgorithm(IntEnum):
    """PASSWORD-ALGORITHM values, RFC 8489 §18.5."""

    MD5 = 0x0001
    SHA256 = 0x0002


class AddressFamily(IntEnum):
    """Address family octet of the address attributes, RFC 8489 §14.1."""

    IPV4 = 0x01
    IPV6 = 0x02


CHANGE_IP = 0x04
CHANGE_PORT = 0x02
