"""Is bf16 faster than fp32 on this CPU? Decide from a measurement, not a guess, and say why.

On a CPU, bf16 (the top 16 bits of an fp32 number: same range, fewer digits) halves the bytes every
layer moves, and CPUs with AMX (or, on some, AVX512-BF16) multiply bf16 pairs faster than fp32. Then the
Stable Diffusion UNet can run ~1.5-2x faster in bf16. On other CPUs bf16 is emulated or no faster, and
the conversions make it slower. Machines that look alike differ, so `best_cpu_setup()` decides:

1. the latest full `benchmarks/unet_cpu.py` result measured on this CPU model (`outputs/benchmarks/`);
2. with `measure=True`: a micro-benchmark of one SD-sized UNet block (~1-3 s), cached in `.cache/`;
3. the CPU's flags: AMX -> bf16, else fp32. AVX512-BF16 alone is not enough: on this project's
   2-core Xeon VMs (AMX hidden by the hypervisor) bf16 ran *slower* than fp32 (see `from_cpu_flags`).

Only worth it for the real-size model: tiny models (the offline toy family) are dominated by
per-layer overhead, and bf16 makes them no faster (see `benchmarks/unet_cpu.py --smoke`).

    >>> choice = best_cpu_setup()
    >>> print(choice)          # bfloat16 + channels_last: measured 2.1x faster than fp32 ...
    >>> dtype, reason = best_cpu_dtype()
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import CACHE_DIR, OUTPUTS_DIR

MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much to be picked: fp32 is exact, and timings are noisy
CACHE_FILE = CACHE_DIR / "cpu_speed.json"
BENCHMARK_NAME = "unet_cpu"


@dataclass(frozen=True)
class CpuSpeedChoice:
    dtype: torch.dtype  # torch.float32 or torch.bfloat16
    channels_last: bool  # convert the UNet and VAE to channels_last memory format
    reason: str  # one sentence a learner can read
    source: str  # "benchmark", "micro-benchmark" or "cpu flags"
    speedup: float | None = None  # measured speed-up over fp32, when measured

    def __str__(self) -> str:
        name = str(self.dtype).replace("torch.", "") + (" + channels_last" if self.channels_last else "")
        return f"{name}: {self.reason}"


def cpu_model_name() -> str:
    """The CPU's marketing name, which names the machine in benchmark results. torch has no query for it, so
    Linux's /proc/cpuinfo is read (one line, clearer than any library); elsewhere `platform` answers."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> dict[str, object]:
    """What torch itself detects on this CPU (the same checks that pick its kernels), on any OS.

    `capability` is torch's vector level ("AVX512", "AVX2", "DEFAULT" on x86; "NEON"/"SVE256" on ARM);
    the booleans come from torch.cpu's cpuinfo-backed queries (False where this torch build lacks one).
    """

    def ask(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except RuntimeError:
            return False

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": ask("_is_avx512_bf16_supported"),
        "amx": ask("_is_amx_tile_supported"),
        "vnni": ask("_is_vnni_supported"),
    }


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -------------------------------------------------------------------------------------- 1. benchmark file


def from_benchmark(results_dir: Path | str | None = None) -> CpuSpeedChoice | None:
    """The choice the latest full `benchmarks/unet_cpu.py` run on this CPU model supports, if any."""
    folder = Path(results_dir) if results_dir else OUTPUTS_DIR / "benchmarks"
    me = cpu_model_name()
    for path in sorted(folder.glob(f"{BENCHMARK_NAME}-*.json"), reverse=True):  # newest first
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("smoke") or data.get("name") != BENCHMARK_NAME or data["machine"].get("cpu_model") != me:
            continue
        rows = {r["key"]: r for r in data.get("rows", []) if r.get("s_per_step") and r.get("agrees")}
        if "fp32" not in rows:
            continue
        base = rows["fp32"]["s_per_step"]
        candidates = {"fp32": (torch.float32, False), "fp32_cl": (torch.float32, True)}
        candidates |= {"bf16": (torch.bfloat16, False), "bf16_cl": (torch.bfloat16, True)}
        best = min((k for k in candidates if k in rows), key=lambda k: rows[k]["s_per_step"])
        speedup = base / rows[best]["s_per_step"]
        dtype, channels_last = candidates[best]
        date = str(data["machine"].get("date", ""))[:10]
        bf16 = min((rows[k]["s_per_step"] for k in ("bf16", "bf16_cl") if k in rows), default=None)
        bf16_txt = f"bf16 ran at {base / bf16:.2f}x of fp32's speed" if bf16 else "bf16 was not measured"
        if dtype == torch.bfloat16 and speedup < MIN_SPEEDUP:
            dtype, channels_last, speedup = torch.float32, False, 1.0
            why = (
                f"bf16 measured only {base / bf16:.2f}x faster than fp32 on this CPU (< {MIN_SPEEDUP}x), so exact fp32"
            )
        elif dtype == torch.float32:
            layout = " with channels_last" if channels_last else ""
            why = f"fp32{layout} was the fastest for the SD UNet on this CPU ({bf16_txt})"
        else:
            why = f"measured {speedup:.2f}x faster than plain fp32 for the SD UNet on this CPU"
        return CpuSpeedChoice(
            dtype, channels_last, f"{why} ({BENCHMARK_NAME} {date}, {path.name})", "benchmark", round(speedup, 3)
        )
    return None


# ----------------------------------------------------------------------------------- 2. micro-benchmark


