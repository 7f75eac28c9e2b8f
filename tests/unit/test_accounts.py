"""The account store in both back ends (a real SQLite file, a real PostgreSQL server): scrypt passwords,
TURN keys, buddy lists and their pages, schema versions and upgrades."""

import sqlite3

import pytest

from relay.credentials import Keys
from rendezvous.node.accounts import BUDDY_PAGE, SCHEMA_VERSION, AccountError, AccountStore, StoreUnavailable


@pytest.fixture
def store(database):
    s = AccountStore(database)
    yield s
    s.close()


def test_add_check_and_list(store):
    """An added account checks its password, refuses others, and is listed."""
    store.add("alice", "correct horse", "example.org")
    assert store.check_password("alice", "correct horse")
    assert not store.check_password("alice", "wrong")
    assert not store.check_password("nobody", "correct horse")
    assert [(n, r) for n, r, _ in store.names()] == [("alice", "example.org")]


def test_password_is_not_stored_in_clear(tmp_path):
    """The SQLite file holds an scrypt hash, not the password."""
    store = AccountStore(tmp_path / "state" / "accounts.sqlite")
    store.add("alice", "correct horse", "example.org")
    assert b"correct horse" not in (tmp_path / "state" / "accounts.sqlite").read_bytes()


def test_turn_keys_for_the_realm(store):
    """keys() gives the RFC 8489 keys for the account's realm only."""
    store.add("alice", "pw", "example.org")
    assert store.keys("alice", "example.org", 0) == Keys.from_password("alice", "example.org", "pw")
    assert store.keys("alice", "other.realm", 0) is None
    assert store.keys("bob", "example.org", 0) is None


