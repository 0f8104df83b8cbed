"""Keep each notebook pair in sync: the py:percent twin (`notebooks/NN_x.py`) is the source we edit
and review; the `.ipynb` (what Colab opens) is written from it, with no outputs.

    python scripts/sync_notebooks.py            # write every .ipynb from its .py
    python scripts/sync_notebooks.py --check    # exit 1 if any pair differs or an .ipynb has outputs
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def cells_of(nb) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


def has_outputs(nb) -> bool:
    return any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def problems() -> list[str]:
    out = []
    for py in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.exists():
            out.append(f"{ipynb.name} is missing: run `make sync-notebooks`")
            continue
        stored = nbformat.read(ipynb, as_version=4)
        if has_outputs(stored):
            out.append(f"{ipynb.name} carries outputs: run `make sync-notebooks` to strip them")
        if cells_of(stored) != cells_of(jupytext.read(py)):
            out.append(f"{ipynb.name} differs from {py.name}: edit the .py, then run `make sync-notebooks`")
    for ipynb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            out.append(f"{ipynb.name} has no py:percent twin")
    return out


def write_all() -> None:
    for py in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        nb = jupytext.read(py)
        for i, cell in enumerate(nb.cells):
            # stable ids (from position and text), so re-syncing an unchanged notebook changes nothing
            cell.id = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:8]
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("jupytext", None)  # the pairing lives in the .py header
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        nbformat.write(nb, py.with_suffix(".ipynb"))
        print(f"wrote {py.with_suffix('.ipynb').relative_to(NOTEBOOKS.parent)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    if ap.parse_args().check:
        found = problems()
        print("\n".join(found) or "notebooks in sync, no outputs")
        sys.exit(1 if found else 0)
    write_all()
