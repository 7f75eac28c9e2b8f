"""Relay a datagram through a TURN server to a peer and back.

    python docs/examples/turn_echo.py HOST PORT USER PASSWORD [REALM]

Allocates a relayed address, starts a local UDP peer that echoes, gives the
peer a permission and a channel, sends one message through the relay and
prints the echo. (The relay must allow the peer's address: a loopback peer
needs `--allow-peer 127.0.0.0/8` on our relay.)
"""

import sys

from twisted.internet import defer, protocol, task

from rendezvous.peer import turn_connect


class Echo(protocol.DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


async def main(reactor, host, port, user, password, realm=None):
    peer_port = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
    peer = ("127.0.0.1", peer_port.getHost().port)
    client = await turn_connect(reactor, (host, int(port)), "udp", username=user, password=password, realm=realm)
    try:
        relayed = await client.allocate()
        print("relayed address:", relayed)
        await client.create_permission([peer])
        await client.channel_bind(0x4001, peer)
        echoed = defer.Deferred()
        client.on_data = lambda source, data: echoed.called or echoed.callback((source, data))
        client.send(peer, b"hello through the relay")
        source, data = await echoed
        print("echo from", source, ":", data.decode())
    finally:
        await client.close()
        await peer_port.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor, *args: defer.Deferred.fromCoroutine(main(reactor, *args)), sys.argv[1:])
