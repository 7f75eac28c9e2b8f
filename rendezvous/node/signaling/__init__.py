"""The super node's signaling core, sans-IO (docs/PROTOCOL.md, "Signaling v1").

``SignalingNode`` (core.py) applies decoded frames to sessions; its ops are
grouped by job in login.py, buddies.py and connects.py.
"""

from rendezvous.node.signaling.core import ERROR_DECAY_SECONDS, MAX_ERRORS, SignalingNode, node_name
from rendezvous.node.signaling.session import LocalDirectory, Session, SignalingConfig, SignalingError

__all__ = ["ERROR_DECAY_SECONDS", "MAX_ERRORS", "LocalDirectory", "Session", "SignalingConfig", "SignalingError", "SignalingNode",
           "node_name"]
