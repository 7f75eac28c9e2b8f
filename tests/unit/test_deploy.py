"""The shipped deploy files name options that exist and parse."""

import re
import shlex
import tomllib

from rendezvous.config import RENDEZVOUS_OPTIONS
from rendezvous.tap import Options
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_sample_config_parses_with_every_option_commented():
    """deploy/rendezvous.toml parses and mentions every option."""
    text = (DEPLOY / "rendezvous.toml").read_text()
    Options().parseOptions(["--config", str(DEPLOY / "rendezvous.toml")])
    settings = [line[2:] for line in text.splitlines() if re.match(r"# [a-z-]+ = ", line)]
    uncommented = "\n".join(settings)
    values = tomllib.loads(uncommented)
    assert set(values) == {o.name for o in RENDEZVOUS_OPTIONS}


def test_systemd_unit_names_real_options():
    """The systemd unit's ExecStart parses with our Options."""
    unit = (DEPLOY / "txrendezvous.service").read_text()
    command = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))
    args = command[command.index("rendezvous") + 1 :]
    flags = [a for a in args if a.startswith("--")]
    known = {f"--{o.name}" for o in RENDEZVOUS_OPTIONS} | {"--config"}
    assert set(flags) <= known
