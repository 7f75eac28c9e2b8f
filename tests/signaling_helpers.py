"""Signaling tests against real nodes: log in with SignalingClient, wait for pushed frames, or speak
the wire by hand on a blocking socket (RawSignaling)."""

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

from rendezvous.peer.signaling_client import SignalingClient
from rendezvous.wire.frames import FrameReader, encode

WAIT_SECONDS = 5
PUSHED = ("presence", "buddy-request", "message", "connect-request", "punch", "connect-declined", "redirect",
          "replaced", "error")


class Inbox:
    """Keeps a client's pushed frames so a test can wait for one, in any order."""

    def __init__(self, client: SignalingClient) -> None:
        self.frames: list[dict] = []
        self.waiters: list = []
        for op in PUSHED:
            client.on(op, self._arrived)

    def _arrived(self, message: dict) -> None:
        for wanted, waiter in self.waiters:
            if wanted(message):
                self.waiters.remove((wanted, waiter))
                waiter.callback(message)
                return
        self.frames.append(message)

    def wait(self, op: str, seconds: float = WAIT_SECONDS, **match):
        """Fires with the first frame of op whose fields equal match; TimeoutError after seconds."""
        def wanted(m):
            return m["op"] == op and all(m.get(k) == v for k, v in match.items())

        for message in self.frames:
            if wanted(message):
                self.frames.remove(message)
                return succeed(message)
        entry = (wanted, Deferred(lambda _: self.waiters.remove(entry)))
        self.waiters.append(entry)
        return entry[1].addTimeout(seconds, reactor)


async def login(node, name: str, tls: bool = False, port: int | None = None, **options) -> SignalingClient:
    """A SignalingClient logged in to node as name (password name-pw), with an ``inbox``.

    TLS trusts the node's generated self-signed certificate (issued for "localhost").
    """
    if tls:
        options.setdefault("tls_ca_file", str(node.state_dir / "tls" / "self-signed.pem"))
        options.setdefault("tls_hostname", "localhost")
    server = (node.ip, port or (node.tls_port if tls else node.port))
    client = await SignalingClient.login(reactor, name, f"{name}-pw", servers=[server], tls=tls, **options)
    client.inbox = Inbox(client)
    return client


class RawSignaling:
    """A blocking TCP socket speaking signaling frames by hand, as an outside client would."""

    def __init__(self, node, port: int | None = None) -> None:
        self.sock = socket.create_connection((node.ip, port or node.port), timeout=WAIT_SECONDS)
        self.reader = FrameReader()
        self.frames: list[dict] = []

    def write(self, data: bytes) -> None:
        """Send data in one write (one sendall of the whole buffer)."""
        self.sock.sendall(data)

    def send(self, **message) -> None:
        self.write(encode(message))

    def _read(self) -> bool:
        """Read once; False when the node has closed the connection."""
        data = self.sock.recv(65536)
        self.frames += self.reader.feed(data)
        return bool(data)

    def wait(self, op: str) -> dict:
        """The first frame of op the node sends (others are kept in ``frames``)."""
        while True:
            for frame in self.frames:
                if frame["op"] == op:
                    self.frames.remove(frame)
                    return frame
            if not self._read():
                raise ConnectionError(f"closed before {op}; got {self.frames}")

    def until_closed(self) -> list[dict]:
        """Every frame the node sends until it closes the connection, but its pings."""
        while self._read():
            pass
        return [frame for frame in self.frames if frame["op"] != "ping"]

    def login(self, user: str) -> dict:
        self.send(op="login", id=1, user=user, password=f"{user}-pw")
        return self.wait("welcome")

    def close(self) -> None:
        self.sock.close()
