"""pip's own answer, with this machine's pip set-up switched off: installing the package on Colab's GPU runtime
changes none of its preinstalled Hugging Face, torch or jax packages, and the lowest versions our ranges admit
resolve together. Needs the package registry (CI has it); skips with the reason where it is unreachable."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import background
import pytest

from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.slow
PROFILES = ["colab", "lowest"]


def resolve(profile: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "check_resolution.py"), profile],
        capture_output=True,
        text=True,
        timeout=1200,
    )


def start_early(items) -> None:
    """Both dry-runs download GBs of wheels (this registry serves no separate metadata): start them at once."""
    profiles = {item.callspec.params["profile"] for item in items if hasattr(item, "callspec")}
    if profiles and background.registry_reachable():
        for profile in sorted(profiles):
            background.start(f"resolution-{profile}", partial(resolve, profile))


@pytest.mark.parametrize("profile", PROFILES)
def test_resolution_profile(profile, package_registry):
    run = background.result(f"resolution-{profile}", partial(resolve, profile))
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{profile}: ok" in run.stdout
    table = run.stdout.split("| package |")[1]
    assert "| YES |" not in table
