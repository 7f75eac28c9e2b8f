"""Sans-IO STUN/TURN wire codec (RFC 8489, 5780, 3489, 8656, 6062, 8445).

No Twisted and no sockets here: bytes in, bytes out.
"""

from .addresses import Address
from .constants import MAGIC_COOKIE, AddressFamily, Attr, Class, Error, Method, PasswordAlgorithm
from .errors import CodecError
from .message import Message

__all__ = [
    "Address",
    "AddressFamily",
    "Attr",
    "Class",
    "CodecError",
    "Error",
    "MAGIC_COOKIE",
    "Message",
    "Method",
    "PasswordAlgorithm",
]
