"""What applications embed: log in, reach a buddy by the best path, analyse the NAT (floor 3).

May import ``relay`` (the TURN client), ``upnp_helper``, ``rendezvous.wire``
and ``rendezvous.stun``; never ``rendezvous.node`` or ``rendezvous.cli``.
"""
