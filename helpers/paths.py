"""Where things live on disk: the repo, the cache that setup fills, and `outputs/`.

Every path can be moved with an environment variable, so a notebook opened on Colab (where the
repo is pip-installed, not cloned) still has somewhere sensible to write.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: True in a git checkout; False when helpers was pip-installed (e.g. on Colab from a git tag).
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").exists()
_BASE = REPO_ROOT if IN_CHECKOUT else Path.cwd()

#: Build artefacts made by `scripts/setup.sh` (tokenizer files, offline models). Never committed.
CACHE_DIR = Path(os.environ.get("SD_TUTORIAL_CACHE", _BASE / ".cache"))

#: Everything a run produces: images, manifests, executed notebooks, benchmark results.
OUTPUTS_DIR = Path(os.environ.get("SD_TUTORIAL_OUTPUTS", _BASE / "outputs"))

#: Where the data the package reads lives: beside `helpers/` in a checkout, inside the installed package
#: otherwise (the wheel carries `models/` and `configs/` as package data of `helpers`, see pyproject.toml).
_DATA_ROOT = REPO_ROOT if IN_CHECKOUT else Path(__file__).resolve().parent

#: The trained offline family (toy SD, toy CLIP, shape judge), committed in the repo and shipped in the wheel.
MODELS_DIR = _DATA_ROOT / "models"

#: Model configs kept in the repo (the public SD v1-4 and CLIP ViT-B/32 configs).
CONFIGS_DIR = _DATA_ROOT / "configs"

#: The committed benchmark results (`benchmarks/results/*.json`) that the notebooks quote and check; the wheel
#: carries them too (package data `helpers.results`), so a notebook on Colab reads the same figures.
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" if IN_CHECKOUT else Path(__file__).resolve().parent / "results"
