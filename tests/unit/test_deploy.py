"""The shipped deploy files name options that exist and parse."""

import configparser
import re
import shlex
import tomllib

import pytest

from rendezvous.node.relay_tap import Options as RelayOptions
from rendezvous.node.config import RENDEZVOUS_OPTIONS
from rendezvous.node.tap import Options
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_sample_config_parses_with_every_option_commented():
    """deploy/rendezvous.toml parses and mentions every option."""
    text = (DEPLOY / "rendezvous.toml").read_text()
    Options().parseOptions(["--config", str(DEPLOY / "rendezvous.toml")])
    settings = [line[2:] for line in text.splitlines() if re.match(r"# [a-z0-9-]+ = ", line)]
    uncommented = "\n".join(settings)
    values = tomllib.loads(uncommented)
    assert set(values) == {o.name for o in RENDEZVOUS_OPTIONS}


@pytest.mark.parametrize("unit, command, options", [
    ("txrendezvous.service", "rendezvous", RENDEZVOUS_OPTIONS),
    ("txrendezvous-relay.service", "relay", RelayOptions.options),
])
def test_systemd_units_name_real_options(unit, command, options):
    """Each systemd unit's ExecStart names options its twistd command has."""
    text = (DEPLOY / unit).read_text()
    words = shlex.split(re.search(r"^ExecStart=(.*)$", text, re.M).group(1))
    args = words[words.index(command) + 1 :]
    flags = [a for a in args if a.startswith("--")]
    known = {f"--{o.name}" for o in options} | {"--config"}
    assert flags and set(flags) <= known


def _manifest_args(text: str) -> list[str]:
    """The words of every `args:` list in a manifest (block style, one item per line)."""
    args, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "args:":
            inside = True
            continue
        if inside and stripped.startswith("- "):
            args.append(stripped[2:].strip('"'))
        elif inside:
            inside = False
    return args


@pytest.mark.parametrize("manifest, command, options", [
    ("kubernetes/relay-daemonset.yaml", "relay", RelayOptions.options),
    ("kubernetes/supernode.yaml", "rendezvous", RENDEZVOUS_OPTIONS),
])
def test_manifests_name_real_options(manifest, command, options):
    """The Kubernetes manifests pass options their twistd command has, and probe /readyz and /healthz."""
    text = (DEPLOY / manifest).read_text()
    args = _manifest_args(text)
    assert args[0] == command
    flags = [a for a in args if a.startswith("--")]
    assert flags and set(flags) <= {f"--{o.name}" for o in options}
    assert "path: /readyz" in text and "path: /healthz" in text
    metrics = args[args.index("--metrics") + 1]
    assert metrics.startswith("127.0.0.1:"), "the metrics and admin port must not face the network"
    assert text.count("httpGet: {host: 127.0.0.1,") == 2


def test_dockerfile_runs_twistd_as_a_non_root_user():
    """The container image runs twistd in the foreground as its own user, with a real command."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER txrendezvous" in text
    assert 'ENTRYPOINT ["twistd", "-n", "--pidfile="]' in text
    assert 'CMD ["rendezvous"' in text


def test_dockerfile_builds_the_relay_extensions():
    """The image is built from setup.py with a compiler, and fails to build if an extension is missing."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert "COPY setup.py " in text and "gcc" in text and "libssl-dev" in text
    assert 'import relay._mmsg, relay._indications, relay._requests' in text


def test_setup_cfg_installs_every_package_of_the_tree():
    """Each folder of ours with an __init__.py (and the schema folders) is a package setup.cfg installs."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(path.parent.relative_to(ROOT).parts)
             for top in ("rendezvous", "relay", "upnp_helper") for path in (ROOT / top).rglob("__init__.py")}
    assert found | {"rendezvous.node.schema", "rendezvous.node.schema.postgresql", "twisted.plugins"} == listed
