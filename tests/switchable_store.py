"""A real account store a test can hold (answers wait) or take away (StoreUnavailable), around AsyncAccounts."""

from twisted.internet.defer import Deferred, fail

from rendezvous.node.accounts import AccountStore, StoreUnavailable
from rendezvous.node.accounts_async import AsyncAccounts


class Switchable:
    """An inline store that can be held (answers wait until release()) or down (StoreUnavailable)."""

    def __init__(self, store: AccountStore) -> None:
        self.inner = AsyncAccounts.inline(store)
        self.held: list[tuple[Deferred, Deferred]] | None = None
        self.down = False

    def release(self) -> None:
        """Let the calls held so far answer; later ones are held again."""
        held, self.held = self.held, []
        for answer, waiting in held:
            answer.chainDeferred(waiting)

    def __getattr__(self, name):
        def call(*args):
            if self.down:
                return fail(StoreUnavailable("the test took the database away"))
            answer = getattr(self.inner, name)(*args)
            if self.held is None:
                return answer
            waiting = Deferred()
            self.held.append((answer, waiting))
            return waiting

        return call