def test_reads_do_not_wait_for_a_writer(tmp_path):
    """With another connection in the middle of a write, a SQLite store still answers reads (the relay's key
    lookups run on the reactor thread) from the last commit, instead of queueing for the write lock."""
    path = tmp_path / "accounts.sqlite"
    store = AccountStore(path)
    store.add("alice", "pw", "example.org")
    writer = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM accounts")
        assert store.keys("alice", "example.org", 0) == Keys.from_password("alice", "example.org", "pw")
        assert [n for n, _, _ in store.names()] == ["alice"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.close()


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


def test_reopen_keeps_accounts_and_refuses_newer_schemas(database):
    """Reopening keeps the data; a database from a newer schema is refused, not damaged."""
    AccountStore(database).add("alice", "pw", "example.org")
    store = AccountStore(database)
    assert store.check_password("alice", "pw")
    with store.db.transaction() as cursor:
        cursor.execute("UPDATE version SET version = 99")
    with pytest.raises(AccountError, match="newer than this code"):
        AccountStore(database)
    with store.db.transaction() as cursor:
        cursor.execute("UPDATE version SET version = ?", (SCHEMA_VERSION,))
    assert store.check_password("alice", "pw")


def test_buddy_request_accept_and_remove(store):
    """A request waits for acceptance; accepting makes both buddies; removing ends both sides."""
    for name in ("alice", "bob", "carol"):
        store.add(name, "pw", "example.org")
    assert store.request_buddy("alice", "bob") == "requested"
    assert store.buddies("alice") == ([("bob", "requested")], False)
    assert store.buddies("bob") == ([("alice", "incoming")], False)
    assert not store.are_buddies("alice", "bob")
    with pytest.raises(AccountError, match="no buddy request"):
        store.accept_buddy("alice", "carol")
    assert store.accept_buddy("bob", "alice") == "accepted"
    assert store.are_buddies("alice", "bob") and store.are_buddies("bob", "alice")
    assert store.accepted("bob") == ["alice"]
    store.remove_buddy("bob", "alice")
    assert store.buddies("alice") == ([], False) and store.buddies("bob") == ([], False)


def test_a_request_to_an_unknown_name_is_kept_like_any_other(store):
    """A buddy request to a name with no account is stored as requested, so it tells nothing about who exists."""
    store.add("alice", "pw", "example.org")
    assert store.request_buddy("alice", "nobody") == "requested"
    assert store.buddies("alice") == ([("nobody", "requested")], False)
    assert not store.are_buddies("alice", "nobody")
    store.add("nobody", "pw", "example.org")
    assert store.buddies("nobody") == ([("alice", "incoming")], False)


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
    assert store.buddies("alice") == ([], False)


def test_buddy_list_pages_by_name(store):
    """buddies() gives pages of BUDDY_PAGE entries by name, own rows and incoming requests mixed, until no more."""
    store.add("owner", "pw", "example.org")
    names = [f"user{i:03d}" for i in range(2 * BUDDY_PAGE + 7)]
    for i, name in enumerate(names):
        if i % 3 == 0:
            store.add(name, "pw", "example.org")
            store.request_buddy(name, "owner")  # incoming
        else:
            store.request_buddy("owner", name)
    store.accept_buddy("owner", names[0])
    pages, after, more = [], "", True
    while more:
        page, more = store.buddies("owner", after)
        assert 0 < len(page) <= BUDDY_PAGE
        pages.append(page)
        after = page[-1][0]
    assert [len(page) for page in pages] == [BUDDY_PAGE, BUDDY_PAGE, 7]
    entries = [entry for page in pages for entry in page]
    assert [name for name, _ in entries] == names
    assert entries[0] == (names[0], "accepted")
    assert dict(entries)[names[3]] == "incoming" and dict(entries)[names[1]] == "requested"


def test_an_unreachable_database_is_store_unavailable(postgres_server):
    """A PostgreSQL server that is not there gives StoreUnavailable, and the URL's password is not in the error."""
    from tests.conftest import free_port

    store = AccountStore(f"postgresql://postgres:secret@127.0.0.1:{free_port()}/accounts", upgrade=False)
    with pytest.raises(StoreUnavailable) as raised:
        store.check_password("alice", "pw")
    assert "secret" not in str(raised.value)


def test_a_restarted_server_is_reconnected(postgres_server):
    """After the PostgreSQL server restarts, the same store answers again (it connects anew)."""
    postgres_server.sql("DROP SCHEMA public CASCADE")
    postgres_server.sql("CREATE SCHEMA public")
    store = AccountStore(postgres_server.url)
    store.add("alice", "pw", "example.org")
    postgres_server.kill()
    try:
        with pytest.raises(StoreUnavailable):
            store.check_password("alice", "pw")
    finally:
        postgres_server.start()
    assert store.check_password("alice", "pw")


def version_1_file(path):
    """A SQLite file with the version 1 schema (rendezvous/node/schema/v1.sql), as an old node left it."""
    from importlib import resources

    db = sqlite3.connect(path)
    db.executescript(resources.files("rendezvous.node.schema").joinpath("v1.sql").read_text())
    db.execute("INSERT INTO version VALUES (1)")
    db.commit()
    db.close()
    return path


def test_upgrade_from_v1_keeps_accounts(tmp_path):
    """A version 1 file is upgraded to version 2 in place, keeping its accounts."""
    path = version_1_file(tmp_path / "old.sqlite")
    store = AccountStore(path)
    store.add("alice", "pw", "example.org")
    store.add("bob", "pw", "example.org")
    assert store.request_buddy("alice", "bob") == "requested"
    assert store.version() == SCHEMA_VERSION


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
    assert store.version() == SCHEMA_VERSION
    assert store.buddies("alice") == ([("bob", "requested")], False)
    assert store.request_buddy("alice", "nobody") == "requested"
    store.remove("bob")
    assert store.buddies("alice") == ([("nobody", "requested")], False)


def test_upgrade_from_v3_keeps_buddies_and_indexes_incoming_requests(tmp_path):
    """A version 3 file is upgraded in place: its rows stay and incoming requests get their own index."""
    from importlib import resources

    path = tmp_path / "v3.sqlite"
    db = sqlite3.connect(path)
    db.executescript(resources.files("rendezvous.node.schema").joinpath("v3.sql").read_text())
    db.execute("INSERT INTO version VALUES (3)")
    db.execute("INSERT INTO accounts VALUES ('alice', x'00', x'00', 1, 1, 1, 'example.org', x'00', x'00', 0)")
    db.execute("INSERT INTO buddies VALUES ('alice', 'bob', 'requested', 0)")
    db.commit()
    db.close()
    store = AccountStore(path)
    assert store.version() == SCHEMA_VERSION
    assert store.buddies("alice") == ([("bob", "requested")], False)
    assert store.buddies("bob") == ([("alice", "incoming")], False)
    with store.db.transaction() as cursor:
        indexes = {row[0] for row in cursor.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "buddies_incoming" in indexes and "buddies_by_buddy" not in indexes



def test_an_idle_connection_to_a_restarted_server_is_replaced_before_use(postgres_server, monkeypatch):
    """A connection idle past IDLE_CHECK_SECONDS is checked first, so the first call after a server restart
    already answers instead of failing on the stale connection."""
    from rendezvous.node import accounts_postgres

    postgres_server.sql("DROP SCHEMA public CASCADE")
    postgres_server.sql("CREATE SCHEMA public")
    store = AccountStore(postgres_server.url)
    store.add("alice", "pw", "example.org")
    postgres_server.kill()
    postgres_server.start()
    monkeypatch.setattr(accounts_postgres, "IDLE_CHECK_SECONDS", 0)
    assert store.check_password("alice", "pw")


def _structure(path) -> dict:
    """Every table's columns (name, type, not null, default, key) and every index's table, columns and
    uniqueness, as SQLite describes them: what a database's schema is, whatever text made it."""
    db = sqlite3.connect(path)
    try:
        tables = [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        shape = {}
        for table in tables:
            columns = sorted(tuple(row[1:]) for row in db.execute(f"PRAGMA table_info({table})"))
            indexes = sorted((bool(unique), tuple(c[2] for c in db.execute(f"PRAGMA index_info({name})")))
                             for _, name, unique, *_ in db.execute(f"PRAGMA index_list({table})"))
            shape[table] = (columns, indexes)
        return shape
    finally:
        db.close()


def test_a_database_upgraded_from_v1_has_the_fresh_schema(tmp_path):
    """Upgrading a version 1 file step by step gives the tables, columns and indexes a fresh vN.sql makes, so
    the current snapshot and the upgrade steps cannot drift apart."""
    old = version_1_file(tmp_path / "old.sqlite")
    AccountStore(old).close()
    AccountStore(tmp_path / "fresh.sqlite").close()
    assert _structure(old) == _structure(tmp_path / "fresh.sqlite")


def made_at_v4(postgres_server) -> None:
    """Empty the server's accounts database and make the tables of PostgreSQL schema v4 (its first) in it."""
    from importlib import resources

    postgres_server.sql("DROP SCHEMA public CASCADE")
    postgres_server.sql("CREATE SCHEMA public")
    old = AccountStore(postgres_server.url, upgrade=False)
    with old.db.transaction() as cursor:
        old.db.run_script(cursor, resources.files("rendezvous.node.schema.postgresql").joinpath("v4.sql").read_text())
        cursor.execute("INSERT INTO version VALUES (4)")
    old.close()


def _postgres_structure(postgres_server) -> dict:
    """Every table's columns (name, type, null, default), constraints (kind and definition) and indexes
    (definition without the index's name), as PostgreSQL's catalogs describe them."""
    def rows(sql: str) -> list[tuple]:
        return sorted(tuple(row) for row in postgres_server.sql(sql))

    return {
        "columns": rows("SELECT table_name, column_name, data_type, is_nullable, column_default "
                        "FROM information_schema.columns WHERE table_schema = 'public'"),
        "constraints": rows("SELECT conrelid::regclass::text, contype, pg_get_constraintdef(c.oid) "
                            "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                            "WHERE n.nspname = 'public'"),
        "indexes": rows("SELECT tablename, regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') FROM pg_indexes "
                        "WHERE schemaname = 'public'"),
    }


def test_a_postgresql_database_upgraded_from_v4_has_the_fresh_schema(postgres_server):
    """Upgrading a PostgreSQL database made at v4 (the first PostgreSQL schema) step by step gives the columns,
    constraints and indexes a fresh vN.sql makes, so that snapshot and the upgrade steps cannot drift apart."""
    made_at_v4(postgres_server)
    AccountStore(postgres_server.url).close()
    upgraded = _postgres_structure(postgres_server)
    postgres_server.sql("DROP SCHEMA public CASCADE")
    postgres_server.sql("CREATE SCHEMA public")
    AccountStore(postgres_server.url).close()
    fresh = _postgres_structure(postgres_server)
    assert {table for table, *_ in fresh["columns"]} == {"version", "accounts", "buddies", "results"}
    assert upgraded == fresh
