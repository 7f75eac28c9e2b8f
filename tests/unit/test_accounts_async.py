"""The account store off the reactor: calls in a thread pool fire Deferreds, and the relay's key mirror."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relay.credentials import Keys
from rendezvous.node.accounts import AccountError, AccountStore
from rendezvous.node.accounts_async import KEYS_REFRESH_SECONDS, AsyncAccounts, KeyMirror
from tests.switchable_store import Switchable


@pytest_twisted.ensureDeferred
async def test_calls_run_in_pool_threads_with_a_store_each(database):
    """Each pool thread opens its own store; named calls and run(function) answer as Deferreds in either back end."""
    import threading

    AccountStore(database).close()  # the schema, as the node makes it at start
    opened = []

    def open_store():
        opened.append(threading.get_ident())
        return AccountStore(database, upgrade=False)

    accounts = AsyncAccounts(open_store, reactor, threads=2)
    accounts.startService()
    try:
        await accounts.add("alice", "alice-pw", "example.org")
        answers = await Deferred.fromCoroutine(_both(accounts))
        assert answers == [True, False]
        with pytest.raises(AccountError, match="already exists"):
            await accounts.add("alice", "again-pw", "example.org")
        assert await accounts.buddies("alice") == ([], False)
        assert await accounts.run(lambda store, name: store.check_password(name, "alice-pw"), "alice") is True
        assert threading.get_ident() not in opened and 1 <= len(set(opened)) == len(opened) <= 2
    finally:
        accounts.stopService()


async def _both(accounts):
    from twisted.internet.defer import gatherResults

    return await gatherResults([accounts.check_password("alice", "alice-pw"),
                                accounts.check_password("alice", "wrong-pw")])


def test_the_key_mirror_reloads_and_keeps_its_keys_while_the_store_is_away(tmp_path):
    """KeyMirror answers keys() from its last load, reloads every KEYS_REFRESH_SECONDS, and keeps the old
    keys (with a log line) when a reload finds the store unavailable."""
    store = AccountStore(tmp_path / "accounts.sqlite")
    store.add("alice", "alice-pw", "example.org")
    store.add("bob", "bob-pw", "other.realm")
    accounts, clock = Switchable(store), Clock()
    mirror = KeyMirror(accounts, "example.org", clock)
    mirror.startService()
    alice = Keys.from_password("alice", "example.org", "alice-pw")
    assert mirror.keys("alice", "example.org", 0) == alice
    assert mirror.keys("alice", "other.realm", 0) is None and mirror.keys("bob", "example.org", 0) is None
    store.remove("alice")
    accounts.down = True
    clock.advance(KEYS_REFRESH_SECONDS)
    assert mirror.keys("alice", "example.org", 0) == alice
    accounts.down = False
    clock.advance(KEYS_REFRESH_SECONDS)
    assert mirror.keys("alice", "example.org", 0) is None
    mirror.stopService()
    store.close()
