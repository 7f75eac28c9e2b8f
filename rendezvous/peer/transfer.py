"""A file over one session stream: an offer (name, size), the bytes, their SHA-256, and the verdict.

The wire format is docs/PROTOCOL.md "File transfer"::

    sender   -> "TXRF" version(1) name_length(u16) name(UTF-8) size(u64) | size bytes | SHA-256 (32) | FIN
    receiver -> status(u8: 0 ok, 1 refused, 2 failed) message_length(u16) message(UTF-8) | FIN

The sender reads the file through ``FileSender`` (a pull producer on the
stream, so the file is never read whole) and hashes it as it goes; the
receiver writes to a temporary file beside the target, hashes what
arrives, and renames it to the target only when size and digest agree,
never over an existing file unless told to. Any failure removes the
temporary file and both sides learn why.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from zope.interface import implementer

log = Logger()

MAGIC = b"TXRF"
VERSION = 1
OFFER_HEAD = struct.Struct("!4sBH")  # magic, version, name length; then the name and the size
SIZE = struct.Struct("!Q")
REPLY_HEAD = struct.Struct("!BH")  # status, message length; then the message
DIGEST_BYTES = 32  # SHA-256
MAX_NAME_BYTES = 255
OK, REFUSED, FAILED = 0, 1, 2


class TransferError(Exception):
    """The transfer failed; the message says why (and whose side found it)."""


@dataclass(frozen=True)
class Offer:
    """What the sender offers: a plain file name and the size in bytes."""

    name: str
    size: int

    def encode(self) -> bytes:
        name = self.name.encode()
        return OFFER_HEAD.pack(MAGIC, VERSION, len(name)) + name + SIZE.pack(self.size)

    @classmethod
    def decode(cls, data: bytes) -> tuple[Offer | None, int]:
        """(offer, bytes used) from the start of data, or (None, 0) while incomplete; ValueError if bad."""
        if len(data) < OFFER_HEAD.size:
            return None, 0
        magic, version, length = OFFER_HEAD.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"not a version {VERSION} file offer")
        end = OFFER_HEAD.size + length + SIZE.size
        if len(data) < end:
            return None, 0
        try:
            name = data[OFFER_HEAD.size:OFFER_HEAD.size + length].decode()
        except UnicodeDecodeError:
            raise ValueError("the file name is not UTF-8") from None
        check_name(name)
        return cls(name, SIZE.unpack_from(data, end - SIZE.size)[0]), end


def check_name(name: str) -> None:
    """A plain file name: no directories, not empty, at most MAX_NAME_BYTES; ValueError otherwise."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{name!r} is not a plain file name")


def encode_reply(status: int, message: str = "") -> bytes:
    text = message.encode()[:65535]
    return REPLY_HEAD.pack(status, len(text)) + text


def target_for(name: str, output: Path | None) -> Path:
    """Where an offered file goes: into ``output`` when it is a directory, to ``output`` itself when it
    names a file, else into the current directory."""
    if output is None:
        return Path.cwd() / name
    return output / name if output.is_dir() else output


