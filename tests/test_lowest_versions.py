"""The oldest versions our ranges admit (Colab's runtime for the Hugging Face stack, jax 0.7.2 and flax 0.11.2)
really run our code: our Flax CLIP equals torch's CLIP there too, ranking works, and a pipeline generates.

An overlay venv (`.cache/venv-lowest`) holds exactly the lower bound of every range in pyproject.toml; everything
else (torch 2.13 CPU, pytest) falls through to the project's own .venv. Built once (a few hundred MB from the
package registry), reused while the ranges stay the same. torch's lower bound (2.4) is checked by resolution only
(scripts/check_resolution.py lowest): its only builds for this machine are multi-GB CUDA wheels."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import background
import pytest

from helpers.paths import CACHE_DIR, REPO_ROOT

pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from check_resolution import lower_bounds, project_requirements  # noqa: E402

OVERLAY = CACHE_DIR / "venv-lowest"
KEEP_FROM_LOCK = ("torch",)  # see the module docstring


def lowest_pins() -> dict[str, str]:
    pins = {k: v for k, v in lower_bounds(project_requirements()).items() if k not in KEEP_FROM_LOCK}
    if "jax" in pins:
        pins["jaxlib"] = pins["jax"]  # jax x.y.z runs only on jaxlib x.y.z
    return pins


def overlay_is_current() -> bool:
    stamp = OVERLAY / ".pins"
    return (OVERLAY / "bin" / "python").exists() and stamp.exists() and stamp.read_text() == pins_key()


def pins_key() -> str:
    return hashlib.sha256(json.dumps(lowest_pins(), sort_keys=True).encode()).hexdigest()[:16]


def build_overlay() -> Path:
    """(Re)create the overlay venv with exactly the lower bounds (a few hundred MB from the registry)."""
    pins, py = lowest_pins(), OVERLAY / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(OVERLAY)], check=True)
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    fallback = dict.fromkeys(p for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p)
    (site / "zz_project_venv.pth").write_text("\n".join(fallback) + "\n")  # after the overlay's own packages
    import torch

    reqs = [f"{name}=={version}" for name, version in pins.items()] + [f"torch=={torch.__version__.split('+')[0]}"]
    run = subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (OVERLAY / ".pins").write_text(pins_key())
    return py


def overlay() -> Path:
    """The overlay's python: the background build's (tests/background.py), else built here, else the cached one."""
    if overlay_is_current() and not background.started("lowest-overlay"):
        return OVERLAY / "bin" / "python"
    return background.result("lowest-overlay", build_overlay)


#: the tests run again on the lowest versions
LOWEST_TESTS = [
    "tests/test_clip_model.py",
    "tests/test_clip_ranking.py",
    "tests/test_tokenizer.py",
    "tests/test_pipeline.py::test_load_from_a_local_folder",
    "tests/test_pipeline.py::test_same_seed_same_images_other_seed_other_images",
    "tests/test_pipeline.py::test_every_scheduler_runs_and_is_restored",
    "tests/test_pipeline.py::test_one_batched_call_for_n_images",
    "tests/test_personalise.py::test_textual_inversion_round_trips_through_diffusers_load_textual_inversion",
    "tests/test_personalise.py::test_lora_round_trip_and_unload_restore_exact_outputs",  # peft 0.18, diffusers 0.39
    "tests/test_personalise.py::test_lora_on_every_layer_round_trips_whole",
]


def run_on_lowest() -> subprocess.CompletedProcess:
    """LOWEST_TESTS under the overlay's python (its own pytest session: its own sandboxed outputs/ and HF_HOME)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(overlay()), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-x", *LOWEST_TESTS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )


def start_early(items) -> None:
    """Build the overlay (network) and run the tests on it in the background, beside the CPU-bound tests."""
    if overlay_is_current() or background.registry_reachable():
        background.start(
            "lowest-overlay", build_overlay if not overlay_is_current() else lambda: OVERLAY / "bin" / "python"
        )
        if background.selected(items, "test_clip_and_pipeline_tests_pass_on_the_lowest_versions"):
            background.start("lowest-run", run_on_lowest)


@pytest.fixture(scope="module")
def overlay_python(request) -> Path:
    if not overlay_is_current() and not background.started("lowest-overlay"):
        request.getfixturevalue("package_registry")  # skips where pypi.org is unreachable
    return overlay()


def _versions(py: Path) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    out = subprocess.check_output([str(py), "-c", code, *lowest_pins()], text=True)
    return json.loads(out)


def test_overlay_holds_exactly_the_lower_bounds(overlay_python):
    got = _versions(overlay_python)
    for name, version in lowest_pins().items():
        assert got[name].split("+")[0] in (version, version + ".0", version + ".0.0"), (name, got[name], version)


def test_clip_and_pipeline_tests_pass_on_the_lowest_versions(overlay_python):
    run = background.result("lowest-run", run_on_lowest)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and " failed" not in run.stdout, tail
