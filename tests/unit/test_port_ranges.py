"""The start-up warning when the relay port range overlaps the kernel's ephemeral ports."""

from twisted.logger import globalLogPublisher

from relay.service import ephemeral_ports, warn_ephemeral_overlap


def warnings_while(call):
    """The log events at warn level emitted during call(), and what call() returned."""
    events = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        result = call()
    finally:
        globalLogPublisher.removeObserver(observer)
    return [e for e in events if e.get("log_level").name == "warn"], result


def test_overlap_with_the_ephemeral_range_is_warned_about(tmp_path):
    """A relay range overlapping net.ipv4.ip_local_port_range logs one warning naming both ranges."""
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n")
    warned, overlapped = warnings_while(lambda: warn_ephemeral_overlap((49152, 65535), str(proc)))
    assert overlapped and len(warned) == 1
    assert warned[0]["ephemeral_low"] == 32768 and warned[0]["high"] == 65535
    assert "ip_local_port_range" in warned[0]["log_format"]


def test_separate_ranges_are_not_warned_about(tmp_path):
    """No warning when the ranges are apart, or when the kernel's range cannot be read."""
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768 49151\n")
    assert warnings_while(lambda: warn_ephemeral_overlap((49152, 65535), str(proc))) == ([], False)
    assert warnings_while(lambda: warn_ephemeral_overlap((49152, 65535), str(tmp_path / "none"))) == ([], False)
    proc.write_text("garbage")
    assert ephemeral_ports(str(proc)) is None


def test_the_kernels_range_is_read():
    """On Linux the running kernel's ephemeral range is read from /proc."""
    low, high = ephemeral_ports()
    assert 0 < low <= high <= 65535
