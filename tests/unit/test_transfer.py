"""The file transfer protocol (docs/PROTOCOL.md "File transfer"): the receiver places a file only when
its size and SHA-256 agree, never over an existing one unless forced, and leaves no partial file;
sender and receiver run over two in-memory QUIC sessions on task.Clock."""

import hashlib
import os

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rendezvous.peer.transfer import (FAILED, OK, REFUSED, REPLY_HEAD, FileReceiving, FileSending, Offer,
                                      TransferError, check_name)
from tests.unit.test_session import pair, run

PAYLOAD = os.urandom(200_000)
DIGEST = hashlib.sha256(PAYLOAD).digest()


def receiver(tmp_path, **options):
    receiving = FileReceiving(tmp_path, **options)
    receiving.makeConnection(StringTransport())
    outcome = []
    receiving.done.addBoth(outcome.append)
    return receiving, outcome


def feed(receiving, data, chunk=7_001):
    for i in range(0, len(data), chunk):
        receiving.dataReceived(data[i:i + chunk])


def reply(receiving):
    written = receiving.transport.value()
    status, length = REPLY_HEAD.unpack_from(written)
    return status, written[REPLY_HEAD.size:REPLY_HEAD.size + length].decode()


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_an_intact_file_is_placed_and_confirmed(tmp_path):
    """Offer, bytes and digest in odd-sized pieces: the file appears under its name and the reply is OK."""
    receiving, outcome = receiver(tmp_path)
    feed(receiving, Offer("data.bin", len(PAYLOAD)).encode() + PAYLOAD + DIGEST)
    receiving.readConnectionLost()
    assert outcome == [(tmp_path / "data.bin", DIGEST.hex())]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD and leftovers(tmp_path) == ["data.bin"]
    assert reply(receiving) == (OK, "") and receiving.transport.disconnecting


@pytest.mark.parametrize("tail, error", [
    (PAYLOAD + bytes(32), "SHA-256"),
    (PAYLOAD[:-1000], "truncated: 199000 of 200000 bytes"),
    (PAYLOAD + DIGEST + b"x", "more than the 200000 bytes"),
])
def test_a_corrupted_or_cut_transfer_leaves_nothing(tmp_path, tail, error):
    """A wrong digest, a FIN before the end or bytes past it fail the transfer and remove the temporary file."""
    receiving, outcome = receiver(tmp_path)
    feed(receiving, Offer("data.bin", len(PAYLOAD)).encode() + tail)
    receiving.readConnectionLost()
    assert len(outcome) == 1 and outcome[0].check(TransferError) and error in str(outcome[0].value)
    assert leftovers(tmp_path) == [] and reply(receiving)[0] == FAILED


def test_a_lost_stream_midway_leaves_nothing(tmp_path):
    """When the stream is lost halfway (the sender died), the temporary file goes and done fails."""
    receiving, outcome = receiver(tmp_path)
    feed(receiving, Offer("data.bin", len(PAYLOAD)).encode() + PAYLOAD[:100_000])
    assert len(leftovers(tmp_path)) == 1  # the temporary file
    receiving.connectionLost(Failure(ConnectionLost("the path was lost")))
    assert outcome[0].check(TransferError) and "after 100000 of 200000 bytes" in str(outcome[0].value)
    assert leftovers(tmp_path) == []


def test_an_existing_file_is_kept_unless_forced(tmp_path):
    """Without force the offer is refused at once; with force the file is replaced."""
    (tmp_path / "data.bin").write_bytes(b"mine")
    receiving, outcome = receiver(tmp_path)
    feed(receiving, Offer("data.bin", len(PAYLOAD)).encode() + PAYLOAD[:10])
    assert outcome[0].check(TransferError) and "exists" in str(outcome[0].value)
    assert reply(receiving)[0] == REFUSED and (tmp_path / "data.bin").read_bytes() == b"mine"
    forced, outcome = receiver(tmp_path, force=True)
    feed(forced, Offer("data.bin", len(PAYLOAD)).encode() + PAYLOAD + DIGEST)
    forced.readConnectionLost()
    assert outcome == [(tmp_path / "data.bin", DIGEST.hex())] and (tmp_path / "data.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["", ".", "..", "../etc/passwd", "a/b", "a\\b", "nul\0", "x" * 256])
def test_names_with_paths_are_refused(tmp_path, name):
    """A name that is not a plain file name fails the offer; nothing is written."""
    with pytest.raises(ValueError):
        check_name(name)
    receiving, outcome = receiver(tmp_path)
    encoded = name.encode()
    feed(receiving, b"TXRF\x01" + len(encoded).to_bytes(2, "big") + encoded + (5).to_bytes(8, "big") + b"hello")
    assert outcome[0].check(TransferError) and leftovers(tmp_path) == []


def test_a_foreign_stream_is_not_an_offer(tmp_path):
    """Bytes that do not start with the magic fail at once."""
    receiving, outcome = receiver(tmp_path)
    feed(receiving, b"GET / HTTP/1.1\r\n\r\n")
    assert outcome[0].check(TransferError) and "not a version 1 file offer" in str(outcome[0].value)


def over_sessions(tmp_path, payload, existing=None):
    """A FileSending on alice's stream to a FileReceiving of bob's, both over QUIC on a Clock."""
    clock = Clock()
    client, server, _, _ = pair(clock)
    run(clock, 0.2)
    source = tmp_path / "out" / "data.bin"
    source.parent.mkdir()
    source.write_bytes(payload)
    (tmp_path / "in").mkdir()
    if existing is not None:
        (tmp_path / "in" / "data.bin").write_bytes(existing)
    receivers = []
    server.accept_streams(Factory.forProtocol(lambda: receivers.append(FileReceiving(tmp_path / "in"))
                                              or receivers[-1]))
    sending = FileSending.for_path(source)
    client.open_stream(sending)
    sent, received = [], []
    sending.done.addBoth(sent.append)
    run(clock, 0.1)
    receivers[0].done.addBoth(received.append)
    run(clock, 10.0)
    return sent, received, sending


def test_sender_and_receiver_agree_over_a_session(tmp_path):
    """3 MB move over a QUIC stream: the sender's done fires with the digest the receiver confirmed."""
    payload = os.urandom(3 << 20)
    sent, received, sending = over_sessions(tmp_path, payload)
    digest = hashlib.sha256(payload).hexdigest()
    assert sent == [digest] and received == [(tmp_path / "in" / "data.bin", digest)]
    assert (tmp_path / "in" / "data.bin").read_bytes() == payload and sending.bytes_done == len(payload)


def test_the_sender_hears_a_refusal(tmp_path):
    """A receiver that will not overwrite makes the sender's done fail with its reason; the file stays."""
    sent, received, _ = over_sessions(tmp_path, os.urandom(1 << 20), existing=b"mine")
    assert len(sent) == 1 and sent[0].check(TransferError)
    assert "the receiver refused" in str(sent[0].value) and "exists" in str(sent[0].value)
    assert received[0].check(TransferError) and (tmp_path / "in" / "data.bin").read_bytes() == b"mine"
    assert leftovers(tmp_path / "in") == ["data.bin"]
