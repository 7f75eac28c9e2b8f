"""A synchronous TURN request builder for tests: long-term credentials, 401/438 handling.

Subclasses say how a request travels (``ask``): straight into the TURN core in
unit tests, over a real socket in integration tests.
"""

import socket

from rendezvous.stun import Attr, Class, Message, Method, PasswordAlgorithm
from rendezvous.stun.attributes import (
    decode_error_code,
    encode_password_algorithm,
    encode_password_algorithms,
    encode_requested_transport,
    encode_uint16,
)
from rendezvous.stun.framing import StreamFramer
from rendezvous.stun.integrity import long_term_key


def code(response: Message) -> int:
    """The ERROR-CODE number of an error response."""
    return decode_error_code(response.get(Attr.ERROR_CODE))[0]


class TurnRequests:
    """Builds and signs requests; retries once on a stale nonce (438)."""

    def __init__(self, username: str, password: str, realm: str) -> None:
        self.username = username
        self.password = password
        self.realm = realm
        self.nonce: str | None = None
        self.retry_stale = True

    def ask(self, msg: Message) -> Message | None:
        raise NotImplementedError

    def raw(self, method, *attrs, sign=True, algorithm=None, tid=None) -> Message:
        msg = Message(method, Class.REQUEST, tid)
        for attr_type, value in attrs:
            msg.add(attr_type, value)
        if not sign:
            return msg
        msg.add(Attr.USERNAME, self.username.encode())
        msg.add(Attr.REALM, self.realm.encode())
        msg.add(Attr.NONCE, self.nonce.encode())
        if algorithm == PasswordAlgorithm.SHA256:
            msg.add(Attr.PASSWORD_ALGORITHMS, encode_password_algorithms([(1, b""), (2, b"")]))
            msg.add(Attr.PASSWORD_ALGORITHM, encode_password_algorithm(2))
            key = long_term_key(self.username, self.realm, self.password, PasswordAlgorithm.SHA256)
            return Message.decode(msg.encode(integrity_sha256_key=key))
        return Message.decode(msg.encode(integrity_key=long_term_key(self.username, self.realm, self.password)))

    def request(self, method, *attrs, **kwargs) -> Message | None:
        if self.nonce is None and kwargs.get("sign", True):
            challenge = self.ask(self.raw(Method.ALLOCATE, sign=False))
            self.nonce = challenge.get(Attr.NONCE).decode()
        response = self.ask(self.raw(method, *attrs, **kwargs))
        if response is not None and response.cls == Class.ERROR and code(response) == 438 and self.retry_stale:
            self.nonce = response.get(Attr.NONCE).decode()
            response = self.ask(self.raw(method, *attrs, **kwargs))
        return response

    def allocate(self, *attrs, **kwargs) -> Message | None:
        return self.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, encode_requested_transport(17)),
                            *attrs, **kwargs)

    def allocate_tcp(self, *attrs) -> Message | None:
        """An RFC 6062 TCP allocation."""
        return self.request(Method.ALLOCATE, (Attr.REQUESTED_TRANSPORT, encode_requested_transport(6)), *attrs)


def permit(client: TurnRequests, *peers) -> Message | None:
    """CreatePermission for peers (XOR addresses are built on the request's transaction id)."""
    signed = Message(Method.CREATE_PERMISSION, Class.REQUEST)
    for peer in peers:
        signed.add_address(Attr.XOR_PEER_ADDRESS, peer)
    return client.request(Method.CREATE_PERMISSION, *signed.attributes, tid=signed.transaction_id)


def bind(client: TurnRequests, number: int, peer) -> Message | None:
    """ChannelBind number to peer."""
    msg = Message(Method.CHANNEL_BIND, Class.REQUEST)
    msg.add(Attr.CHANNEL_NUMBER, encode_uint16(number))
    msg.add_address(Attr.XOR_PEER_ADDRESS, peer)
    return client.request(Method.CHANNEL_BIND, *msg.attributes, tid=msg.transaction_id)


class UdpTurnClient(TurnRequests):
    """A TURN client over a real UDP socket (blocking, with a timeout)."""

    def __init__(self, server, username, password, realm, timeout=3.0) -> None:
        super().__init__(username, password, realm)
        self.server = server
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)

    def ask(self, msg: Message) -> Message | None:
        self.sock.sendto(msg.raw or msg.encode(), self.server)
        while True:
            data, _ = self.sock.recvfrom(65536)
            if data[:1] < b"\x40":
                response = Message.decode(data)
                if response.transaction_id == msg.transaction_id:
                    return response

    def receive(self) -> bytes:
        return self.sock.recvfrom(65536)[0]

    def close(self) -> None:
        self.sock.close()


class TcpTurnClient(TurnRequests):
    """A TURN client over a real TCP connection (blocking, with a timeout)."""

    def __init__(self, server, username, password, realm, timeout=5.0) -> None:
        super().__init__(username, password, realm)
        self.sock = socket.create_connection(server, timeout=timeout)
        self.framer = StreamFramer()
        self.frames: list[bytes] = []

    def next_message(self) -> Message:
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.frames += self.framer.feed(data)
        return Message.decode(self.frames.pop(0))

    def ask(self, msg: Message) -> Message | None:
        self.sock.sendall(msg.raw or msg.encode())
        while True:
            response = self.next_message()
            if response.transaction_id == msg.transaction_id:
                return response

    def close(self) -> None:
        self.sock.close()
