"""Signaling presence and buddies: presence, buddy requests and lists, lookup, short messages."""

from rendezvous.node.accounts import AccountError
from rendezvous.node.signaling.session import Session, SignalingError, text_field

PRESENCE_STATES = ("online", "away", "busy", "offline")
NAT_TYPE_MAX = 64
MAX_TEXT_BYTES = 4096


class Buddies:
    """Mixed into SignalingNode: presence shared with accepted buddies, and messages between them."""

    def _presence(self, session: Session, message: dict):
        state = message.get("state", session.state)
        if state not in PRESENCE_STATES:
            raise SignalingError("bad-request", f"state must be one of {', '.join(PRESENCE_STATES)}")
        nat_type = message.get("nat_type", session.nat_type)
        if nat_type is not None and (not isinstance(nat_type, str) or len(nat_type) > NAT_TYPE_MAX):
            raise SignalingError("bad-request", "nat_type must be a short string")
        session.state, session.nat_type = state, nat_type
        self.directory.publish_presence(session.user, state, nat_type)
        self._notify_buddies(session.user, state, nat_type)
        return {"op": "presence-set", "state": state}

    def _notify_buddies(self, user: str, state: str, nat_type: str | None) -> None:
        for buddy in self.accounts.accepted(user):
            self._deliver(buddy, {"op": "presence", "user": user, "state": state, "nat_type": nat_type,
                                  "node": self.config.node_name})

    def _buddy_add(self, session: Session, message: dict):
        buddy = text_field(message, "user")
        if buddy == session.user:
            raise SignalingError("self-buddy", "you cannot be your own buddy")
        try:
            state = self.accounts.request_buddy(session.user, buddy)
        except AccountError as e:
            raise SignalingError("list-full", str(e)) from None
        if state == "accepted":
            self._share_presence(session, buddy)
        else:
            self._deliver(buddy, {"op": "buddy-request", "from": session.user})
        return {"op": "buddy", "user": buddy, "state": state}

    def _buddy_accept(self, session: Session, message: dict):
        requester = text_field(message, "user")
        try:
            self.accounts.accept_buddy(session.user, requester)
        except AccountError as e:
            raise SignalingError("not-found", str(e)) from None
        self._share_presence(session, requester)
        return {"op": "buddy", "user": requester, "state": "accepted"}

    def _share_presence(self, session: Session, buddy: str) -> None:
        """New buddies: each learns the other's presence, wherever they are."""
        where = self._where(buddy)
        if where is not None:
            session.send({"op": "presence", "user": buddy, **where})
        self._deliver(buddy, {"op": "presence", "user": session.user, "state": session.state,
                              "nat_type": session.nat_type, "node": self.config.node_name})

    def _buddy_remove(self, session: Session, message: dict):
        buddy = text_field(message, "user")
        self.accounts.remove_buddy(session.user, buddy)
        return {"op": "buddy", "user": buddy, "state": "removed"}

    def _buddy_list(self, session: Session, message: dict):
        entries = []
        for name, relation in self.accounts.buddies(session.user):
            entry = {"user": name, "relation": relation}
            if relation == "accepted":
                where = self._where(name)
                entry["state"] = where["state"] if where else "offline"
            entries.append(entry)
        return {"op": "buddies", "buddies": entries}

    def _lookup(self, session: Session, message: dict):
        user = text_field(message, "user")
        if not self.accounts.are_buddies(session.user, user):
            raise SignalingError("not-a-buddy", "lookup is for accepted buddies")
        where = self._where(user)
        return {
            "op": "peer", "user": user, "online": where is not None,
            "state": where["state"] if where else "offline",
            "node": where["node"] if where else None,
            "nat_type": where["nat_type"] if where else None,
        }

    def _check_buddy_online(self, session: Session, user: str) -> None:
        if not self.accounts.are_buddies(session.user, user):
            raise SignalingError("not-a-buddy", f"{user} is not an accepted buddy")
        if self._where(user) is None:
            raise SignalingError("offline", f"{user} is offline")

    def _message(self, session: Session, message: dict):
        to = text_field(message, "to")
        text = text_field(message, "text", MAX_TEXT_BYTES)
        self._check_buddy_online(session, to)
        self._deliver(to, {"op": "message", "from": session.user, "text": text})
        return {"op": "delivered", "to": to}

