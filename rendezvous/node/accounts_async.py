"""The account store for the reactor: every call runs in a thread pool and fires a Deferred.

A store call blocks (SQLite file I/O, a PostgreSQL round trip, the scrypt
hash of a login), so the node never makes one on the reactor thread: each
pool thread opens its own ``AccountStore`` (one connection each) and keeps
it. A call unanswered after CALL_SECONDS fails with StoreUnavailable, so a
stuck database never holds a session's requests for ever.
``AsyncAccounts.inline`` runs calls at once on the caller's thread instead,
for the sans-IO core on a fake clock.

``KeyMirror`` is the TURN credential source of a node whose accounts are in
PostgreSQL: the relay asks for keys on the reactor thread, so it answers
from memory, reloaded every KEYS_REFRESH_SECONDS.
"""

import threading
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from relay.credentials import Keys
from rendezvous.node.accounts import BUDDY_PAGE, AccountStore, StoreUnavailable

log = Logger()

POOL_THREADS = 4  # concurrent store calls: logins hash in parallel (scrypt releases the GIL)
CALL_SECONDS = 15  # a call not answered by then fails with StoreUnavailable (its thread goes on)
KEYS_REFRESH_SECONDS = 30


class AsyncAccounts(Service):
    """An AccountStore's operations as Deferreds; a Service that starts and stops its thread pool."""

    def __init__(self, open_store: Callable[[], AccountStore], reactor=None, threads: int = POOL_THREADS) -> None:
        """open_store makes a store (a connection) for one thread; reactor None: run calls inline."""
        self._open_store = open_store
        self._reactor = reactor
        self._local = threading.local()
        self._pool = ThreadPool(0, threads, name="accounts") if reactor is not None else None

    @classmethod
    def inline(cls, store: AccountStore) -> "AsyncAccounts":
        """Calls run on the caller's thread and fire before they return (tests on a fake clock)."""
        return cls(lambda: store)

    def startService(self) -> None:
        super().startService()
        if self._pool is not None:
            self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        if self._pool is not None:
            self._pool.stop()

    def _store(self) -> AccountStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._open_store()
        return store

    def run(self, function: Callable, *args) -> Deferred:
        """``function(store, *args)`` where the store's own calls run (a pool thread, or inline);
        fires with what it returns, fails as the store's calls do (StoreUnavailable after CALL_SECONDS)."""
        def call():
            return function(self._store(), *args)

        if self._pool is None:
            return maybeDeferred(call)

        def late(failure):
            failure.trap(TimeoutError)
            raise StoreUnavailable(f"no answer from the account store in {CALL_SECONDS} s")

        answer = deferToThreadPool(self._reactor, self._pool, call)
        return answer.addTimeout(CALL_SECONDS, self._reactor).addErrback(late)

    # Each fires with what the AccountStore method returns, or fails with its
    # AccountError, or StoreUnavailable when the database cannot answer.

    def add(self, name: str, password: str, realm: str) -> Deferred:
        return self.run(AccountStore.add, name, password, realm)

    def check_password(self, name: str, password: str) -> Deferred:
        return self.run(AccountStore.check_password, name, password)

    def all_keys(self, realm: str) -> Deferred:
        return self.run(AccountStore.all_keys, realm)

    def request_buddy(self, owner: str, buddy: str) -> Deferred:
        return self.run(AccountStore.request_buddy, owner, buddy)

    def accept_buddy(self, owner: str, requester: str) -> Deferred:
        return self.run(AccountStore.accept_buddy, owner, requester)

    def remove_buddy(self, owner: str, buddy: str) -> Deferred:
        return self.run(AccountStore.remove_buddy, owner, buddy)

    def buddies(self, owner: str, after: str = "", limit: int = BUDDY_PAGE) -> Deferred:
        return self.run(AccountStore.buddies, owner, after, limit)

    def accepted(self, owner: str) -> Deferred:
        return self.run(AccountStore.accepted, owner)

    def are_buddies(self, a: str, b: str) -> Deferred:
        return self.run(AccountStore.are_buddies, a, b)


class KeyMirror(Service):
    """TURN keys of the accounts made for one realm, held in memory and reloaded in the background."""

    def __init__(self, accounts: AsyncAccounts, realm: str, clock) -> None:
        self.accounts = accounts
        self.realm = realm
        self._keys: dict[str, Keys] = {}
        self._loop = LoopingCall(self.reload)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(KEYS_REFRESH_SECONDS)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def reload(self) -> Deferred:
        """Fires when the keys are reloaded (or kept, with a log line, while the database is away)."""
        def loaded(keys):
            self._keys = keys

        def unavailable(failure):
            failure.trap(StoreUnavailable)
            log.warn("TURN keys not reloaded: {error}", error=failure.value)

        return self.accounts.all_keys(self.realm).addCallbacks(loaded, unavailable)

    def keys(self, username: str, realm: str, now: float) -> Keys | None:
        return self._keys.get(username) if realm == self.realm else None
