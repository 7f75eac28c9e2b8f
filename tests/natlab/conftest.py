"""Fixtures of the NAT lab: one public segment and super node per module, NAT sites on demand.

``natlab`` is a factory: ``natlab("eim-apdf")`` returns the Site of a client
behind a NAT of that kind, built the first time a module asks and reused by
later tests of the module. Everything is torn down when the module ends,
failed or not. Tests skip, saying why, without root or ``ip netns``.
"""

from contextlib import contextmanager
from pathlib import Path

import pytest

from .lab import Lab, LabError, unavailable_reason


@contextmanager
def opened_lab(workdir: Path):
    """A Lab in workdir, closed on the way out; skips without root, fails the test when a build step fails."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(workdir)
    try:
        yield lab
    except LabError as e:
        pytest.fail(f"the NAT lab could not be built: {e}")
    finally:
        lab.close()


@pytest.fixture(scope="module")
def natlab(tmp_path_factory):
    """A factory of NAT sites sharing one public segment and one super node (relay and ports 80/443 on)."""
    cache = {}
    with opened_lab(tmp_path_factory.mktemp("natlab")) as lab:
        lab.build_public()
        lab.start_server(relay=True, web_ports=True)

        def site(kind: str, **options):
            key = (kind, tuple(sorted(options.items())))
            if key not in cache:
                cache[key] = lab.add_site(kind, **options)
            else:
                lab.flush_conntrack(cache[key])
            return cache[key]

        site.lab = lab
        yield site
