"""Signaling presence and buddies: presence, buddy requests and lists (a page at a time), lookup, short messages.

Whether two users are buddies is read from the account store each time;
the answer is kept on the session (``Session.buddies``), which stands in
for the store while it cannot be reached.
"""


from twisted.logger import Logger

from rendezvous.node.accounts import AccountError, StoreUnavailable
from rendezvous.node.signaling.session import MAX_FIELD_BYTES, Session, SignalingError, text_field
from rendezvous.wire.frames import MAX_FRAME_BYTES, fitting

log = Logger()

PRESENCE_STATES = ("online", "away", "busy", "offline")
NAT_TYPE_MAX = 64
MAX_TEXT_BYTES = 4096
BUDDY_PAGE_BYTES = MAX_FRAME_BYTES - 1024  # a page's entries; the rest of the frame has room for id and next


class Buddies:
    """Mixed into SignalingNode: presence shared with accepted buddies, and messages between them."""

    async def _presence(self, session: Session, message: dict):
        state = message.get("state", session.state)
        if state not in PRESENCE_STATES:
            raise SignalingError("bad-request", f"state must be one of {', '.join(PRESENCE_STATES)}")
        nat_type = message.get("nat_type", session.nat_type)
        if nat_type is not None and (not isinstance(nat_type, str) or len(nat_type) > NAT_TYPE_MAX):
            raise SignalingError("bad-request", "nat_type must be a short string")
        session.state, session.nat_type = state, nat_type
        self.directory.publish_presence(session.user, state, nat_type)
        await self._notify_buddies(session, state)
        return {"op": "presence-set", "state": state}

    async def _notify_buddies(self, session: Session, state: str) -> None:
        """Tell session's accepted buddies its user's state, wherever they are."""
        presence = {"op": "presence", "user": session.user, "state": state, "nat_type": session.nat_type,
                    "node": self.config.node_name}
        for buddy in await self._accepted(session, session.user):
            self._deliver(buddy, presence)

    async def _accepted(self, session: Session, user: str) -> frozenset:
        """user's accepted buddies from the store, or those last read while the store is away."""
        try:
            session.buddies = frozenset(await self.accounts.accepted(user))
        except StoreUnavailable as e:
            log.warn("buddies of {user} from memory: {error}", user=user, error=e)
        return session.buddies

    async def _are_buddies(self, session: Session, user: str) -> bool:
        try:
            yes = await self.accounts.are_buddies(session.user, user)
        except StoreUnavailable:
            return user in session.buddies
        session.buddies = session.buddies | {user} if yes else session.buddies - {user}
        return yes

    async def _buddy_add(self, session: Session, message: dict):
        buddy = text_field(message, "user")
        if buddy == session.user:
            raise SignalingError("self-buddy", "you cannot be your own buddy")
        try:
            state = await self.accounts.request_buddy(session.user, buddy)
        except AccountError as e:
            raise SignalingError("list-full", str(e)) from None
        if state == "accepted":
            self._share_presence(session, buddy)
        else:
            self._deliver(buddy, {"op": "buddy-request", "from": session.user})
        return {"op": "buddy", "user": buddy, "state": state}

    async def _buddy_accept(self, session: Session, message: dict):
        requester = text_field(message, "user")
        try:
            await self.accounts.accept_buddy(session.user, requester)
        except AccountError as e:
            raise SignalingError("not-found", str(e)) from None
        self._share_presence(session, requester)
        return {"op": "buddy", "user": requester, "state": "accepted"}

    def _share_presence(self, session: Session, buddy: str) -> None:
        """New buddies: each learns the other's presence, wherever they are."""
        self._befriend(session, buddy, True)
        where = self._where(buddy)
        if where is not None:
            session.send({"op": "presence", "user": buddy, **where})
        self._deliver(buddy, {"op": "presence", "user": session.user, "state": session.state,
                              "nat_type": session.nat_type, "node": self.config.node_name})

    def _befriend(self, session: Session, buddy: str, accepted: bool) -> None:
        """Keep the buddy sets of session and, when here, of buddy's session up to date."""
        other = self.sessions.get(buddy)
        for one, name in ((session, buddy), (other, session.user)):
            if one is not None:
                one.buddies = one.buddies | {name} if accepted else one.buddies - {name}

    async def _buddy_remove(self, session: Session, message: dict):
        buddy = text_field(message, "user")
        await self.accounts.remove_buddy(session.user, buddy)
        self._befriend(session, buddy, False)
        return {"op": "buddy", "user": buddy, "state": "removed"}

    async def _buddy_list(self, session: Session, message: dict):
        """One page of the list, by name, ``after`` the previous page's ``next``.

        A page has up to BUDDY_PAGE entries, fewer when they would pass
        BUDDY_PAGE_BYTES (names of requests to unknown users may escape to
        six bytes a character in JSON).
        """
        after = message.get("after", "")
        if not isinstance(after, str) or len(after.encode("utf-8")) > MAX_FIELD_BYTES:
            raise SignalingError("bad-request", f"after must be a string of at most {MAX_FIELD_BYTES} bytes")
        rows, more = await self.accounts.buddies(session.user, after)
        entries, cut = fitting((self._buddy_entry(name, relation) for name, relation in rows), BUDDY_PAGE_BYTES)
        more = more or cut
        return {"op": "buddies", "buddies": entries, "next": entries[-1]["user"] if more else None}

    def _buddy_entry(self, name: str, relation: str) -> dict:
        entry = {"user": name, "relation": relation}
        if relation == "accepted":
            where = self._where(name)
            entry["state"] = where["state"] if where else "offline"
        return entry

    async def _lookup(self, session: Session, message: dict):
        user = text_field(message, "user")
        if not await self._are_buddies(session, user):
            raise SignalingError("not-a-buddy", "lookup is for accepted buddies")
        where = self._where(user)
        return {
            "op": "peer", "user": user, "online": where is not None,
            "state": where["state"] if where else "offline",
            "node": where["node"] if where else None,
            "nat_type": where["nat_type"] if where else None,
        }

    async def _check_buddy_online(self, session: Session, user: str) -> None:
        if not await self._are_buddies(session, user):
            raise SignalingError("not-a-buddy", f"{user} is not an accepted buddy")
        if self._where(user) is None:
            raise SignalingError("offline", f"{user} is offline")

    async def _message(self, session: Session, message: dict):
        to = text_field(message, "to")
        text = text_field(message, "text", MAX_TEXT_BYTES)
        await self._check_buddy_online(session, to)
        self._deliver(to, {"op": "message", "from": session.user, "text": text})
        return {"op": "delivered", "to": to}

