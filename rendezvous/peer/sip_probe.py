"""A SIP INVITE to catch ALGs in the act, and the comparison of what came back (sans-IO).

A SIP ALG on a NAT (e.g. Linux nf_nat_sip) rewrites the private address and
port it finds in a SIP message (RFC 3261 §20: Via, Contact, From, To; RFC
4566 SDP: ``o=``, ``c=``, ``m=``) into the public ones. ``invite`` writes
our private address into all of them; ``rewritten_fields`` names the fields
that differ in the copy the echo service saw.
"""

from __future__ import annotations

import secrets

# The fields worth naming: SIP header names, and SDP line types.
_HEADERS = ("via", "contact", "from", "to", "call-id", "cseq", "content-length")


def invite(local_ip: str, local_port: int, server_ip: str, server_port: int, media_port: int) -> bytes:
    """An INVITE from local_ip:local_port to the server, with an SDP offer on media_port."""
    tag, call = secrets.token_hex(4), secrets.token_hex(8)
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {local_ip}\r\ns=-\r\nc=IN IP4 {local_ip}\r\nt=0 0\r\n"
           f"m=audio {media_port} RTP/AVP 0\r\n")
    headers = (f"INVITE sip:echo@{server_ip}:{server_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {local_ip}:{local_port};branch=z9hG4bK{call}\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:probe@{local_ip}:{local_port}>;tag={tag}\r\n"
               f"To: <sip:echo@{server_ip}:{server_port}>\r\n"
               f"Call-ID: {call}@{local_ip}\r\n"
               f"CSeq: 1 INVITE\r\n"
               f"Contact: <sip:probe@{local_ip}:{local_port}>\r\n"
               f"Content-Type: application/sdp\r\n"
               f"Content-Length: {len(sdp)}\r\n\r\n")
    return (headers + sdp).encode("ascii")


def _fields(message: bytes) -> dict[str, list[str]]:
    text = message.decode("latin-1")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    fields: dict[str, list[str]] = {"request-line": [lines[0]]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        fields.setdefault(key if key in _HEADERS else "other headers", []).append(value.strip())
    for line in body.split("\r\n"):
        if line:
            key, _, value = line.partition("=")
            fields.setdefault(f"sdp {key}=", []).append(value)
    return fields


def rewritten_fields(sent: bytes, received: bytes) -> list[str]:
    """The names of the fields that differ between sent and received (sorted;
    empty when they are byte for byte the same)."""
    if sent == received:
        return []
    before, after = _fields(sent), _fields(received)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return changed or ["message"]
