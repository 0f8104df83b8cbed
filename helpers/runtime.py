"""Where is this notebook running? Colab and Gradient get their install and login cells; a laptop never blocks.

`hosted_notebook()` answers from facts each service sets, not from cell tags (tags only tell CI what to skip):

- Colab: the `google.colab` package is importable, or `COLAB_RELEASE_TAG` is set (Colab sets it in every runtime);
- Paperspace Gradient: a `PAPERSPACE_*` variable is set (Gradient notebooks export several, e.g. the notebook's
  id and cluster), or both of its fixed folders `/notebooks` and `/storage` exist.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # the parent package is missing, or a stand-in module has no spec
        return False


def hosted_notebook(environ: dict[str, str] | None = None, root: Path = Path("/")) -> str | None:
    """'colab', 'gradient', or None on any other machine (a laptop, CI)."""
    env = os.environ if environ is None else environ
    if env.get("COLAB_RELEASE_TAG") or (environ is None and _importable("google.colab")):
        return "colab"
    if any(k.startswith("PAPERSPACE_") for k in env) or ((root / "notebooks").is_dir() and (root / "storage").is_dir()):
        return "gradient"
    return None


def should_log_in(needs_hub: bool, environ: dict[str, str] | None = None, root: Path = Path("/")) -> tuple[bool, str]:
    """Run the Hub login cell? Only on Colab/Gradient and only when the model comes from the Hub.

    On a laptop "Run all" must never stop at a hidden token prompt: there the offline model needs no Hub, and a
    learner who wants the Hub runs `python login.py` once in a terminal.
    """
    where = hosted_notebook(environ, root)
    if not needs_hub:
        return False, "the model runs offline from a local folder, so no Hugging Face login is needed"
    if where is None:
        return False, (
            "not on Colab or Gradient: to use the Hub from this machine, run `python login.py` once in a terminal "
            "(or set HF_TOKEN), then rerun this notebook"
        )
    return True, f"on {where.title()} with a Hub model: log in once (a hidden prompt, or an HF_TOKEN secret)"


def log_in_if_needed(model) -> str:
    """The notebooks' login cell: log in to the Hub only where `should_log_in` says so; return the reason.

    `model` is a Hub id or a local folder (a folder needs no Hub). On Colab/Gradient with a Hub model this runs
    `login.main()` (a hidden prompt, or the HF_TOKEN secret); anywhere else it only explains why it did nothing.
    """
    log_in, why = should_log_in(needs_hub=not Path(str(model)).expanduser().is_dir())
    if log_in:
        import login

        login.main()
    return why
