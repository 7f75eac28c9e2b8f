"""The HTTP side of the firewall ports: ``/healthz``, signaling over WebSocket
and the field test's ``/results`` (``rendezvous.node.results``).

Browsers and clients that can only reach TCP 80/443 speak the same
signaling protocol over WebSocket at ``/signaling`` (RFC 6455; one JSON
object per text message, the frame body of docs/PROTOCOL.md without its
4-byte header). autobahn does the WebSocket protocol; this module adapts its
messages to ``SignalingNode``.
"""

import json

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web import resource, server

from rendezvous.node.results.pages import add_results
from rendezvous.node.results.view import ResultsView
from rendezvous.node.signaling import Session, SignalingNode
from rendezvous.wire.frames import MAX_FRAME_BYTES, FrameError
from rendezvous.wire.results import MAX_SUBMISSION_BYTES
from rendezvous.wire.streams import PING_SECONDS


class HealthResource(resource.Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok\n"


class BoundedRequest(server.Request):
    """A request whose body may not pass MAX_SUBMISSION_BYTES (the largest POST any page takes).

    Past it, by Content-Length or by what arrives, the client gets 413 and the
    connection closes, so no body is buffered beyond the bound.
    """

    _body_bytes = 0
    _refused = False

    def gotLength(self, length) -> None:
        super().gotLength(length)
        if length is not None and length > MAX_SUBMISSION_BYTES:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_SUBMISSION_BYTES:
            self._refuse()
        if not self._refused:
            super().handleContentChunk(data)

    def requestReceived(self, command, path, version) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        if not self._refused:
            self._refused = True
            self.channel.transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n"
                                         b"connection: close\r\n\r\n")
            self.channel.loseConnection()


class SignalingWebSocket(WebSocketServerProtocol):
    """One signaling session over WebSocket."""

    session: Session | None = None

    def onOpen(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(send=self.send_json, close=self.sendClose, address=(peer.host, peer.port))

    def send_json(self, message: dict) -> None:
        self.sendMessage(json.dumps(message, separators=(",", ":")).encode("utf-8"), isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            message = json.loads(payload.decode("utf-8"))
            if not isinstance(message, dict) or not isinstance(message.get("op"), str):
                raise ValueError("not an object with an op")
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            message = FrameError(f"message is not a JSON object with an op: {e}")
        self.factory.node.receive(self.session, message)

    def onClose(self, wasClean, code, reason) -> None:
        if self.session is not None:
            self.factory.node.closed(self.session)


def site(node: SignalingNode, results: ResultsView | None = None, clock=None) -> server.Site:
    """The HTTP site: /healthz, /signaling (WebSocket) and, given a results view, /results and /api/results."""
    factory = WebSocketServerFactory()
    factory.protocol = SignalingWebSocket
    factory.node = node
    # failByDrop=False: an oversize message (1009) or a protocol error (1002,
    # 1007) gets a close frame with the reason, not a bare TCP drop.
    factory.setProtocolOptions(
        maxFramePayloadSize=MAX_FRAME_BYTES, maxMessagePayloadSize=MAX_FRAME_BYTES, failByDrop=False,
        autoPingInterval=PING_SECONDS, autoPingTimeout=PING_SECONDS, openHandshakeTimeout=30,
    )
    root = resource.Resource()
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"signaling", WebSocketResource(factory))
    if results is not None:
        add_results(root, results, clock)
    web = server.Site(root, requestFactory=BoundedRequest)
    web.noisy = False
    web.timeOut = 60
    return web
