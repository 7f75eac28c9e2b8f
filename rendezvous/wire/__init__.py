"""What the super node and the peer both speak beyond STUN (floor 1).

The signaling frame codec (``frames``), a host-cache entry as the node sends it
(``host_entries``), the keepalive timing and write bound of a signaling stream
(``streams``), the echo service's probe format (``echo_probe``) and the field
test's submissions (``results``). Each is
imported by ``rendezvous.node`` and ``rendezvous.peer`` alike, so neither side
needs the other. May import ``rendezvous.stun`` and Twisted, nothing else of ours.
"""
