from twisted.application.service import ServiceMaker

rendezvous = ServiceMaker(
    "txrendezvous super node",
    "rendezvous.node.tap",
    "STUN (RFC 8489/5780) rendezvous super node",
    "rendezvous",
)
