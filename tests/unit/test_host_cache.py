"""The client's host cache file: merge, order, age, bound, survive damage."""

import time

from rendezvous.peer.host_cache import MAX_AGE_SECONDS, MAX_ENTRIES, HostCache


def test_order_save_and_load(tmp_path):
    """Cached nodes come newest first (then least loaded), the bootstrap list last; the file round-trips."""
    cache = HostCache(tmp_path / "hosts.json", bootstrap=[("198.18.0.1", 3478)])
    assert cache.candidates() == [("198.18.0.1", 3478)]
    now = time.time()
    cache.merge([{"host": "198.18.0.2", "port": 3478, "load": 9}], now=now - 100)
    cache.merge([{"host": "198.18.0.3", "port": 3478, "load": 1}, {"host": "198.18.0.4", "port": 443, "load": 0}],
                now=now)
    cache.merge([{"host": "nonsense", "port": 1}, {"host": "198.18.0.5", "port": 0}, "junk"], now=now)
    expected = [("198.18.0.4", 443), ("198.18.0.3", 3478), ("198.18.0.2", 3478), ("198.18.0.1", 3478)]
    assert cache.candidates() == expected
    cache.save()
    again = HostCache(tmp_path / "hosts.json", bootstrap=[("198.18.0.1", 3478)]).load()
    assert again.candidates() == expected


def test_age_and_bound(tmp_path):
    """Entries older than the maximum age go; at most MAX_ENTRIES stay, the newest."""
    cache = HostCache(tmp_path / "hosts.json")
    cache.merge([{"host": "198.18.0.9", "port": 1}], now=0)
    cache.merge([{"host": f"198.18.{i // 200}.{i % 200}", "port": 2} for i in range(MAX_ENTRIES + 50)],
                now=MAX_AGE_SECONDS + 1)
    assert len(cache.candidates()) == MAX_ENTRIES
    assert ("198.18.0.9", 1) not in cache.candidates()


def test_damaged_file_is_an_empty_cache(tmp_path):
    """A damaged or missing file leaves only the bootstrap list."""
    path = tmp_path / "hosts.json"
    path.write_text("{not json")
    assert HostCache(path, [("198.18.0.1", 3478)]).load().candidates() == [("198.18.0.1", 3478)]
    assert HostCache(tmp_path / "missing.json").load().candidates() == []


def test_the_address_a_login_reached_is_kept(tmp_path):
    """``remember`` keeps the address a login won the race at (one of the node's) across saves and merges;
    an address that is not the node's is not kept."""
    cache = HostCache(tmp_path / "hosts.json")
    cache.merge([{"host": "198.18.0.1", "port": 3478, "ips": ["198.18.0.1", "2001:db8::1"]}])
    assert cache.addresses(("198.18.0.1", 3478)) == ["198.18.0.1", "2001:db8::1"]
    assert cache.reached_via(("198.18.0.1", 3478)) is None
    cache.remember(("198.18.0.1", 3478), "203.0.113.1")
    assert cache.reached_via(("198.18.0.1", 3478)) is None
    cache.remember(("198.18.0.1", 3478), "2001:db8::1")
    cache.merge([{"host": "198.18.0.1", "port": 3478, "ips": ["198.18.0.1", "2001:db8::1"]}])  # the next welcome
    cache.save()
    again = HostCache(tmp_path / "hosts.json").load()
    assert again.reached_via(("198.18.0.1", 3478)) == "2001:db8::1"
    again.merge([{"host": "198.18.0.1", "port": 3478}])  # the node lost its IPv6 address
    assert again.reached_via(("198.18.0.1", 3478)) is None
