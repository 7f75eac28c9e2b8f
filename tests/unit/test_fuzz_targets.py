"""A bounded run of each coverage-guided fuzz target of bench/fuzz.py (atheris): no crash."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "bench" / "fuzz.py"
TARGETS = ["stun", "turn", "frames", "pmp", "native"]


def test_every_target_has_seeds():
    """Each target has a seed corpus in the repository, and the script lists exactly these targets."""
    listed = subprocess.run([sys.executable, str(FUZZ), "--list"], capture_output=True, text=True, timeout=60)
    assert listed.stdout.split() == TARGETS
    for target in TARGETS:
        assert list((ROOT / "bench" / "fuzz_corpus" / target).iterdir())


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_without_a_crash(tmp_path, target):
    """A few thousand inputs, or 5 s, from the seed corpus: the target ends without a crash."""
    found = tmp_path / "found"
    found.mkdir()
    run = subprocess.run(
        [sys.executable, str(FUZZ), target, "-runs=5000", "-max_total_time=5", f"-artifact_prefix={tmp_path}/",
         str(found), str(ROOT / "bench" / "fuzz_corpus" / target)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    assert run.returncode == 0 and not crashes, run.stderr[-3000:]
    assert "Done " in run.stderr
