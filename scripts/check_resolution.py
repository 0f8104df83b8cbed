"""Would installing this package change what a learner's environment already has? Ask pip, without installing.

Two profiles, each a `pip install --dry-run --report` of the package's own ranges (pyproject.toml) plus pins:

- `colab`: Colab's GPU runtime as Colab publishes it (googlecolab/backend-info, pip-freeze.gpu.txt, 2026-08),
  for Python 3.13 on manylinux x86_64. The pins are added as requirements: pip keeps an installed version that
  satisfies every range, so "resolves with Colab's versions pinned" = "installing changes none of them".
- `lowest`: every range at its lower bound (for Python 3.11, as CI runs): the oldest set the ranges admit must
  resolve too, or a lower bound is a lie.

pip runs with this machine's own pip configuration switched off (no local wheel folder, no caps), as on a
learner's machine: `env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null`. Needs the package registry.

    python scripts/check_resolution.py colab lowest   # prints a table per profile; exit 1 if one fails
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

# Colab GPU runtime, 2026-08 (googlecolab/backend-info pip-freeze.gpu.txt): the packages this project touches.
COLAB_GPU = {
    "torch": "2.11.0",
    "transformers": "5.15.0",
    "diffusers": "0.39.0",
    "huggingface_hub": "1.27.0",
    "tokenizers": "0.22.2",
    "jax": "0.7.2",
    "jaxlib": "0.7.2",
    "jax-cuda12-plugin": "0.7.2",
    "jax-cuda12-pjrt": "0.7.2",
    "flax": "0.11.2",
    "optax": "0.2.8",
    "ipywidgets": "7.7.1",
    "numpy": "2.1.3",
    "accelerate": "1.14.0",
    "matplotlib": "3.10.0",
    "safetensors": "0.8.0",
    "scipy": "1.16.3",
}
COLAB_PYTHON = "3.13"
# Colab runs Ubuntu 22.04 (glibc 2.35): every manylinux tag up to 2.35 installs there.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """`name>=X,<Y` -> {name: X}: the oldest version each range admits."""
    out = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", req)
        lo = re.search(r">=\s*([0-9][^,\s]*)", m.group(2))
        if lo:
            out[m.group(1)] = lo.group(1)
    return out


def pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_NO_INDEX")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(pins: dict[str, str], python_version: str) -> tuple[bool, dict[str, str], str]:
    """Dry-run resolution of the project's ranges + `pins`; returns (ok, {name: version}, pip's message)."""
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join([*project_requirements(), *(f"{k}=={v}" for k, v in pins.items())]) + "\n")
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        cmd += ["--report", str(report), "--only-binary=:all:", "--python-version", python_version]
        cmd += ["--implementation", "cp", "--target", str(Path(tmp) / "t")]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        cmd += ["-r", str(reqs)]
        run = subprocess.run(cmd, capture_output=True, text=True, env=pip_env(), timeout=900)
        if run.returncode != 0 or not report.exists():
            return False, {}, (run.stderr or run.stdout).strip()
        data = json.loads(report.read_text())
    versions = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}
    return True, versions, ""


def check(profile: str) -> bool:
    if profile == "colab":
        pins, python_version = COLAB_GPU, COLAB_PYTHON
        title = f"Colab GPU runtime (Python {python_version}): does installing the package change anything?"
    elif profile == "lowest":
        pins, python_version = lower_bounds(project_requirements()), "3.11"
        title = "Every range at its lower bound (Python 3.11): do the lowest versions resolve together?"
    else:
        raise SystemExit(f"unknown profile {profile!r}: use colab and/or lowest")
    print(f"\n## {title}\n")
    ok, versions, message = resolve(pins, python_version)
    if not ok:
        print("pip could not resolve them together, so installing would change (or fail on) these pins:\n")
        print("\n".join(line for line in message.splitlines() if line.strip())[-3000:])
        return False
    print("| package | pinned | resolved | changed |\n|---|---|---|---|")
    changed = []
    for name, version in pins.items():
        got = versions.get(norm(name))
        same = got is None or Version(got) == Version(version)
        changed += [] if same else [name]
        print(f"| {name} | {version} | {got or '(not needed)'} | {'no' if same else 'YES'} |")
    added = sorted(n for n in versions if n not in {norm(k) for k in pins})
    print(f"\nResolved {len(versions)} packages; beyond the pins above it would also need: {', '.join(added)}")
    print("(on Colab most of these are preinstalled too; only the pins above are Colab's published versions)")
    return not changed


def main(argv: list[str]) -> int:
    profiles = argv[1:] or ["colab", "lowest"]
    results = {p: check(p) for p in profiles}
    print("\n" + ", ".join(f"{p}: {'ok' if ok else 'FAILED'}" for p, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
