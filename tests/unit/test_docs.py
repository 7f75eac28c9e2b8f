"""docs/OPERATING.md documents every option of `twistd relay` and `twistd rendezvous`."""

import pytest

from rendezvous.node.relay_tap import Options as RelayOptions
from rendezvous.node.tap import Options as RendezvousOptions
from tests.conftest import ROOT

OPERATING = (ROOT / "docs" / "OPERATING.md").read_text()


@pytest.mark.parametrize("options", [RelayOptions, RendezvousOptions], ids=["relay", "rendezvous"])
def test_every_option_is_documented(options):
    """Each long option (but twistd's own --help and --version) appears as `--name` in OPERATING.md."""
    names = {name.rstrip("=") for name in options().longOpt} - {"help", "version"}
    assert names
    assert sorted(n for n in names if f"`--{n}`" not in OPERATING) == []
