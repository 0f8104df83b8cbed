"""A classroom install without network: `make wheelhouse` gathers every wheel, and `make setup` in a fresh copy
of the project installs from it alone while pip's indexes are unreachable (pip is pointed at a closed port).

The wheelhouse is built once into .cache/wheelhouse and reused while requirements.lock and pyproject.toml are
unchanged (its manifest records their digest): building it takes ~30 s here from this machine's wheel caches,
installing from it ~2-3 minutes.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import background
import pytest

from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from build_wheelhouse import build, canonical, lock_digest, locked_pins  # noqa: E402

pytestmark = pytest.mark.slow

CACHED = Path(os.environ.get("SD_TEST_WHEELHOUSE", REPO_ROOT / ".cache" / "wheelhouse"))
#: pip may look nowhere but the wheelhouse: no index (a closed port), no config files, no machine find-links
NO_NETWORK = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0"}


def wheelhouse_is_current() -> bool:
    manifest = CACHED / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()).get("lock_digest") == lock_digest()


def build_wheelhouse() -> Path:
    with background.SOURCE_TREE:  # it builds the project's wheel, as tests/test_wheel.py does
        build(CACHED)
    return CACHED


def wheelhouse() -> Path:
    if wheelhouse_is_current() and not background.started("wheelhouse"):
        return CACHED
    return background.result("wheelhouse", build_wheelhouse)


def start_early(items) -> None:
    """Build the wheelhouse and install a fresh copy from it in the background, beside the CPU-bound tests."""
    if background.selected(items, "wheelhouse"):
        background.start("wheelhouse", build_wheelhouse if not wheelhouse_is_current() else lambda: CACHED)
    if background.selected(items, "test_setup_installs_from_the_wheelhouse_without_network"):
        background.start("wheelhouse-install", install_from_wheelhouse)


@pytest.fixture(scope="module", name="wheelhouse")
def wheelhouse_fixture() -> Path:
    return wheelhouse()


def test_wheelhouse_holds_every_locked_wheel_and_a_true_manifest(wheelhouse):
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    have = {canonical(f["name"].split("-")[0]): f for f in manifest["files"]}
    for pin in locked_pins():
        name, version = pin.split("==")
        assert canonical(name) in have, f"{pin} is missing from the wheelhouse"
        assert have[canonical(name)]["name"].split("-")[1].split("+")[0] == version, (pin, have[canonical(name)])
    assert "sd-step-by-step" in have  # the project's own wheel, with the offline models
    assert manifest["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    for f in manifest["files"]:
        path = wheelhouse / f["name"]
        assert path.stat().st_size == f["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"], f["name"]
    assert manifest["total_bytes"] == sum(f["bytes"] for f in manifest["files"])
    print(f"wheelhouse: {len(manifest['files'])} wheels, {manifest['total_bytes'] / 1e6:.0f} MB")


def fresh_copy(dest: Path) -> Path:
    """The project's tracked files as they are in this working tree (what a teacher's clone would hold)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, files):
        src = REPO_ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


def install_from_wheelhouse() -> tuple[Path, dict, subprocess.CompletedProcess]:
    """A fresh copy of the project set up from the wheelhouse alone: (the copy, its environment, setup's run)."""
    folder = Path(tempfile.mkdtemp(prefix="sd-wheelhouse-install-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    clone = fresh_copy(folder / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "VIRTUAL_ENV"}
    env.update(NO_NETWORK, SD_WHEELHOUSE=str(wheelhouse()), PYTHON=sys._base_executable)
    run = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    return clone, env, run


def test_setup_installs_from_the_wheelhouse_without_network(wheelhouse):
    clone, env, run = background.result("wheelhouse-install", install_from_wheelhouse)
    try:
        check_the_wheelhouse_install(clone, env, run)
    finally:
        shutil.rmtree(clone.parent, ignore_errors=True)  # a whole venv (GBs): gone now, not at the session's end


def check_the_wheelhouse_install(clone: Path, env: dict, run: subprocess.CompletedProcess) -> None:
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "installing from the wheelhouse" in run.stdout and "built for another requirements.lock" not in run.stderr
    assert "a torch wheel is already on this machine's wheel path" in run.stdout  # torch came from it too
    py = clone / ".venv" / "bin" / "python"
    check = subprocess.run(
        [str(py), "-c", "import helpers, torch, jax, diffusers; print(torch.__version__, jax.__version__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    pip_check = subprocess.run([str(py), "-m", "pip", "check"], env=env, capture_output=True, text=True)
    assert pip_check.returncode == 0, pip_check.stdout + pip_check.stderr


def test_a_missing_wheelhouse_is_named(tmp_path):
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "scripts/torch_source.py", "requirements.lock", "pyproject.toml"):
        shutil.copy2(REPO_ROOT / name, clone / name)
    env = dict(os.environ, SD_WHEELHOUSE=str(tmp_path / "usb-stick"), PYTHON=sys._base_executable)
    run = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "is not a folder" in run.stderr, run.stderr
