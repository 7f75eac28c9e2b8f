"""txrendezvous: NAT traversal on Twisted, in four rooms and a shared floor.

- ``rendezvous.stun``: the sans-IO STUN/TURN codec (floor 1; imports nothing of ours).
- ``rendezvous.wire``: what both sides of the signaling wire speak beyond STUN (floor 1).
- ``rendezvous.node``: the super node and the ``twistd`` services (floor 3).
- ``rendezvous.peer``: what applications embed: connect(), listen(), the clients (floor 3).
- ``rendezvous.cli``: the ``txrendezvous`` command (floor 4).

``node`` and ``peer`` never import each other; they meet only on the wire.
docs/ARCHITECTURE.md has the map and the import rules that tests/unit/test_layers.py enforces.
"""
