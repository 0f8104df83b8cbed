"""Pick the device and dtype in one call, and say why.

    CUDA GPU   -> fp16  (half the memory of fp32 and the GPU's tensor cores run it fastest)
    Apple MPS  -> fp16
    CPU        -> fp32  (fp16 runs on CPU but ~20x slower); bf16 only where it is measured faster

Also tells Colab and Paperspace Gradient apart from a local machine, so notebooks can skip their
install cells elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "mps" or "cpu"
    dtype: torch.dtype
    platform: str  # "colab", "gradient", "kaggle" or "local"
    reason: str  # one sentence a learner can read
    channels_last: bool = False  # CPU only: run the UNet and VAE in channels_last when measured faster
    measured: bool = False  # CPU only: dtype and layout come from a speed measurement of the full-size SD UNet

    def __str__(self) -> str:
        return f"{self.device} / {self.precision} on {self.platform}: {self.reason}"

    @property
    def precision(self) -> str:
        """'float16', 'bfloat16 + channels_last', ..."""
        return str(self.dtype).replace("torch.", "") + (" + channels_last" if self.channels_last else "")

    def for_unet(self, n_params: int) -> DeviceChoice:
        """This choice for a UNet of `n_params` parameters: a measured CPU speed-up holds for full-size UNets only.

        The measurement (`helpers.cpu_speed`) times SD v1's 860 M-parameter UNet, where bf16 halves the bytes each
        layer moves. A small UNet is dominated by per-layer overhead instead: on a CPU where the full-size UNet ran
        1.86x faster in bf16, the offline toy family ran 1.04x faster (1.11 vs 1.15 s per 50-step image), and bf16
        rounding moved its sliced-attention image by up to 10/255 (`SD_CPU_DTYPE=bf16 python
        scripts/run_notebooks.py 01` prints both, sections 7 and 8). So small models stay on exact fp32, and the
        reason says so.
        """
        if not self.measured or n_params >= MEASURED_SETUP_MIN_PARAMS or self.precision == "float32":
            return self
        return replace(
            self,
            dtype=torch.float32,
            channels_last=False,
            measured=False,
            reason=(
                f"no GPU found; fp32 for this small UNet ({n_params / 1e6:.1f} M parameters): {self.precision} was "
                "measured faster on this CPU only for the full-size 860 M UNet, and small models gain nothing from it"
            ),
        )


#: A measured CPU setup (bf16, channels_last) is applied to UNets at least this big (SD v1's has 860 M parameters).
MEASURED_SETUP_MIN_PARAMS = 100_000_000


def detect_platform() -> str:
    """'colab', 'gradient', 'kaggle' or 'local', from the environment each service sets (helpers.runtime)."""
    from .runtime import hosted_notebook

    where = hosted_notebook()
    if where:
        return where
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "kaggle"
    return "local"


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), as torch detects them."""
    from .cpu_speed import cpu_features

    features = cpu_features()
    return bool(features["avx512_bf16"] or features["amx"])


_CPU_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}


def pick_device(prefer: str | None = None, cpu_dtype: torch.dtype | str | None = None) -> DeviceChoice:
    """Choose (device, dtype). `prefer` forces "cuda", "mps" or "cpu"; `SD_DEVICE` does the same.

    On CPU, `cpu_dtype` (or `SD_CPU_DTYPE`) decides:
      None      -> what was *measured* fastest on this CPU (`benchmarks/unet_cpu.py`'s result for this CPU
                   model, or a cached quick test), else exact fp32: a guess never switches you to bf16;
      "auto"    -> the same, but runs the quick test (`helpers.cpu_speed`, ~1-3 s, cached) when nothing was measured;
      torch.bfloat16 / torch.float32 (or "bf16" / "fp32") -> that dtype.
    The choice's `reason` says which it picked and why.
    """
    prefer = prefer or os.environ.get("SD_DEVICE") or None
    platform = detect_platform()
    if prefer not in (None, "cuda", "mps", "cpu"):
        raise ValueError(f"Unknown device {prefer!r}: use 'cuda', 'mps', 'cpu' or None (auto).")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "No CUDA GPU found. On Colab: Runtime > Change runtime type > GPU. "
            "Or pass device=None to run on CPU with the offline model."
        )
    mps_ok = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if prefer == "mps" and not mps_ok:
        raise ValueError(
            "No Apple GPU (MPS) found: it needs a Mac with Apple silicon and a torch built with MPS. "
            "Or pass device=None to use the best device here."
        )
    if prefer in (None, "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return DeviceChoice("cuda", torch.float16, platform, f"CUDA GPU ({name}) found; fp16 halves memory")
    if prefer in (None, "mps") and mps_ok:
        return DeviceChoice("mps", torch.float16, platform, "Apple GPU (MPS) found; fp16 halves memory")
    return _pick_cpu(cpu_dtype if cpu_dtype is not None else (os.environ.get("SD_CPU_DTYPE") or None), platform)


def _pick_cpu(cpu_dtype, platform: str) -> DeviceChoice:
    if isinstance(cpu_dtype, str) and cpu_dtype.lower() != "auto":
        if cpu_dtype.lower() not in _CPU_DTYPES:
            raise ValueError(f"Unknown CPU dtype {cpu_dtype!r}: use 'auto', 'bf16' or 'fp32' (SD_CPU_DTYPE too).")
        cpu_dtype = _CPU_DTYPES[cpu_dtype.lower()]
    if cpu_dtype == torch.bfloat16:
        why = "bf16 requested" + ("" if cpu_has_bf16() else " (this CPU has no native bf16: it may be slower)")
        return DeviceChoice("cpu", torch.bfloat16, platform, why)
    if cpu_dtype == torch.float32:
        return DeviceChoice("cpu", torch.float32, platform, "no GPU found; fp32 requested")
    if cpu_dtype not in (None, "auto") and not (isinstance(cpu_dtype, str) and cpu_dtype.lower() == "auto"):
        raise ValueError(f"cpu_dtype must be None, 'auto', torch.float32 or torch.bfloat16, got {cpu_dtype!r}.")
    from .cpu_speed import best_cpu_setup, measured_cpu_setup

    auto = isinstance(cpu_dtype, str)
    found = best_cpu_setup(measure=True) if auto else measured_cpu_setup()
    if found is not None and found.source != "cpu flags":
        return DeviceChoice("cpu", found.dtype, platform, f"no GPU found; {found}", found.channels_last, measured=True)
    hint = "" if auto else " (pick_device(cpu_dtype='auto') or SD_CPU_DTYPE=auto measures whether bf16 is faster)"
    return DeviceChoice(
        "cpu", torch.float32, platform, f"no GPU found; fp32 is the fast, exact choice on CPU, bf16 unmeasured{hint}"
    )
