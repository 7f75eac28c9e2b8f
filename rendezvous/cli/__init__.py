"""``txrendezvous`` and its subcommands (floor 4): parse arguments, call ``peer`` or ``node``, print.

``main`` dispatches; each other module is one subcommand. Nothing here
implements protocol or traversal logic: that belongs to the rooms below.
"""
