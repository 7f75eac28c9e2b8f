from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "txrendezvous relay",
    "relay.tap",
    "TURN relay (RFC 8656)",
    "relay",
)
