#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of what parses bytes from the network.

Not a test (tests/unit/test_fuzz_targets.py runs each target briefly). Targets:

- ``stun``: the STUN codec (``Message.decode`` and what follows it, every
  attribute decoder, the stream framer) and the Binding server core;
- ``turn``: the TURN core through ``TurnServer.handle``: raw requests, and
  signed requests of fuzzed attributes after a real Allocate, then the data
  path (Send indications, ChannelData, datagrams from peers) of that
  allocation; its relay endpoints record writes, nothing leaves the process;
- ``frames``: the signaling frame decoder (``rendezvous.wire.frames``);
- ``pmp``: the NAT-PMP and PCP response decoders (``upnp_helper``);
- ``native``: the C fast paths through their Python entry points:
  ``relay.allocation.parse_send_indication`` (``relay._indications``, checked
  against the pure-Python walk) and an ``Outbox`` flushed by ``sendmmsg`` to a
  socket read by ``recvmmsg`` (``relay._mmsg``), both on loopback.

An expected refusal (the codec's own error) is fine; any other exception,
or an invariant broken, is a crash: libFuzzer writes the input to
``crash-*`` and exits non-zero. Turn a crash into a unit test.

    .venv/bin/python bench/fuzz.py stun -max_total_time=60 /tmp/stun bench/fuzz_corpus/stun
    .venv/bin/python bench/fuzz.py turn -runs=5000 bench/fuzz_corpus/turn

The first corpus directory receives the new inputs libFuzzer finds; keep the
seed directories of the repository read-only by naming a scratch one first.
``--list`` prints the targets.
"""

import socket
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["relay", "rendezvous", "upnp_helper"]):
    from relay import datagrams
    from relay.allocation import _walk, parse_send_indication, walk_send_indication
    from relay.credentials import Credentials, StaticUsers
    from relay.nonces import Nonces
    from relay.peer_policy import PeerPolicy
    from relay.server import NoRelayPort, RelayPolicy, TurnServer
    from rendezvous.stun import Attr, Class, CodecError, Message, Method
    from rendezvous.stun import attributes as attribute_codecs
    from rendezvous.stun.binding import Addresses, BindingServer
    from rendezvous.stun.message import PLAIN_ADDRESS_TYPES, XOR_ADDRESS_TYPES
    from rendezvous.stun.demux import classify
    from rendezvous.stun.framing import StreamFramer, decode_channel_data
    from rendezvous.stun.integrity import long_term_key
    from rendezvous.wire.frames import FrameError, FrameReader
    from upnp_helper import natpmp, pcp

from twisted.internet.task import Clock  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
REALM, USER, PASSWORD = "fuzz.example", "fuzzer", "fuzz-password"
KEY = long_term_key(USER, REALM, PASSWORD)
CLIENT = ("udp", ("198.51.100.7", 40000), ("192.0.2.1", 3478))
ADDRESS_TYPES = set(PLAIN_ADDRESS_TYPES) | set(XOR_ADDRESS_TYPES)
VALUE_DECODERS = [getattr(attribute_codecs, name) for name in dir(attribute_codecs) if name.startswith("decode_")]
TURN_METHODS = [Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND, Method.CONNECT,
                Method.CONNECTION_BIND, Method.SEND, 0x0FFF]
TURN_ATTRS = [Attr.REQUESTED_TRANSPORT, Attr.LIFETIME, Attr.XOR_PEER_ADDRESS, Attr.CHANNEL_NUMBER, Attr.DATA,
              Attr.EVEN_PORT, Attr.RESERVATION_TOKEN, Attr.DONT_FRAGMENT, Attr.REQUESTED_ADDRESS_FAMILY,
              Attr.ADDITIONAL_ADDRESS_FAMILY, Attr.CONNECTION_ID, Attr.PASSWORD_ALGORITHM,
              Attr.PASSWORD_ALGORITHMS, Attr.USERHASH]


# -- stun ------------------------------------------------------------------

def stun(data: bytes) -> None:
    """The STUN codec and Binding core: only CodecError, and a decoded message keeps its raw bytes."""
    try:
        msg = Message.decode(data)
    except CodecError:
        msg = None
    if msg is not None:
        assert len(msg.raw) == len(data)
        msg.check_integrity(b"key")
        msg.check_fingerprint()
        for attr_type, value in msg.attributes:
            for decode in VALUE_DECODERS:
                try:
                    decode(value)
                except CodecError:
                    pass
            if attr_type in ADDRESS_TYPES:
                try:
                    msg.addresses(attr_type)
                except CodecError:
                    pass
    framer = StreamFramer()
    try:
        for frame in framer.feed(data):
            classify(frame)
            if frame[0] >> 6 == 1:
                decode_channel_data(frame)
    except CodecError:
        pass
    binding = BindingServer(Addresses("192.0.2.1", 3478, "192.0.2.2", 3479))
    reply = binding.handle_datagram(data, ("198.51.100.7", 40000), ("192.0.2.1", 3478))
    if reply is not None:
        Message.decode(reply.data)


# -- turn ------------------------------------------------------------------

class _Endpoint:
    """A relayed address that keeps nothing: what the core writes through it stays in the process."""

    def __init__(self, address) -> None:
        self.address = address
        self.allocation = None
        self.connections = {}

    def write(self, data: bytes, peer) -> None:
        assert isinstance(data, bytes) and len(peer) == 2

    def close(self) -> None:
        pass


class _Ports:
    """Relay ports without sockets: one address per family, reservations by token, then exhausted."""

    def __init__(self) -> None:
        self.opened = 0
        self.reservations = {}

    def open(self, family, even=False, reserve_next=False, dont_fragment=False, release=lambda: None):
        if self.opened >= 8:
            raise NoRelayPort("fuzz limit")
        self.opened += 1
        port = 50000 + 2 * self.opened
        token = None
        if reserve_next:
            token = bytes([0, self.opened]) + b"fuzz!!"
            self.reservations[token] = (_Endpoint(("192.0.2.1", port + 1)), release)
        return _Endpoint(("192.0.2.1" if family == 4 else "2001:db8::1", port)), token

    def take_reserved(self, token):
        endpoint, release = self.reservations.pop(token, (None, None))
        if endpoint is not None:
            release()
        return endpoint

    def expire(self, now) -> None:
        pass


def _turn_server() -> tuple[TurnServer, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    policy = RelayPolicy(realm=REALM, user_quota=4, total_quota=6, max_permissions=8, max_channels=4,
                         families=frozenset({4, 6}))
    peers = PeerPolicy(allow=["203.0.113.0/24"], own_addresses=["192.0.2.1"], relayed_addresses=["192.0.2.1"],
                       relay_ports=(49152, 65535), own_endpoints=[("192.0.2.1", 3478)], is_local=lambda a: False)
    server = TurnServer(policy, Credentials([StaticUsers({USER: PASSWORD}, REALM)]), peers, _Ports(), clock,
                        nonces=Nonces(600, b"fuzz" * 8), software=b"fuzz")
    return server, clock


def _answer(server: TurnServer, msg: Message) -> None:
    """Hand msg to the core; what it answers must decode."""
    response = server.handle(msg, CLIENT, lambda data: None)
    if response is not None:
        Message.decode(response)


def _signed(fdp, nonce: bytes, method: int, attrs: list) -> Message:
    msg = Message(method, Class.REQUEST, fdp.ConsumeBytes(12).ljust(12, b"\0"))
    for attr_type, value in attrs:
        msg.add(attr_type, value)
    msg.add(Attr.USERNAME, USER.encode()).add(Attr.REALM, REALM.encode()).add(Attr.NONCE, nonce)
    return Message.decode(msg.encode(integrity_key=KEY))


def turn(data: bytes) -> None:
    """The TURN core answers or drops any request without raising, and its data path takes any bytes."""
    fdp = atheris.FuzzedDataProvider(data)
    server, clock = _turn_server()
    if fdp.ConsumeBool():
        try:
            msg = Message.decode(fdp.ConsumeBytes(fdp.remaining_bytes()))
        except CodecError:
            return
        _answer(server, msg)
        return
    challenge = server.handle(Message.decode(Message(Method.ALLOCATE, Class.REQUEST).encode()), CLIENT,
                              lambda data: None)
    nonce = Message.decode(challenge).get(Attr.NONCE)
    transport = (Attr.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
    _answer(server, _signed(fdp, nonce, Method.ALLOCATE, [transport]))
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        method = fdp.PickValueInList(TURN_METHODS)
        attrs = []
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            attr_type = fdp.PickValueInList(TURN_ATTRS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFF)
            attrs.append((attr_type, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))))
        _answer(server, _signed(fdp, nonce, method, attrs))
        clock.advance(fdp.ConsumeIntInRange(0, 400))
        server.expire(clock.seconds())
    allocation = server.allocations.get(CLIENT)
    if allocation is None:
        return
    allocation.send_indication(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))
    allocation.channel_to_peer(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))
    allocation.from_peer(fdp.ConsumeBytes(64), ("203.0.113.9", fdp.ConsumeIntInRange(0, 65535)))
    server.stop()


# -- frames ----------------------------------------------------------------

def frames(data: bytes) -> None:
    """The signaling frame reader yields dicts or FrameErrors, or raises FrameError; nothing else."""
    fdp = atheris.FuzzedDataProvider(data)
    reader = FrameReader()
    try:
        while fdp.remaining_bytes():
            for item in reader.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))):
                assert isinstance(item, (dict, FrameError)), item
    except FrameError:
        pass


# -- pmp -------------------------------------------------------------------

def pmp(data: bytes) -> None:
    """NAT-PMP and PCP responses decode or raise their codec's error."""
    try:
        natpmp.decode_response(data)
    except natpmp.NatPmpCodecError:
        pass
    try:
        pcp.decode_response(data)
    except pcp.PcpCodecError:
        pass


# -- native ----------------------------------------------------------------

class _Loopback:
    """A UDP socket pair on 127.0.0.1: what the Outbox sends, the Receiver reads."""

    def __init__(self) -> None:
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.setblocking(False)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind(("127.0.0.1", 0))
        for sock in (self.receiver, self.sender):
            datagrams.set_buffers(sock, 4 * 1024 * 1024)
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        # Loopback destinations only: the receiver, a port nobody reads, and addresses sendmmsg refuses.
        self.targets = [self.receiver.getsockname(), closed.getsockname(), ("not an address", 1),
                        ("127.0.0.1", 70000), ("::1", 9)]
        closed.close()


_loopback = None


def native(data: bytes) -> None:
    """The C Send-indication walk agrees with the Python one; batched sends arrive whole, in order."""
    global _loopback
    fdp = atheris.FuzzedDataProvider(data)
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    walked = walk_send_indication(raw)
    assert _walk(raw) == walked, (_walk(raw), walked)
    parsed = parse_send_indication(raw)
    assert parsed is None or parsed[1] == walked[1]
    if datagrams._mmsg is None:
        return
    if _loopback is None:
        _loopback = _Loopback()
    outbox = datagrams.Outbox(_loopback.sender)
    expected = []

    def write_all() -> None:
        for _ in range(fdp.ConsumeIntInRange(0, 70)):
            target = fdp.PickValueInList(_loopback.targets)
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2000))
            outbox.write(payload, target)
            if target == _loopback.targets[0]:
                expected.append(payload)

    datagrams.read_pass(write_all)
    received = []
    while len(received) < len(expected):
        batch = datagrams._receiver.recv(_loopback.receiver)
        if not batch:
            break
        received += [payload for payload, source in batch if source == _loopback.sender.getsockname()]
    assert received == expected, (len(received), len(expected))


TARGETS = {"stun": stun, "turn": turn, "frames": frames, "pmp": pmp, "native": native}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        if len(argv) > 1 and argv[1] == "--list":
            print("\n".join(TARGETS))
            return
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus directories]")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
