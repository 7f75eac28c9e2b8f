"""``txrendezvous accounts`` manages a real account store: an SQLite file or a PostgreSQL server."""

import subprocess
import sys

import pytest

from rendezvous.node.accounts import AccountStore
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def accounts(db, *args, password=None):
    return subprocess.run(
        [sys.executable, "-m", "rendezvous.cli.main", "accounts", "--db", str(db), "--realm", "example.org",
         *(["--password-stdin"] if password is not None else []), *args],
        input=None if password is None else password + "\n",
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_add_passwd_list_remove(database):
    """Users are added, listed, re-passworded and removed, in either store; errors exit non-zero with a message."""
    db = database
    assert accounts(db, "add", "alice", password="first-pw").returncode == 0
    assert AccountStore(db).check_password("alice", "first-pw")
    listed = accounts(db, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("alice\texample.org\t")
    assert accounts(db, "passwd", "alice", password="second-pw").returncode == 0
    assert AccountStore(db).check_password("alice", "second-pw")
    again = accounts(db, "add", "alice", password="another-pw")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert accounts(db, "remove", "alice").returncode == 0
    gone = accounts(db, "remove", "alice")
    assert gone.returncode == 1 and "no user" in gone.stderr


@pytest.mark.parametrize("password", ["", "x", "1234567", "pass\x07word"])
def test_short_or_unusable_password_is_refused(tmp_path, password):
    """A password under 8 characters, or with a control character, is refused on add and passwd."""
    db = tmp_path / "a.sqlite"
    result = accounts(db, "add", "bob", password=password)
    assert result.returncode == 1 and "password" in result.stderr
    assert accounts(db, "add", "bob", password="long-enough").returncode == 0
    result = accounts(db, "passwd", "bob", password=password)
    assert result.returncode == 1 and "password" in result.stderr
    assert AccountStore(db).check_password("bob", "long-enough")


@pytest.mark.parametrize("name", ["bob smith", "Bob", ".bob", "b" * 33, "böb", "bob:x"])
def test_user_name_outside_the_syntax_is_refused(tmp_path, name):
    """A name outside [a-z0-9][a-z0-9._-]{0,31} is refused with a message saying the rule."""
    result = accounts(tmp_path / "a.sqlite", "add", name, password="long-enough")
    assert result.returncode == 1 and "a-z0-9" in result.stderr
    assert AccountStore(tmp_path / "a.sqlite").names() == []


def test_an_unreachable_database_is_a_clear_error():
    """A PostgreSQL URL nobody answers exits 1 with a message naming the database, not a traceback."""
    from tests.conftest import free_port

    result = accounts(f"postgresql://postgres@127.0.0.1:{free_port()}/accounts", "list")
    assert result.returncode == 1 and result.stderr.startswith("txrendezvous accounts: postgresql://")
    assert "Traceback" not in result.stderr
