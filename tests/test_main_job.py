"""The main job (`make run` -> scripts/run_notebooks.py): executes notebooks headless, keeps every executed copy
and every image, says where they went, and a second run loses nothing from the first.

Run here on two small notebooks (the real ones run under nbval in this same suite) so it takes seconds."""

from __future__ import annotations

import hashlib
import importlib.util

import nbformat
import pytest

from helpers.paths import OUTPUTS_DIR, REPO_ROOT


def _load_main_job():
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO_ROOT / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = """\
import torch
from helpers.offline import ensure_tiny_model
from helpers.pipeline import generate, load_pipeline
from helpers.saving import save_images
pipe = load_pipeline(ensure_tiny_model(), device="cpu", dtype=torch.float32)
result = generate(pipe, "a red circle on a blue background", n_images=2, num_inference_steps=2, show_progress=False)
paths = save_images(result.images, result.records)
assert len(paths) == 2
"""


def _notebook(folder, name, *sources, tags=()):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": list(tags)}) for src in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / name)


def _pngs():
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in OUTPUTS_DIR.rglob("*.png")}


def _run_folders():
    folder = OUTPUTS_DIR / "notebooks"
    return set(folder.iterdir()) if folder.exists() else set()


@pytest.fixture(scope="module")
def job():
    return _load_main_job()


def test_two_runs_keep_every_image_and_every_executed_notebook(job, tmp_path, capsys):
    _notebook(tmp_path, "01_generate.ipynb", GENERATE)
    _notebook(tmp_path, "02_skipped_install.ipynb", "raise SystemExit('Colab only')", "x = 1", tags=("skip-execution",))
    before, folders_before = _pngs(), _run_folders()

    assert job.main([], folder=tmp_path) == 0
    first, folders_first = _pngs(), _run_folders()
    out = capsys.readouterr().out
    assert "01_generate.ipynb" in out and "ok" in out and "New images: 2 PNGs" in out
    assert job.main([], folder=tmp_path) == 0
    second = _pngs()
    out2 = capsys.readouterr().out

    made_first = {p: h for p, h in first.items() if p not in before}
    assert len(made_first) == 2
    assert all(second[p] == h for p, h in made_first.items())  # the second run touched none of the first's images
    assert len(second) - len(first) == 2 and "New images: 2 PNGs" in out2
    (run1,), (run2,) = folders_first - folders_before, _run_folders() - folders_first  # one new folder per run
    executed = [nbformat.read(r / "01_generate.ipynb", as_version=4) for r in (run1, run2)]
    assert all(nb.cells[0].execution_count == 1 for nb in executed)  # both executed copies kept, with outputs
    assert f"Executed notebooks: {run1}" in out and f"Executed notebooks: {run2}" in out2  # it says where they went


def test_a_failing_notebook_is_reported_the_rest_still_runs(job, tmp_path, capsys):
    _notebook(tmp_path, "01_broken.ipynb", "1 / 0")
    _notebook(tmp_path, "02_fine.ipynb", "print('fine')")
    assert job.main([], folder=tmp_path) == 1
    out = capsys.readouterr().out
    assert "01_broken.ipynb" in out and "FAILED: CellExecutionError" in out
    assert "02_fine.ipynb" in out and "Failed: 01_broken.ipynb" in out
    assert job.main(["09"], folder=tmp_path) == 2  # no notebook matches the prefix
