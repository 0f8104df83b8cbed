"""Session-wide test setup: no Hub, no writes to the real outputs/ or ~/.cache/huggingface.

The environment is set here, at import time, because `helpers.paths` reads `SD_TUTORIAL_OUTPUTS`
when it is first imported and `huggingface_hub` reads `HF_HOME`/`HF_HUB_OFFLINE` when it is first
imported. pytest imports this file before any test module, so every test (and every notebook kernel
that nbval starts from this process) sees the same sandbox.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_SANDBOX = Path(tempfile.mkdtemp(prefix="sd-tutorial-tests-"))
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)

os.environ["HF_HUB_OFFLINE"] = "1"  # a test that tries the Hub fails at once instead of hanging
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = str(_SANDBOX / "hf-home")  # never read or write the real ~/.cache/huggingface
os.environ["SD_TUTORIAL_OUTPUTS"] = str(_SANDBOX / "outputs")  # tests never litter the real outputs/
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SD_MODEL", "SD_DEVICE", "SD_CPU_DTYPE"):
    os.environ.pop(_name, None)  # the developer's own settings must not change what tests see

if "helpers.paths" in sys.modules:  # pragma: no cover - only if a plugin imported helpers first
    raise RuntimeError("helpers was imported before tests/conftest.py could sandbox SD_TUTORIAL_OUTPUTS")

import pytest  # noqa: E402
import torch  # noqa: E402

import helpers  # noqa: E402,F401  (quiet library logging before diffusers is imported)


def pytest_collection_finish(session):
    """Start each selected module's slow set-up now: `start_early(items)` with its selected tests (tests/background.py)."""
    if session.config.option.collectonly:
        return
    by_module: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "start_early"):
            by_module.setdefault(module, []).append(item)
    for module, items in by_module.items():
        module.start_early(items)


def pytest_collection_modifyitems(session, config, items):
    """tests/test_site.py builds its pages from the notebooks nbval executes in this same session, so it runs last.
    (Running the tests that wait for background work last too was measured slower: 27.2 min against 23.8 for the
    whole fresh-clone `make test`, the session's own CPU-heavy tests then competing with that work.)"""
    site = [item for item in items if item.path.name == "test_site.py"]
    if site:
        items[:] = [item for item in items if item.path.name != "test_site.py"] + site


@pytest.fixture
def single_thread():
    """Run a test on one torch thread. For the tiny model's small tensors this is faster on any machine, and
    on a busy 2-core machine much faster (threads waiting on each other made one 64 px image take 9 s, not 0.2 s).
    Use it with `pytestmark = pytest.mark.usefixtures("single_thread")`; big-model tests keep every thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sandbox() -> Path:
    """The session's temporary folder (outputs/ and HF_HOME live inside it)."""
    return _SANDBOX


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weight StableDiffusionPipeline, saved to a folder (built once, then reused)."""
    from helpers.offline import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """One tiny pipeline (fp32, CPU) for the whole session. Tests that change it must undo the change;
    tests that need to break it should use `fresh_tiny_pipe`."""
    from helpers.pipeline import load_pipeline

    # scheduler=None keeps the model's own PNDM (SD v1-4's): the tests below count its steps
    pipe = load_pipeline(tiny_model_dir, device="cpu", dtype=torch.float32, scheduler=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh_tiny_pipe(tiny_pipe):
    """A private copy of the tiny pipeline (shares no modules with `tiny_pipe`): free to modify."""
    import copy

    from diffusers import StableDiffusionPipeline

    components = {k: copy.deepcopy(v) for k, v in tiny_pipe.components.items()}
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.register_to_config(_name_or_path=tiny_pipe.name_or_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def package_registry() -> None:
    """Skip (with the reason) where pypi.org cannot be reached: resolution and installs need the registry."""
    import background

    if not background.registry_reachable():
        pytest.skip("the package registry (pypi.org) is unreachable from here")