def _block(channels: int = 320, size: int = 32, tokens: int = 77, batch: int = 2):
    """One SD-UNet-like block: a 3x3 conv and a cross-attention's projections at SD's widest level."""
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    proj = nn.Linear(channels, channels)
    kv = nn.Linear(768, channels)
    x = torch.randn(batch, channels, size, size)  # (B, C, H, W)
    text = torch.randn(batch, tokens, 768)  # (B, 77, 768) CLIP hidden states

    def run(dtype: torch.dtype, channels_last: bool):
        mods = [copy.deepcopy(m).to(dtype) for m in (conv, proj, kv)]
        h, t = x.to(dtype), text.to(dtype)
        if channels_last:
            mods[0] = mods[0].to(memory_format=torch.channels_last)
            h = h.to(memory_format=torch.channels_last)

        def step():
            y = mods[0](h)  # (B, C, H, W)
            q = mods[1](y.flatten(2).transpose(1, 2))  # (B, H*W, C)
            k = mods[2](t)  # (B, 77, C)
            return torch.nn.functional.scaled_dot_product_attention(q, k, k)

        return step

    return run


def micro_benchmark(repeats: int = 5) -> dict[str, float]:
    """Seconds (best of `repeats`) of one SD-sized block in fp32, bf16, and each with channels_last."""
    run = _block()
    out = {}
    with torch.no_grad():
        for name, dtype, cl in (
            ("fp32", torch.float32, False),
            ("fp32_cl", torch.float32, True),
            ("bf16", torch.bfloat16, False),
            ("bf16_cl", torch.bfloat16, True),
        ):
            step = run(dtype, cl)
            step()  # warm-up: kernel selection, weight reorders
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                best = min(best, time.perf_counter() - t0)
            out[name] = best
    return out


def from_micro_benchmark(
    use_cache: bool = True, cache_file: Path | str | None = None, measure: bool = True
) -> CpuSpeedChoice | None:
    """Measure (or read the cached measurement for this CPU, torch version and thread count).

    With `measure=False` only a cached measurement counts (None when there is none): no time spent.
    """
    cache_file = Path(cache_file) if cache_file is not None else CACHE_FILE
    key = f"{cpu_model_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    cache = {}
    if cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
    times = cache.get(key) if use_cache else None
    if times is None and not measure:
        return None
    if times is None:
        times = micro_benchmark()
        cache[key] = times
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=2), encoding="utf-8")
            tmp.replace(cache_file)
        except OSError:
            pass  # a read-only checkout still gets its answer
    best = min(times, key=times.get)
    speedup = times["fp32"] / times[best]
    if best.startswith("bf16") and speedup < MIN_SPEEDUP:
        best, speedup = ("fp32_cl" if times["fp32_cl"] < times["fp32"] else "fp32"), 1.0
    dtype = torch.bfloat16 if best.startswith("bf16") else torch.float32
    why = f"an SD-sized UNet block ran {speedup:.2f}x faster than plain fp32 in a quick test on this CPU"
    if dtype == torch.float32:
        why = f"bf16 was not faster enough than fp32 in a quick test on this CPU ({times['fp32'] / times['bf16']:.2f}x)"
    return CpuSpeedChoice(dtype, best.endswith("_cl"), why, "micro-benchmark", round(speedup, 3))


# -------------------------------------------------------------------------------------------- 3. flags


def from_cpu_flags() -> CpuSpeedChoice:
    """A guess from the CPU's flags, used only when nothing was measured.

    Only AMX makes bf16 reliably faster. AVX512-BF16 alone is not enough: on a Xeon whose AMX units the
    hypervisor hides, `vdpbf16ps` has the same peak as fp32 FMAs and the conversions make bf16 *slower*
    (measured here: bf16 matmuls at ~0.65x of fp32). So without AMX we keep exact fp32 until measured.
    """
    features = cpu_features()
    if features["amx"]:
        return CpuSpeedChoice(torch.bfloat16, True, "this CPU has AMX bf16 matrix units (not measured)", "cpu flags")
    why = "not measured on this CPU, so exact fp32"
    if features["avx512_bf16"]:
        why += " (it has AVX512-BF16 but no AMX: bf16 may or may not be faster; best_cpu_setup(measure=True) checks)"
    return CpuSpeedChoice(torch.float32, False, why, "cpu flags")


# ----------------------------------------------------------------------------------------------- public


def best_cpu_setup(measure: bool = False, results_dir: Path | str | None = None) -> CpuSpeedChoice:
    """The fastest honest CPU setup for the real-size SD UNet here (see the module docstring)."""
    found = from_benchmark(results_dir) or from_micro_benchmark(measure=measure)
    return found if found is not None else from_cpu_flags()


def measured_cpu_setup(results_dir: Path | str | None = None) -> CpuSpeedChoice | None:
    """What this CPU was *measured* to run fastest (full benchmark, else a cached micro-benchmark); None if never."""
    return from_benchmark(results_dir) or from_micro_benchmark(measure=False)


def best_cpu_dtype(measure: bool = False, results_dir: Path | str | None = None) -> tuple[torch.dtype, str]:
    """(dtype, reason): what `helpers.device.pick_device` can use on CPU."""
    choice = best_cpu_setup(measure, results_dir)
    return choice.dtype, str(choice)


def apply_cpu_setup(pipe, choice):
    """Cast the pipeline to `choice.dtype` and switch the UNet and VAE to channels_last if chosen.

    `choice`: a `CpuSpeedChoice` or a `helpers.device.DeviceChoice` (both have `dtype` and `channels_last`)."""
    pipe = pipe.to(dtype=choice.dtype)
    if choice.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)  # convs read NHWC: oneDNN's native layout
        pipe.vae.to(memory_format=torch.channels_last)
    return pipe
