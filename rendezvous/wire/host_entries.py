"""A super node entry as ``welcome`` and ``hosts`` carry it (docs/PROTOCOL.md): {host, port, load}."""

import ipaddress

MAX_LOAD = 2**31 - 1  # a load past this is taken for 0: entries stay small, so frames carrying 200 fit


def host_entry(entry) -> dict | None:
    """A super node entry {host, port, load} checked and cleaned, or None."""
    if not isinstance(entry, dict):
        return None
    try:
        host = str(ipaddress.ip_address(entry.get("host")))
    except (ValueError, TypeError):
        return None
    port, load = entry.get("port"), entry.get("load", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    ok = isinstance(load, int) and not isinstance(load, bool) and 0 <= load <= MAX_LOAD
    return {"host": host, "port": port, "load": load if ok else 0}
