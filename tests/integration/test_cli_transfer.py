"""``txrendezvous send`` / ``receive`` between two processes and a real node on loopback: a file
arrives with the same SHA-256 over a direct session and through the relay; an existing file is kept;
a sender killed midway leaves the receiver failing and no file under the target name."""

import fcntl
import hashlib
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.conftest import ROOT, add_buddies, start_node, stop_node

pytestmark = pytest.mark.integration

PAIRS = (("ann", "ben"), ("cat", "dan"), ("eve", "fay"), ("gus", "hal"), ("ivy", "joe"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node whose accounts come in buddy pairs."""
    tmp = tmp_path_factory.mktemp("transfer")
    add_buddies(tmp / "state", PAIRS)
    started = start_node(tmp, "--allow-peer", "127.0.0.0/8")
    yield started
    stop_node(started)


def command(node, tmp_path, verb, user, *args):
    """argv and env for txrendezvous VERB as user (password in the environment, state under tmp_path)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp_path / "state"),
               TXRENDEZVOUS_PASSWORD=f"{user}-pw")
    return [sys.executable, "-m", "rendezvous.cli.main", verb, f"{node.ip}:{node.port}", user, *args,
            "--loopback"], env


def start_receiver(node, tmp_path, user, *args):
    argv, env = command(node, tmp_path, "receive", user, *args)
    receiver = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = receiver.stderr.readline()
    if line.strip() != f"waiting for a file as {user}":
        receiver.kill()
        raise AssertionError(line + receiver.stderr.read())
    return receiver


def finish(process, timeout=60):
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return process.returncode, out, err


def random_file(path, size):
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("route, sender, receiver_user, megabytes", [
    ("direct", "ann", "ben", 50),
    ("relay", "cat", "dan", 5),
])
def test_a_file_arrives_intact(node, tmp_path, route, sender, receiver_user, megabytes):
    """The file moves (50 MB direct, 5 MB through the relay); both exit 0 and print the same SHA-256."""
    source = tmp_path / "outbox" / "payload.bin"
    source.parent.mkdir()
    digest = random_file(source, megabytes << 20)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    extra = ["--relay-only"] if route == "relay" else []
    receiver = start_receiver(node, tmp_path, receiver_user, "--output", str(inbox), "--from", sender, *extra)
    try:
        argv, env = command(node, tmp_path, "send", sender, receiver_user, str(source), *extra)
        sent = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        code, out, err = finish(receiver)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(10)
    assert sent.returncode == 0, sent.stderr
    assert code == 0, err
    # relay first: the direct route may begin on the relay and move to the direct pair at once
    began = "turn-udp" if route == "relay" or "over turn-udp" in sent.stderr else "udp-direct"
    assert f"sending payload.bin ({megabytes << 20} bytes) to {receiver_user} over {began}" in sent.stderr
    if route == "direct" and began == "turn-udp":
        assert "moved to udp-direct" in sent.stderr, sent.stderr
    assert sent.stdout.startswith(f"sent payload.bin: {megabytes << 20} bytes in ")
    assert sent.stdout.strip().endswith(f"sha256 {digest}") and out.strip().endswith(f"sha256 {digest}")
    assert out.startswith(f"received {inbox / 'payload.bin'}: {megabytes << 20} bytes")
    assert hashlib.sha256((inbox / "payload.bin").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in inbox.iterdir()) == ["payload.bin"]
    assert "%|" not in sent.stderr and "%|" not in err  # no progress bar when stderr is not a terminal


def test_a_terminal_gets_a_progress_bar(node, tmp_path):
    """With stderr on a terminal the sender draws a bar with bytes, rate and ETA; --quiet turns it off."""
    source = tmp_path / "bar.bin"
    random_file(source, 3 << 20)
    screens = []
    for quiet in ([], ["--quiet"]):
        inbox = tmp_path / f"inbox{len(screens)}"
        inbox.mkdir()
        receiver = start_receiver(node, tmp_path, "joe", "--output", str(inbox))
        terminal, stderr = pty.openpty()
        fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        argv, env = command(node, tmp_path, "send", "ivy", "joe", str(source), *quiet)
        sender = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=stderr)
        os.close(stderr)
        screen = b""
        while chunk := _read(terminal):
            screen += chunk
        os.close(terminal)
        assert sender.wait(60) == 0 and finish(receiver)[0] == 0
        screens.append(screen.decode(errors="replace"))
    drawn, quiet = screens
    assert "bar.bin: 100%|" in drawn and "3.00M/3.00M [" in drawn and "B/s]" in drawn, drawn
    assert "%|" not in quiet and "sending bar.bin" in quiet


def _read(terminal) -> bytes:
    try:
        return os.read(terminal, 65536)
    except OSError:  # the sender closed the terminal's other side
        return b""


def test_an_existing_file_is_not_overwritten_without_force(node, tmp_path):
    """The receiver refuses a file whose name exists: both exit 1 saying so, and the old file stays."""
    source = tmp_path / "report.txt"
    source.write_bytes(b"new contents\n")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "report.txt").write_bytes(b"old contents\n")
    receiver = start_receiver(node, tmp_path, "fay", "--output", str(inbox))
    argv, env = command(node, tmp_path, "send", "eve", "fay", str(source))
    sent = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    code, out, err = finish(receiver)
    assert sent.returncode == 1 and "the receiver refused" in sent.stderr and "--force" in sent.stderr, sent.stderr
    assert code == 1 and "exists" in err and out == ""
    assert (inbox / "report.txt").read_bytes() == b"old contents\n"
    assert sorted(p.name for p in inbox.iterdir()) == ["report.txt"]


def test_a_sender_killed_midway_leaves_no_file(node, tmp_path):
    """SIGKILL on the sender once part of the file has arrived: the receiver exits 1 naming how much came,
    and neither the target nor a temporary file is left."""
    source = tmp_path / "big.bin"
    random_file(source, 50 << 20)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    receiver = start_receiver(node, tmp_path, "hal", "--output", str(inbox))
    argv, env = command(node, tmp_path, "send", "gus", "hal", str(source))
    sender = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sender.poll() is None:
            partial = [p for p in inbox.iterdir() if p.stat().st_size > 4 << 20]
            if partial:
                break
            time.sleep(0.05)
        assert partial, "no partial file appeared"
        sender.send_signal(signal.SIGKILL)
        sender.wait(10)
        code, out, err = finish(receiver, timeout=120)
    finally:
        for process in (sender, receiver):
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert code == 1 and out == "", err
    assert "txrendezvous receive: the stream ended after" in err and "of 52428800 bytes" in err, err
    assert list(inbox.iterdir()) == []
