"""Notebooks are committed without outputs, each paired with an identical py:percent twin."""

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "scripts" / "sync_notebooks.py")
sync = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sync)


def test_every_notebook_has_a_twin_is_in_sync_and_has_no_outputs():
    assert sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")), "no notebooks found"
    assert sync.problems() == []


def test_notebooks_have_summary_exercises_and_self_checks():
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "## Summary" in md and "## Exercises" in md, path.name
        assert "assert " in code, f"{path.name} has no self-check cell"


def _meta():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["urls"]["Homepage"], project["version"]


def _install_cells(path):
    """The Colab/Gradient install cell: the only cell that runs pip."""
    cells = nbformat.read(path, as_version=4).cells
    return [c for c in cells if c.cell_type == "code" and '"pip", "install"' in c.source]


def test_one_install_cell_per_notebook_skipped_in_ci():
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        (cell,) = _install_cells(path)
        tags = cell.metadata.get("tags", [])
        assert "nbval-skip" in tags and "skip-execution" in tags, path.name


def test_badges_and_install_cells_name_the_project_url_and_this_release():
    """pyproject's [project.urls] and version are the one place; every notebook's badge and install cell follow."""
    home, version = _meta()
    assert home.startswith("https://github.com/")
    repo_path = home.removeprefix("https://github.com/")
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        text = path.read_text()
        badge = f"https://colab.research.google.com/github/{repo_path}/blob/main/notebooks/{path.name}"
        assert badge in text, (path.name, "Colab badge must open this notebook in this repo")
        (cell,) = _install_cells(path)
        assert f'"sd-step-by-step @ git+{home}@v{version}"' in cell.source, path.name
        assert "github.com" not in text.replace(home, "").replace(
            f"colab.research.google.com/github/{repo_path}", ""
        ), (
            path.name,
            "another GitHub URL",
        )


def test_install_cell_installs_the_release_only_where_helpers_is_missing(monkeypatch):
    """Run each install cell with pip faked: where `helpers` imports it does nothing; elsewhere it installs
    this release's wheel (which carries the models and configs) with the current Python."""
    import importlib.util
    import subprocess
    import sys

    home, version = _meta()
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check=False, **kw: calls.append(cmd))
    real_find_spec = importlib.util.find_spec
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        (cell,) = _install_cells(path)
        calls.clear()
        exec(compile(cell.source, path.name, "exec"), {})
        assert calls == [], path.name  # here helpers is installed (make setup)
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "helpers" else real_find_spec(name, *a)
        )
        exec(compile(cell.source, path.name, "exec"), {})
        monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
        (pip,) = calls
        assert pip == [sys.executable, "-m", "pip", "install", "-q", f"sd-step-by-step @ git+{home}@v{version}"]


def test_login_runs_only_on_hosted_notebooks_with_a_hub_model(tmp_path):
    from helpers.runtime import hosted_notebook, should_log_in

    laptop = {"HOME": "/home/student"}
    assert hosted_notebook(laptop, root=tmp_path) is None
    assert hosted_notebook({"COLAB_RELEASE_TAG": "release-colab_2026"}, root=tmp_path) == "colab"
    assert hosted_notebook({"PAPERSPACE_NOTEBOOK_ID": "x"}, root=tmp_path) == "gradient"
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "storage").mkdir()
    assert hosted_notebook(laptop, root=tmp_path) == "gradient"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert should_log_in(True, laptop, root=empty)[0] is False  # a laptop never waits on a token prompt
    assert "login.py" in should_log_in(True, laptop, root=empty)[1]
    assert should_log_in(False, {"COLAB_RELEASE_TAG": "r"}, root=empty)[0] is False  # offline model: no Hub
    assert should_log_in(True, {"COLAB_RELEASE_TAG": "r"}, root=empty)[0] is True
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            assert "login.main()" not in cell.source, (path.name, "log in through helpers.runtime.log_in_if_needed")


def test_log_in_if_needed_calls_login_only_where_should_log_in_says(monkeypatch, tmp_path):
    import login
    from helpers import runtime

    calls = []
    monkeypatch.setattr(login, "main", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(runtime, "hosted_notebook", lambda environ=None, root=None: None)  # a laptop
    assert "login.py" in runtime.log_in_if_needed("CompVis/stable-diffusion-v1-4") and calls == []
    monkeypatch.setattr(runtime, "hosted_notebook", lambda environ=None, root=None: "colab")
    assert "no Hugging Face login is needed" in runtime.log_in_if_needed(tmp_path) and calls == []  # a folder
    assert "Colab" in runtime.log_in_if_needed("CompVis/stable-diffusion-v1-4") and calls == [()]


def test_lesson_order_and_openings():
    """Use first (01), look inside (02), then the theory (03), edit images (04), teach the model a new word (05),
    rank with CLIP (06), the studio (07). Each notebook opens with what the learner will be able to do."""
    names = [p.stem for p in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))]
    assert names == [
        "01_generate", "02_inside_the_pipeline", "03_diffusion_theory", "04_image_editing", "05_new_words",
        "06_clip_ranking", "07_prompt_studio",
    ]  # fmt: skip
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        first = next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        assert "What you will be able to do" in first, path.name
