"""Where `make setup` takes torch from: the right build for this machine, decided before any download.

PyPI's Linux/Windows torch is a CUDA build (~3 GB with its nvidia-* packages); a laptop without an NVIDIA GPU
wants PyTorch's own CPU build (~200 MB), which lives on PyTorch's wheel index, not on PyPI. macOS wheels on
PyPI are already the CPU/Metal build. The decision is a pure function of facts about the machine, so a unit
test can check every branch (tests/test_setup.py) without the network:

    SD_TORCH_INDEX=<url>      -> that index (a mirror, or another CUDA flavour such as .../whl/cu128)
    SD_TORCH=pypi | cpu       -> force PyPI's build or PyTorch's CPU index
    a local wheel is found    -> it (a classroom wheelhouse, or a machine whose pip is set up with one)
    macOS                     -> PyPI
    an NVIDIA driver is seen  -> PyPI (CUDA build, with its nvidia-* dependencies)
    otherwise                 -> PyPI's CPU index https://download.pytorch.org/whl/cpu

Run as a script it prints the decision for scripts/setup.sh, fields split by "|":
`KIND|NO_DEPS(0/1)|pip args...|reason`.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class TorchSource:
    kind: str  # "local", "pypi", "cpu-index", "index"
    pip_args: tuple[str, ...]  # extra pip arguments for `pip install torch==X`
    with_deps: bool  # PyPI's CUDA build needs its nvidia-* packages resolved; the others need nothing new
    reason: str


def has_nvidia_driver(which=shutil.which, proc: Path = Path("/proc/driver/nvidia/version")) -> bool:
    """An NVIDIA driver is installed: `nvidia-smi` on PATH or the kernel module's /proc entry."""
    return which("nvidia-smi") is not None or proc.exists()


def choose_torch_source(system: str, nvidia: bool, local_wheel: bool, env: dict[str, str] | None = None) -> TorchSource:
    env = dict(env or {})
    if env.get("SD_TORCH_INDEX"):
        url = env["SD_TORCH_INDEX"]
        return TorchSource("index", ("--index-url", url), True, f"SD_TORCH_INDEX names the index ({url})")
    forced = env.get("SD_TORCH", "").strip().lower()
    if forced not in ("", "pypi", "cpu"):
        raise ValueError(f"SD_TORCH must be 'pypi' or 'cpu', got {env['SD_TORCH']!r}.")
    if forced == "pypi":
        return TorchSource("pypi", (), True, "SD_TORCH=pypi: PyPI's build (CUDA on Linux/Windows, ~3 GB)")
    if forced == "cpu":
        return TorchSource("cpu-index", ("--index-url", CPU_INDEX), False, "SD_TORCH=cpu: PyTorch's CPU build")
    if local_wheel:
        return TorchSource("local", ("--no-index",), False, "a torch wheel is already on this machine's wheel path")
    if system == "Darwin":
        return TorchSource("pypi", (), True, "macOS: PyPI's torch is the CPU/Metal build")
    if nvidia:
        return TorchSource("pypi", (), True, "an NVIDIA driver is installed: PyPI's CUDA build")
    return TorchSource(
        "cpu-index", ("--index-url", CPU_INDEX), False, "no NVIDIA driver: PyTorch's CPU build (~200 MB, not 3 GB)"
    )


def main(argv: list[str]) -> int:
    local_wheel = len(argv) > 1 and argv[1] == "local"
    src = choose_torch_source(platform.system(), has_nvidia_driver(), local_wheel, dict(os.environ))
    print("|".join([src.kind, "0" if src.with_deps else "1", " ".join(src.pip_args), src.reason]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
