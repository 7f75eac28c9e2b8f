"""The super node: everything ``twistd rendezvous`` and ``twistd relay`` run (floor 3).

The signaling core (``signaling``, sans-IO) and its adapters over TCP, TLS
and WebSocket (``signaling_protocol``, ``web``), the account store
(``accounts*``: SQLite or PostgreSQL, versioned ``schema/``, called from a
thread pool), the Redis directory and host-cache gossip between nodes,
the echo service, and the operations both
daemons share: metrics, the admin API, log formats, TLS material and the
view over relay workers. ``tap`` and ``relay_tap`` are the composition roots
that the twistd plugins name.

May import ``relay``, ``upnp_helper``, ``rendezvous.wire`` and
``rendezvous.stun``; never ``rendezvous.peer`` or ``rendezvous.cli``.
"""
