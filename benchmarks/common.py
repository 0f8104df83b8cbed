"""What every benchmark shares: machine info, a markdown table, a JSON results file, `--smoke`.

Each script in `benchmarks/`:

- measures its rows side by side in ONE run (machines here differ 3x from one session to the next,
  so only ratios within a run, or fractions of a peak measured in the same run, mean anything);
- prints a markdown table (paste it into the README as is);
- writes the same numbers, the machine (CPU model, cores, GPU, library versions, date, load) and
  its arguments to `outputs/benchmarks/<name>-<timestamp>.json` (`load_results(name)` reads them back);
- has `--smoke`: tiny sizes and one repeat, so the test suite runs every script and none rots.
  Smoke numbers mean nothing; the JSON says `"smoke": true`.

Run them as scripts from the repo root, e.g. `python benchmarks/unet_cpu.py --smoke`; the script's
own folder is on `sys.path`, so `import common` finds this file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import helpers  # noqa: F401  (quiet diffusers/transformers logs before they are imported)
from helpers.cpu_speed import cpu_model_name
from helpers.paths import OUTPUTS_DIR, REPO_ROOT
from helpers.saving import scrub_paths


def _quiet_progress_bars() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars would drown the tables


_quiet_progress_bars()

RESULTS_SUBDIR = "benchmarks"
#: CPU flags that decide which precisions run natively (bf16 matmuls, int8 dot products, fp16 math).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")
#: Environment variables that change CPU speed (OpenMP waiting, thread counts, oneDNN/MKL switches).
ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "ONEDNN_", "DNNL_", "TORCHINDUCTOR_")
VERSION_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "numpy", "huggingface_hub")


def results_dir() -> Path:
    """`outputs/benchmarks/` (moves with `SD_TUTORIAL_OUTPUTS`, as the test suite does)."""
    return OUTPUTS_DIR / RESULTS_SUBDIR


# ---------------------------------------------------------------------------------------------- machine


def cpu_flags() -> dict[str, bool]:
    """Which of `CPU_FLAGS` this CPU reports (all False where /proc/cpuinfo does not exist).

    Recorded with each result so a table names the machine exactly; decisions use torch's own queries
    (`helpers.cpu_speed.cpu_features`), which work on every OS.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    return {f: f in flags for f in CPU_FLAGS}


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask: containers often allow fewer than the host has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def gpu_name() -> str | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def performance_env() -> dict[str, str]:
    """The thread and kernel settings of the environment (`ENV_PREFIXES`). A value that is a path (torch sets
    TORCHINDUCTOR_CACHE_DIR to /tmp/torchinductor_<user name>) is recorded as "<path>": it says nothing about speed,
    and results get shared."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    return {k: "<path>" if os.sep in v or (os.altsep and os.altsep in v) else v for k, v in env.items()}


def machine_info() -> dict[str, Any]:
    """Everything needed to tell two results files' machines apart (no host names, no user names)."""
    import torch

    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    try:
        load = list(os.getloadavg())  # > cores means other work shared the machine during the run
    except (OSError, AttributeError):
        load = None
    return {
        "cpu_model": cpu_model_name(),
        "cpu_cores": usable_cores(),
        "cpu_count_os": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "gpu": gpu_name(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "load_average": load,
        "env": performance_env(),
        "versions": library_versions(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line for a table caption: 'Intel(R) Xeon(R) Processor, 2 cores, no GPU, torch 2.13.0, load 2.9'."""
    gpu = info.get("gpu") or "no GPU"
    start, end = info.get("load_average"), info.get("load_average_end")
    load_txt = f", 1-min load average {start[0]:.1f} at start" if start else ""
    load_txt += f" and {end[0]:.1f} at end" if start and end else ""
    return (
        f"{info['cpu_model']}, {info['cpu_cores']} cores, {gpu}, torch {info['versions'].get('torch', '?')}, "
        f"diffusers {info['versions'].get('diffusers', '?')}, {info['date'][:10]}{load_txt}"
    )


# ------------------------------------------------------------------------------------------------ args


def parser(description: str) -> argparse.ArgumentParser:
    """The shared flags: `--smoke` (tiny sizes, one repeat, for tests), `--out`, `--threads`."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and one repeat: checks the code path only")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default outputs/benchmarks/)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    return ap


def apply_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, sync: Callable[[], Any] | None = None):
    """Run `fn` `warmup` times untimed, then `repeats` times; return the list of seconds."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        seconds.append(time.perf_counter() - t0)
    return seconds


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


# ------------------------------------------------------------------------------------------- reporting


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01 or value == 0:
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    return str(value).replace("|", "\\|")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | Mapping[str, str],
    formats: Mapping[str, str] | None = None,
) -> str:
    """A GitHub markdown table. `columns` is a list of keys, or {key: header}; `formats` maps a key
    to a format string such as "{:.0%}" (other numbers get 3 significant digits)."""
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    formats = dict(formats or {})

    def cell(row, key):
        value = row.get(key)
        if key in formats and isinstance(value, (int, float)) and not isinstance(value, bool):
            return formats[key].format(value)
        return _fmt(value)

    lines = [
        "| " + " | ".join(headers.values()) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(row, k) for k in headers) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    out_dir: Path | str | None = None,
) -> Path:
    """Write `{name, smoke, machine, args, rows, ...extra}` to `<out_dir>/<name>-<timestamp>.json`.

    Atomic and never overwriting: a temp file is hard-linked to a free name (`...-2.json` if taken).
    """
    args_dict = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    payload = {
        "name": name,
        "smoke": bool(args_dict.get("smoke", False)),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": dict(machine) if machine else machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args_dict.items()},
        "rows": [dict(r) for r in rows],
        **dict(extra or {}),
    }
    payload = scrub_paths(payload)  # results get shared: the project's absolute path and the home folder go
    out_dir = Path(out_dir) if out_dir else results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)
    try:
        for i in range(1000):
            path = out_dir / (f"{name}-{stamp}.json" if i == 0 else f"{name}-{stamp}-{i + 1}.json")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise RuntimeError(f"No free results file name for {name} in {out_dir}")
    finally:
        os.unlink(tmp)


def load_results(name: str, out_dir: Path | str | None = None, smoke: bool | None = False) -> list[dict]:
    """Every results file of benchmark `name`, oldest first (`smoke=None`: smoke runs too)."""
    out_dir = Path(out_dir) if out_dir else results_dir()
    found = []
    for path in sorted(out_dir.glob(f"{name}-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("name") == name and (smoke is None or data.get("smoke") == smoke):
            found.append({**data, "path": str(path)})
    return found


def report(
    name: str,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | Mapping[str, str],
    args: argparse.Namespace,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    formats: Mapping[str, str] | None = None,
) -> Path:
    """Print the markdown table (with the machine and notes under it) and write the JSON file.

    Pass `machine=machine_info()` taken when the run started; the load average at the end is added.
    """
    machine = dict(machine) if machine else machine_info()
    try:
        machine["load_average_end"] = list(os.getloadavg())
    except (OSError, AttributeError):
        pass
    print(f"\n### {title}{' (SMOKE: tiny sizes, numbers mean nothing)' if args.smoke else ''}\n")
    print(markdown_table(rows, columns, formats))
    print(f"\nMachine: {describe_machine(machine)}.")
    for note in scrub_paths(list(notes)):
        print(f"- {note}")
    extra = {**dict(extra or {}), "notes": list(notes)} if notes else extra
    path = write_results(name, rows, args=args, machine=machine, extra=extra, out_dir=args.out)
    try:
        shown = path.relative_to(REPO_ROOT)
    except ValueError:
        shown = path
    print(f"\nResults: {shown}")
    return path
