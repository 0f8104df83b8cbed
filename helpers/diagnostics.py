"""Measure what precision costs, and reproduce the failures learners meet (black images).

- `param_bytes(pipe)`: bytes of weights; fp16 stores each number in 2 bytes instead of 4, so it is
  exactly half of fp32 (activations shrink the same way, so peak memory roughly halves too).
- `measure(fn, device)`: wall time and peak memory of one call (peak GPU memory on CUDA, peak RSS on CPU).
- `nan_in_vae_decoder(pipe)`: a context manager that makes the VAE decoder return NaNs, the way an fp16
  overflow does on some GPUs, so the notebook can show how `generate()` explains a black image.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time

import torch

FP16_MAX = 65504.0  # the largest finite float16; anything bigger overflows to inf, and inf - inf = NaN


def param_bytes(pipe_or_module) -> int:
    """Total bytes of the parameters of a pipeline (all its torch modules) or of one module."""
    modules = (
        [pipe_or_module]
        if isinstance(pipe_or_module, torch.nn.Module)
        else [m for m in pipe_or_module.components.values() if isinstance(m, torch.nn.Module)]
    )
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def measure(fn, device: str = "cpu"):
    """Run `fn()` once; return (result, seconds, peak_bytes). On CPU the peak is the process's peak RSS."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss_bytes()
    return result, time.perf_counter() - t0, peak


@contextlib.contextmanager
def nan_in_vae_decoder(pipe):
    """Inside this block the VAE decoder outputs NaNs (a stand-in for an fp16 overflow)."""

    def hook(module, inputs, output):
        return torch.full_like(output, float("nan"))

    handle = pipe.vae.decoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
