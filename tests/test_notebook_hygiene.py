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


def _install_cells(path):
    """The Colab/Gradient cells: the repo install and the Hub login."""
    cells = nbformat.read(path, as_version=4).cells
    return [c for c in cells if c.cell_type == "code" and ('"clone"' in c.source or "login.main()" in c.source)]


def test_install_cells_are_skipped_in_ci():
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        cells = _install_cells(path)
        assert sum('"clone"' in c.source for c in cells) == 1, (path.name, "expected one install cell")
        for cell in cells:
            tags = cell.metadata.get("tags", [])
            assert "nbval-skip" in tags and "skip-execution" in tags, (path.name, cell.source[:60])


def test_install_cell_clones_the_release_tag_only_where_the_repo_is_absent(tmp_path, monkeypatch):
    """Run each notebook's install cell with subprocess faked: beside the repo it does nothing; elsewhere it
    clones this version's tag, pip-installs it editable and makes it importable without a restart."""
    import re
    import subprocess
    import sys

    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check=False, **kw: calls.append(cmd))
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        (install,) = [c.source for c in _install_cells(path) if '"clone"' in c.source]
        calls.clear()
        monkeypatch.setattr(sys, "path", list(sys.path))
        monkeypatch.chdir(ROOT / "notebooks")  # a checkout: ../helpers exists
        exec(compile(install, path.name, "exec"), {})
        assert calls == [], path.name
        monkeypatch.chdir(tmp_path)  # Colab: an empty /content
        exec(compile(install, path.name, "exec"), {})
        clone, pip = calls
        assert clone[:2] == ["git", "clone"] and clone[clone.index("--branch") + 1] == f"v{version}", clone
        assert clone[-1].startswith("https://github.com/") and "--depth" in clone
        assert pip[1:] == ["-m", "pip", "install", "-q", "-e", "sd-step-by-step"]
        assert sys.path[0] == str(tmp_path / "sd-step-by-step")
