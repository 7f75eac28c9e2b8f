"""Listening sockets (relay.listening): IPv6 ones IPv6-only, beside IPv4 ones on the same port, and the
dual-stack default on a host without IPv6."""

import errno
import socket

import pytest
from twisted.logger import globalLogPublisher

from relay.listening import bind_socket, listening_ips


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_ipv6_sockets_are_ipv6_only_beside_ipv4_on_the_same_port(kind):
    """An IPv6 wildcard socket has IPV6_V6ONLY set, so it binds beside an IPv4 wildcard socket on one port."""
    v4 = bind_socket(kind, "0.0.0.0", 0)
    try:
        port = v4.getsockname()[1]
        v6 = bind_socket(kind, "::", port)
        try:
            assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert v6.getsockname()[1] == port
        finally:
            v6.close()
    finally:
        v4.close()


def test_busy_udp_port_still_fails():
    """Without reuse_port a UDP port taken in the same family is refused (the start fails, no silent share)."""
    first = bind_socket("udp", "127.0.0.1", 0)
    try:
        with pytest.raises(OSError) as raised:
            bind_socket("udp", "127.0.0.1", first.getsockname()[1])
        assert raised.value.errno == errno.EADDRINUSE
    finally:
        first.close()


def _no_ipv6() -> OSError:
    return OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")


def test_dual_stack_default_goes_on_with_ipv4_without_ipv6():
    """Where an IPv6 socket cannot be made (EAFNOSUPPORT), the IPv6 wildcard is dropped with one log line."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert listening_ips(("0.0.0.0", "::"), probe=_no_ipv6) == ("0.0.0.0",)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if "no IPv6 on this host" in e.get("log_format", "")]
    assert len(lines) == 1 and lines[0]["error"] == "Address family not supported by protocol"


def test_ipv6_kept_where_it_works_or_was_asked_for_alone():
    """With IPv6 working the default keeps both; an explicit lone --ip :: is kept (its bind fails loudly)."""
    assert listening_ips(("0.0.0.0", "::"), probe=lambda: None) == ("0.0.0.0", "::")
    assert listening_ips(("::",), probe=_no_ipv6) == ("::",)
    assert listening_ips(("127.0.0.1",), probe=_no_ipv6) == ("127.0.0.1",)
    busy = OSError(errno.EADDRINUSE, "Address in use")
    assert listening_ips(("0.0.0.0", "::"), probe=lambda: busy) == ("0.0.0.0", "::")
