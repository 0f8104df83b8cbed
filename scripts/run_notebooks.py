"""The main job: execute every notebook headless (offline model on CPU, or the real model on a GPU) and
keep the executed copies and every generated image under outputs/.

    make run                                   # all notebooks
    .venv/bin/python scripts/run_notebooks.py 01 02   # only notebooks whose name starts with these

Executed notebooks go to a new folder outputs/notebooks/<timestamp>/ (nothing from an earlier run is
touched); images are written by the notebooks themselves through helpers.saving (new run folders).
Cells tagged `skip-execution` (Colab installs, login) are skipped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.paths import OUTPUTS_DIR  # noqa: E402
from helpers.saving import new_run_dir  # noqa: E402


def main(prefixes: list[str], folder: Path = ROOT / "notebooks") -> int:
    notebooks = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(prefixes))]
    if not notebooks:
        print(f"No notebooks match {prefixes}.")
        return 2
    out_dir = new_run_dir("notebooks", root=OUTPUTS_DIR / "notebooks")
    before = {p for p in OUTPUTS_DIR.rglob("*.png")}
    failed, t_all = [], time.time()
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=1200,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            # the kernel listens on localhost only; its "TCP without encryption" warning would bury our summary
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        t0 = time.time()
        try:
            client.execute()
            status = "ok"
        except Exception as err:  # keep going: run every notebook, report all failures
            status = f"FAILED: {type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"
            failed.append(path.name)
        target = out_dir / path.name
        nbformat.write(nb, target)
        print(f"{path.name:<32} {time.time() - t0:6.1f}s  {status}", flush=True)
    new_images = sorted(p for p in OUTPUTS_DIR.rglob("*.png") if p not in before)
    folders = sorted({p.parent for p in new_images})
    print(f"\nDone in {time.time() - t_all:.0f}s.")
    print(f"Executed notebooks: {out_dir}")
    print(
        f"New images: {len(new_images)} PNGs (with metadata) in {len(folders)} folder{'s' if len(folders) != 1 else ''} under {OUTPUTS_DIR}:"
    )
    for folder in folders:
        print(f"  {folder.relative_to(OUTPUTS_DIR)}  ({sum(1 for p in new_images if p.parent == folder)} images)")
    if failed:
        print(f"\nFailed: {', '.join(failed)}: open the executed copies above to see where.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
