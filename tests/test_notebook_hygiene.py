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


def test_install_cells_are_skipped_in_ci():
    for path in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and ("%pip" in cell.source or "login" in cell.source.split("\n")[0]):
                tags = cell.metadata.get("tags", [])
                if "%pip" in cell.source:
                    assert "nbval-skip" in tags and "skip-execution" in tags, (path.name, cell.source[:60])
