"""A super node entry as ``welcome`` and ``hosts`` carry it (docs/PROTOCOL.md): {host, port, load, ips?}.

``ips`` lists every public address of a dual-stack node (``host`` first,
IPv4 and IPv6), so a client can race them (RFC 8305); it is left out when
``host`` is the only one.
"""

import ipaddress

MAX_LOAD = 2**31 - 1  # a load past this is taken for 0: entries stay small, so frames carrying 200 fit
MAX_IPS = 2  # addresses kept per entry (one per family); more are dropped


def _ip(value) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        return None


def host_ips(host: str, ips) -> list[str]:
    """host and the valid, distinct addresses of ips after it, at most MAX_IPS in all."""
    found = [host]
    for value in ips if isinstance(ips, list) else []:
        ip = _ip(value) if isinstance(value, str) else None
        if ip is not None and ip not in found and len(found) < MAX_IPS:
            found.append(ip)
    return found


def host_entry(entry) -> dict | None:
    """A super node entry {host, port, load, ips?} checked and cleaned, or None."""
    if not isinstance(entry, dict):
        return None
    host = _ip(entry.get("host"))
    if host is None:
        return None
    port, load = entry.get("port"), entry.get("load", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    ok = isinstance(load, int) and not isinstance(load, bool) and 0 <= load <= MAX_LOAD
    clean = {"host": host, "port": port, "load": load if ok else 0}
    ips = host_ips(host, entry.get("ips"))
    if len(ips) > 1:
        clean["ips"] = ips
    return clean
