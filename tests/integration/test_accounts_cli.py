"""``txrendezvous accounts`` manages a real account store file."""

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


def test_add_passwd_list_remove(tmp_path):
    """Users are added, listed, re-passworded and removed; errors exit non-zero with a message."""
    db = tmp_path / "accounts.sqlite"
    assert accounts(db, "add", "alice", password="first-pw").returncode == 0
    assert AccountStore(db).check_password("alice", "first-pw")
    listed = accounts(db, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("alice\texample.org\t")
    assert accounts(db, "passwd", "alice", password="second-pw").returncode == 0
    assert AccountStore(db).check_password("alice", "second-pw")
    again = accounts(db, "add", "alice", password="x")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert accounts(db, "remove", "alice").returncode == 0
    gone = accounts(db, "remove", "alice")
    assert gone.returncode == 1 and "no user" in gone.stderr


def test_empty_password_is_refused(tmp_path):
    """An empty password is refused with a message."""
    result = accounts(tmp_path / "a.sqlite", "add", "bob", password="")
    assert result.returncode == 1 and "empty" in result.stderr
