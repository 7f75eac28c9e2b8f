"""Ask a STUN server for this host's public mapping and what the server says about itself.

    python docs/examples/stun_client.py HOST [PORT]

Prints the mapped address, RESPONSE-ORIGIN and OTHER-ADDRESS, then tries a
CHANGE-REQUEST (change IP and port) when the server has an alternate.
"""

import sys

from twisted.internet import defer, task

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import encode_change_request
from rendezvous.peer import StunClientProtocol, TransactionTimeout


async def main(reactor, host: str, port: str = "3478") -> None:
    client = StunClientProtocol(reactor, rc=3)
    listening = reactor.listenUDP(0, client)
    server = (host, int(port))
    try:
        response, sender = await client.request(Message(Method.BINDING, Class.REQUEST), server)
        print("mapped address:", response.address(Attr.XOR_MAPPED_ADDRESS))
        print("response origin:", response.address(Attr.RESPONSE_ORIGIN))
        other = response.address(Attr.OTHER_ADDRESS)
        print("other address:", other)
        if other:
            change = Message(Method.BINDING, Class.REQUEST)
            change.add(Attr.CHANGE_REQUEST, encode_change_request(True, True))
            try:
                response, sender = await client.request(change, server)
                print("change request answered from:", sender)
            except TransactionTimeout:
                print("change request: no answer (a filtering NAT or firewall is in the way)")
    finally:
        await listening.stopListening()


if __name__ == "__main__":
    task.react(lambda reactor, *args: defer.Deferred.fromCoroutine(main(reactor, *args)), sys.argv[1:])