class _Reply:
    """Collects the receiver's reply from the bytes the sender reads."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> tuple[int, str] | None:
        self.buffer += data
        if len(self.buffer) < REPLY_HEAD.size:
            return None
        status, length = REPLY_HEAD.unpack_from(self.buffer)
        if len(self.buffer) < REPLY_HEAD.size + length:
            return None
        return status, self.buffer[REPLY_HEAD.size:REPLY_HEAD.size + length].decode(errors="replace")


@implementer(IHalfCloseableProtocol)
class FileSending(Protocol):
    """The sender's end of the stream. ``done`` fires with the SHA-256 (hex) once the receiver
    confirmed it, or fails with TransferError. ``bytes_done`` counts file bytes the peer acknowledged."""

    def __init__(self, file: BinaryIO, offer: Offer) -> None:
        self.file, self.offer = file, offer
        self.done: Deferred = Deferred()
        self.sent = 0
        self._digest = hashlib.sha256()
        self._reply = _Reply()
        self._sender: FileSender | None = None
        self._head = offer.encode()
        self._trailer_sent = False

    @classmethod
    def for_path(cls, path: Path) -> FileSending:
        """Open ``path`` for sending (OSError if it cannot be read; ValueError for a bad name)."""
        check_name(path.name)
        file = path.open("rb")
        return cls(file, Offer(path.name, os.fstat(file.fileno()).st_size))

    @property
    def bytes_done(self) -> int:
        if self.transport is None:
            return 0
        if self.done.called:
            return self.sent
        acknowledged = self._written - self.transport.buffered() - len(self._head)
        return max(0, min(self.sent, acknowledged))

    @property
    def _written(self) -> int:
        return len(self._head) + self.sent + (DIGEST_BYTES if self._trailer_sent else 0)

    def connectionMade(self) -> None:
        self.transport.write(self._head)
        self._sender = FileSender()
        self._sender.beginFileTransfer(self.file, self.transport, self._hashed).addCallbacks(
            self._read_all, lambda failure: None)  # stopped: the stream ended, connectionLost says why

    def _hashed(self, chunk: bytes) -> bytes:
        self._digest.update(chunk)
        self.sent += len(chunk)
        return chunk

    def _read_all(self, _) -> None:
        if self.sent != self.offer.size:
            self._fail(f"{self.offer.name} changed while it was sent ({self.sent} bytes, not {self.offer.size})")
            self.transport.abortConnection()
            return
        self.transport.write(self._digest.digest())
        self._trailer_sent = True
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        reply = self._reply.feed(data)
        if reply is None or self.done.called:
            return
        status, message = reply
        if status == OK and self._sender is not None and self.sent == self.offer.size:
            self.done.callback(self._digest.hexdigest())
        else:
            self._fail(f"the receiver {'refused' if status == REFUSED else 'failed'}: {message or 'no reason'}")
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        if not self.done.called:
            self._fail("the receiver ended the stream without a verdict")

    def connectionLost(self, reason) -> None:
        self.file.close()
        if not self.done.called:
            self._fail(f"the stream ended before the receiver confirmed: {reason.getErrorMessage()}")

    def _fail(self, message: str) -> None:
        if not self.done.called:
            self.done.errback(TransferError(message))


@implementer(IHalfCloseableProtocol)
class FileReceiving(Protocol):
    """The receiver's end: the file goes to a temporary file beside ``target_for(name, output)``, then
    to the target. ``on_offer(offer)`` is called when the offer arrives; ``done`` fires with
    (path, SHA-256 hex) or fails with TransferError. ``bytes_done`` counts file bytes written."""

    def __init__(self, output: Path | None = None, force: bool = False,
                 on_offer: Callable[[Offer], None] | None = None) -> None:
        self.output, self.force, self.on_offer = output, force, on_offer
        self.done: Deferred = Deferred()
        self.offer: Offer | None = None
        self.target: Path | None = None
        self.bytes_done = 0
        self._buffer = b""
        self._digest = hashlib.sha256()
        self._trailer = b""
        self._temporary: BinaryIO | None = None
        self._ended = False

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        if self.offer is None:
            self._buffer += data
            try:
                offer, used = Offer.decode(self._buffer)
            except ValueError as e:
                self._end(FAILED, f"a bad offer: {e}")
                return
            if offer is None:
                if len(self._buffer) > OFFER_HEAD.size + MAX_NAME_BYTES + SIZE.size:
                    self._end(FAILED, "a bad offer: too long")
                return
            data, self._buffer = self._buffer[used:], b""
            if not self._start(offer):
                return
        try:
            self._write(data)
        except OSError as e:
            self._end(FAILED, f"cannot write {self.target}: {e.strerror}")

    def _start(self, offer: Offer) -> bool:
        self.offer, self.target = offer, target_for(offer.name, self.output)
        if self.on_offer is not None:
            self.on_offer(offer)
        if self.target.exists() and not self.force:
            self._end(REFUSED, f"{self.target} exists (receive with --force to overwrite it)")
            return False
        try:
            self._temporary = tempfile.NamedTemporaryFile(dir=self.target.parent, prefix=f".{self.target.name}.",
                                                          suffix=".part", delete=False)
        except OSError as e:
            self._end(FAILED, f"cannot write to {self.target.parent}: {e.strerror}")
            return False
        return True

    def _write(self, data: bytes) -> None:
        room = self.offer.size - self.bytes_done
        body, trailer = data[:room], data[room:]
        if body:
            self._temporary.write(body)
            self._digest.update(body)
            self.bytes_done += len(body)
        self._trailer += trailer
        if len(self._trailer) > DIGEST_BYTES:
            self._end(FAILED, f"more than the {self.offer.size} bytes offered arrived")

    def readConnectionLost(self) -> None:
        """The sender's FIN: everything is here, or the transfer is cut short."""
        if self._ended:
            return
        if self.offer is None:
            self._end(FAILED, "the sender ended the stream before its offer")
        elif self.bytes_done < self.offer.size or len(self._trailer) < DIGEST_BYTES:
            self._end(FAILED, f"truncated: {self.bytes_done} of {self.offer.size} bytes arrived")
        elif self._trailer != self._digest.digest():
            self._end(FAILED, f"the SHA-256 of the {self.offer.size} bytes that arrived is {self._digest.hexdigest()}, "
                              f"not {self._trailer.hex()}")
        else:
            self._place()

    def _place(self) -> None:
        """Move the verified temporary file to the target (not over an existing one unless forced)."""
        temporary = Path(self._temporary.name)
        try:
            self._temporary.flush()
            os.fsync(self._temporary.fileno())
            self._temporary.close()
            if self.force:
                os.replace(temporary, self.target)
            else:
                os.link(temporary, self.target)  # fails if the target appeared meanwhile
                temporary.unlink()
        except FileExistsError:
            self._end(REFUSED, f"{self.target} appeared meanwhile (receive with --force to overwrite it)")
            return
        except OSError as e:
            self._end(FAILED, f"cannot write {self.target}: {e.strerror}")
            return
        self._temporary = None
        self._end(OK, "")

    def connectionLost(self, reason) -> None:
        if not self._ended:
            got = f"after {self.bytes_done} of {self.offer.size} bytes" if self.offer else "before its offer"
            self._end(FAILED, f"the stream ended {got}: {reason.getErrorMessage()}", reply=False)

    def _end(self, status: int, message: str, reply: bool = True) -> None:
        """Remove a temporary file left, answer the sender, finish the stream and fire ``done``."""
        self._ended = True
        if self._temporary is not None:
            self._temporary.close()
            Path(self._temporary.name).unlink(missing_ok=True)
            self._temporary = None
        if reply:
            self.transport.write(encode_reply(status, message))
            self.transport.loseConnection()
        if status == OK:
            self.done.callback((self.target, self._digest.hexdigest()))
        else:
            log.info("transfer failed: {reason}", reason=message)
            self.done.errback(TransferError(message))
