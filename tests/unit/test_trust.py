"""Identities and pins: the key file, trust on first use, and pins that another process wrote meanwhile."""

import os

import pytest

from rendezvous.peer.identity import Identity, IdentityError
from rendezvous.peer.pins import FingerprintChanged, PinStore
from rendezvous.wire.fingerprints import FINGERPRINT

ONE, TWO = Identity.generate("one").fingerprint, Identity.generate("two").fingerprint


def test_the_key_file_is_made_once_private_and_read_back(tmp_path):
    """load_or_create makes a 0600 key file on first use and returns the same identity afterwards."""
    path = tmp_path / "state" / "alice.identity.pem"
    made = Identity.load_or_create(path, "alice")
    assert os.stat(path).st_mode & 0o777 == 0o600 and FINGERPRINT.fullmatch(made.fingerprint)
    assert Identity.load_or_create(path, "alice").fingerprint == made.fingerprint


def test_a_damaged_key_file_is_a_clear_error(tmp_path):
    """A file that is not a key and its certificate raises IdentityError naming the file."""
    path = tmp_path / "bad.pem"
    path.write_text("not a key")
    with pytest.raises(IdentityError, match="bad.pem"):
        Identity.load_or_create(path, "alice")


def test_pins_are_kept_and_a_changed_fingerprint_is_refused(tmp_path):
    """The first fingerprint is pinned in the file; another one raises unless the change is allowed."""
    store = PinStore(tmp_path / "pins.json")
    store.check("bob", ONE)
    store.pin("bob", ONE)
    again = PinStore(tmp_path / "pins.json")
    with pytest.raises(FingerprintChanged):
        again.check("bob", TWO)
    again.pin("bob", TWO, allow_change=True)
    assert PinStore(tmp_path / "pins.json").pins == {"bob": TWO}


def test_a_pin_written_meanwhile_is_not_overwritten(tmp_path):
    """Two stores read the file before either pinned: the second pin of another fingerprint is refused."""
    first, second = PinStore(tmp_path / "pins.json"), PinStore(tmp_path / "pins.json")
    first.check("bob", ONE)
    second.check("bob", TWO)  # no pin yet for either
    first.pin("bob", ONE)
    with pytest.raises(FingerprintChanged):
        second.pin("bob", TWO)
    assert PinStore(tmp_path / "pins.json").pins == {"bob": ONE}
