"""Building responses to a request (RFC 8489 §6.3.1.1, §6.3.1.2)."""

from .attributes import encode_error_code, encode_unknown_attributes
from .constants import REASONS, Attr, Class
from .message import Message


def success_response(request: Message) -> Message:
    """A success response carrying the request's method and transaction id."""
    return Message(request.method, Class.SUCCESS, request.transaction_id, [], request.cookie)


def error_response(
    request: Message, code: int, reason: str | None = None, unknown: list[int] | None = None
) -> Message:
    """An error response with ERROR-CODE (and UNKNOWN-ATTRIBUTES for 420)."""
    response = Message(request.method, Class.ERROR, request.transaction_id, [], request.cookie)
    response.add(Attr.ERROR_CODE, encode_error_code(code, reason or REASONS.get(code, "")))
    if unknown:
        response.add(Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown))
    return response


def unknown_required(request: Message, understood: frozenset[int]) -> list[int]:
    """Comprehension-required attribute types of the request not in understood."""
    seen: list[int] = []
    for attr_type, _ in request.attributes:
        if attr_type < 0x8000 and attr_type not in understood and attr_type not in seen:
            seen.append(attr_type)
    return seen
