"""A classroom wheelhouse: every wheel `make setup` installs, in one folder a teacher copies to a USB stick.

    make wheelhouse                                        # -> wheelhouse/ (git-ignored)
    .venv/bin/python scripts/build_wheelhouse.py --out DIR # another folder

What goes in:
  1. every wheel pinned in requirements.lock, for *this* platform and Python (`pip download --no-deps`);
  2. torch, from where scripts/torch_source.py says (a local wheel, PyTorch's CPU index, or PyPI);
  3. this project's own wheel (`python -m build --wheel`), which carries the offline models and configs;
  4. requirements.txt (the pins it holds, torch aside) and manifest.json (platform tag, Python, sizes, sha256).

On a laptop in the classroom, with the folder next to the clone (or SD_WHEELHOUSE=<dir>), `make setup`
installs from it with `pip --no-index --find-links <dir>`: no network at all (scripts/setup.sh).
The wheels are for one platform and one Python (the manifest says which): build it on a machine like the
students' laptops (same OS, CPU architecture and Python minor version).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from torch_source import choose_torch_source, has_nvidia_driver  # noqa: E402

#: Only notebook 06 (CLIP ranking with Flax and jax.pmap) needs these: 113 of 515 MB (22%), against torch's 191 MB.
#: No "small" wheelhouse without them: the project requires jax and flax, so `pip check` would fail on every laptop.
JAX_ONLY = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "treescope", "chex", "ml-dtypes"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path = ROOT / "requirements.lock") -> list[str]:
    """The `name==version` lines of the lock, in order."""
    return [line.strip() for line in lock.read_text().splitlines() if re.match(r"^[A-Za-z0-9].*==", line.strip())]


def lock_digest(lock: Path = ROOT / "requirements.lock", pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The same digest scripts/setup.sh stamps its venv with: a wheelhouse is stale when this changes."""
    return hashlib.sha256(lock.read_bytes() + pyproject.read_bytes()).hexdigest()[:16]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def platform_tags(files: list[Path]) -> list[str]:
    """The platform tags of the binary wheels (e.g. manylinux_2_28_x86_64): a laptop's pip must accept each."""
    tags = {t for f in files for t in f.stem.split("-")[-1].split(".")}
    return sorted(tags - {"any"})


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"[wheelhouse] failed: {' '.join(cmd)}\n{run.stderr[-3000:]}")


def download_torch(pin: str, out: Path) -> str:
    """torch from where `make setup` would take it on this machine; returns the reason printed."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-index", "-d", str(out), pin],
        capture_output=True,
    )
    src = choose_torch_source(platform.system(), has_nvidia_driver(), probe.returncode == 0, dict(os.environ))
    if src.kind != "local":  # the local probe already put it in `out`
        # PyPI's CUDA build needs its nvidia-* wheels too: then let pip resolve torch's own dependencies
        pip("download", "-q", *(() if src.with_deps else ("--no-deps",)), *src.pip_args, "-d", str(out), pin)
    return src.reason


def build(out: Path) -> dict:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()  # a rebuild never mixes versions
    pins = locked_pins()
    torch_pin = next(p for p in pins if canonical(p.split("==")[0]) == "torch")
    others = [p for p in pins if p != torch_pin]
    reqs = out / "requirements.txt"
    reqs.write_text("\n".join(others) + "\n")
    print(f"[wheelhouse] {len(others)} locked wheels (--no-deps, this platform) ...", flush=True)
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out), "-r", str(reqs))
    print(f"[wheelhouse] torch: {download_torch(torch_pin, out)}", flush=True)
    print("[wheelhouse] the project's own wheel (with the offline models and configs) ...", flush=True)
    run = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"[wheelhouse] python -m build failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    files = sorted(out.glob("*.whl"))
    manifest = {
        "made_by": "scripts/build_wheelhouse.py",
        "interpreter": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "python": platform.python_version(),
        "platform_tags": platform_tags(files),
        "system": f"{platform.system()} {platform.machine()}",
        "lock_digest": lock_digest(),
        "jax_flax_bytes": sum(f.stat().st_size for f in files if canonical(f.name.split("-")[0]) in JAX_ONLY),
        "total_bytes": sum(f.stat().st_size for f in files),
        "files": [{"name": f.name, "bytes": f.stat().st_size, "sha256": sha256(f)} for f in files],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    mb = manifest["total_bytes"] / 1e6
    print(f"[wheelhouse] {len(files)} wheels, {mb:.0f} MB, in {time.time() - t0:.0f} s -> {out}")
    print(f"[wheelhouse] for Python {manifest['python']} on {manifest['system']}: copy the folder next to the")
    print("[wheelhouse] clone on each laptop (or SD_WHEELHOUSE=<dir>), then `make setup` installs without network.")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    args = parser.parse_args(argv)
    build(args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
