from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "txrendezvous relay",
    "rendezvous.node.relay_tap",
    "TURN relay (RFC 8656)",
    "relay",
)
