"""The SQLite account store: scrypt passwords, TURN keys, schema versions (a real file)."""

import sqlite3

import pytest

from relay.credentials import Keys
from rendezvous.node.accounts import SCHEMA_VERSION, AccountError, AccountStore


@pytest.fixture
def store(tmp_path):
    s = AccountStore(tmp_path / "state" / "accounts.sqlite")
    yield s
    s.close()


def test_add_check_and_list(store):
    """An added account checks its password, refuses others, and is listed."""
    store.add("alice", "correct horse", "example.org")
    assert store.check_password("alice", "correct horse")
    assert not store.check_password("alice", "wrong")
    assert not store.check_password("nobody", "correct horse")
    assert [(n, r) for n, r, _ in store.names()] == [("alice", "example.org")]


def test_password_is_not_stored_in_clear(store, tmp_path):
    """The file holds an scrypt hash, not the password."""
    store.add("alice", "correct horse", "example.org")
    assert b"correct horse" not in (tmp_path / "state" / "accounts.sqlite").read_bytes()


def test_turn_keys_for_the_realm(store):
    """keys() gives the RFC 8489 keys for the account's realm only."""
    store.add("alice", "pw", "example.org")
    assert store.keys("alice", "example.org", 0) == Keys.from_password("alice", "example.org", "pw")
    assert store.keys("alice", "other.realm", 0) is None
    assert store.keys("bob", "example.org", 0) is None


def test_reset_password_and_remove(store):
    """A reset changes password and keys; remove deletes; unknown users are errors."""
    store.add("alice", "old", "example.org")
    store.set_password("alice", "new", "example.org")
    assert store.check_password("alice", "new") and not store.check_password("alice", "old")
    assert store.keys("alice", "example.org", 0) == Keys.from_password("alice", "example.org", "new")
    store.remove("alice")
    assert store.names() == []
    with pytest.raises(AccountError, match="no user"):
        store.remove("alice")
    with pytest.raises(AccountError, match="no user"):
        store.set_password("alice", "x", "example.org")


@pytest.mark.parametrize("name, password, message", [
    ("alice", "", "empty"), ("", "pw", "not a valid"), ("a:b", "pw", "':'"), ("x" * 200, "pw", "too long"),
    ("bad\x00name", "pw", "not a valid"), ("alice", "pass\x07word", "cannot use"),
])
def test_bad_accounts_are_refused(store, name, password, message):
    """Empty, overlong, control-character and colon names or passwords are refused with a reason."""
    with pytest.raises(AccountError, match=message):
        store.add(name, password, "example.org")


def test_duplicate_is_refused(store):
    """A name can be taken once."""
    store.add("alice", "pw", "example.org")
    with pytest.raises(AccountError, match="already exists"):
        store.add("alice", "pw2", "example.org")


def test_reopen_keeps_accounts_and_refuses_newer_schemas(tmp_path):
    """Reopening keeps the data; a file from a newer schema is refused, not damaged."""
    path = tmp_path / "accounts.sqlite"
    AccountStore(path).add("alice", "pw", "example.org")
    assert AccountStore(path).check_password("alice", "pw")
    db = sqlite3.connect(path)
    db.execute("UPDATE version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(AccountError, match="newer than this code"):
        AccountStore(path)


def test_buddy_request_accept_and_remove(store):
    """A request waits for acceptance; accepting makes both buddies; removing ends both sides."""
    for name in ("alice", "bob", "carol"):
        store.add(name, "pw", "example.org")
    assert store.request_buddy("alice", "bob") == "requested"
    assert store.buddies("alice") == [("bob", "requested")]
    assert store.buddies("bob") == [("alice", "incoming")]
    assert not store.are_buddies("alice", "bob")
    with pytest.raises(AccountError, match="no buddy request"):
        store.accept_buddy("alice", "carol")
    assert store.accept_buddy("bob", "alice") == "accepted"
    assert store.are_buddies("alice", "bob") and store.are_buddies("bob", "alice")
    assert store.accepted("bob") == ["alice"]
    store.remove_buddy("bob", "alice")
    assert store.buddies("alice") == [] and store.buddies("bob") == []


def test_a_request_to_an_unknown_name_is_kept_like_any_other(store):
    """A buddy request to a name with no account is stored as requested, so it tells nothing about who exists."""
    store.add("alice", "pw", "example.org")
    assert store.request_buddy("alice", "nobody") == "requested"
    assert store.buddies("alice") == [("nobody", "requested")]
    assert not store.are_buddies("alice", "nobody")
    store.add("nobody", "pw", "example.org")
    assert store.buddies("nobody") == [("alice", "incoming")]


def test_crossed_requests_become_buddies(store):
    """If both sides ask, the second request accepts the first."""
    store.add("alice", "pw", "example.org")
    store.add("bob", "pw", "example.org")
    store.request_buddy("alice", "bob")
    assert store.request_buddy("bob", "alice") == "accepted"


def test_removing_an_account_removes_its_buddy_rows(store):
    """Deleting an account cascades to buddy rows that name it."""
    store.add("alice", "pw", "example.org")
    store.add("bob", "pw", "example.org")
    store.request_buddy("alice", "bob")
    store.remove("bob")
    assert store.buddies("alice") == []


def test_upgrade_from_v1_keeps_accounts(tmp_path):
    """A version 1 file is upgraded to version 2 in place, keeping its accounts."""
    from importlib import resources

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(resources.files("rendezvous.node.schema").joinpath("v1.sql").read_text())
    db.execute("INSERT INTO version VALUES (1)")
    db.commit()
    db.close()
    store = AccountStore(path)
    store.add("alice", "pw", "example.org")
    store.add("bob", "pw", "example.org")
    assert store.request_buddy("alice", "bob") == "requested"
    assert store.db.execute("SELECT version FROM version").fetchone()[0] == SCHEMA_VERSION


def test_upgrade_from_v2_keeps_buddies(tmp_path):
    """A version 2 file is upgraded in place: accounts and buddy rows stay, requests to unknown names work."""
    from importlib import resources

    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.executescript(resources.files("rendezvous.node.schema").joinpath("v2.sql").read_text())
    db.execute("INSERT INTO version VALUES (2)")
    for name in ("alice", "bob"):
        db.execute("INSERT INTO accounts VALUES (?, x'00', x'00', 1, 1, 1, 'example.org', x'00', x'00', 0)", (name,))
    db.execute("INSERT INTO buddies VALUES ('alice', 'bob', 'requested', 0)")
    db.commit()
    db.close()
    store = AccountStore(path)
    assert store.db.execute("SELECT version FROM version").fetchone()[0] == SCHEMA_VERSION
    assert store.buddies("alice") == [("bob", "requested")]
    assert store.request_buddy("alice", "nobody") == "requested"
    store.remove("bob")
    assert store.buddies("alice") == [("nobody", "requested")]
