"""Item 6: how much RAM Stable Diffusion needs on CPU: peak RSS to load it, and to make one image.

The real SD v1-4 architecture (random weights, saved once as fp32 safetensors like the Hub's files,
safety checker included) is loaded through `helpers.pipeline.load_pipeline` in fp32 and in bf16, and
one 256x256 image is generated with each. Every measurement runs in a FRESH process, so one peak
never hides inside another: the process's peak resident memory (`ru_maxrss`) is the number, next to
the resident memory after the step and the memory of the weights alone. The first row is a process
that only imports the libraries (the floor every other row includes).

Peak memory does not depend on the number of steps (each step frees what the last one used), so the
generation rows use `--steps 2` by default; pass `--steps 50` to time a real image (~10+ min in fp32).

    nice python benchmarks/memory_cpu.py        # ~5 GiB peak, ~4.5 GB of temporary disk, minutes
    python benchmarks/memory_cpu.py --smoke     # the tiny model, seconds
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from helpers.saving import public_name

GiB = 2**30
MEASUREMENTS = ("import", "load_fp32", "load_bf16", "generate_fp32", "generate_bf16")


def _rss_now() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def child(what: str, model_dir: str, size: int, steps: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    import helpers  # noqa: F401

    if what == "prepare":
        from helpers.offline import build_real_architecture_pipeline

        build_real_architecture_pipeline().save_pretrained(model_dir)  # fp32 safetensors, like the Hub's main branch
        return {"saved": model_dir}
    from diffusers.utils import logging as diffusers_logging

    from helpers.diagnostics import param_bytes
    from helpers.pipeline import generate, load_pipeline

    diffusers_logging.disable_progress_bar()
    out = {"what": what}
    if what == "import":
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    else:
        dtype = torch.bfloat16 if what.endswith("bf16") else torch.float32
        t0 = time.perf_counter()
        pipe = load_pipeline(model_dir, device="cpu", dtype=dtype, scheduler=None)  # the model's own PNDM
        out["load_s"] = time.perf_counter() - t0
        out["weights_gib"] = param_bytes(pipe) / GiB
        if what.startswith("generate"):
            pipe.set_progress_bar_config(disable=True)
            t0 = time.perf_counter()
            generate(pipe, "a red circle on a blue background", num_inference_steps=steps, height=size, width=size,
                     show_progress=False)  # fmt: skip
            out["generate_s"] = time.perf_counter() - t0
    out["peak_rss_gib"] = _peak_rss() / GiB
    out["rss_after_gib"] = _rss_now() / GiB
    return out


def run_child(what: str, model_dir: Path, size: int, steps: int, threads: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--model", str(model_dir)]
    cmd += ["--size", str(size), "--steps", str(steps)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"memory_cpu: measurement {what!r} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    ap.add_argument("--size", type=int, default=256, help="image size in pixels")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps (peak memory does not depend on it)")
    ap.add_argument("--model", type=Path, default=None, help="a saved pipeline folder (default: build the real one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary model folder")
    ap.add_argument("--child", default=None, help="(internal) run one measurement")
    args = ap.parse_args(argv)
    common.apply_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, str(args.model), args.size, args.steps)))
        return {}
    if args.smoke:
        args.size, args.steps = 64, 1
    machine = common.machine_info()
    tmp = None
    if args.model:
        model_dir, kind = args.model, f"the pipeline in {args.model}"
    elif args.smoke:
        from helpers.offline import ensure_tiny_model

        model_dir, kind = ensure_tiny_model(), "the tiny random model (smoke)"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="sd-v1-4-random-"))
        model_dir, kind = tmp / "pipe", "the real SD v1-4 architecture (random weights, fp32 files, safety checker)"
        print(f"Building and saving the real architecture to {model_dir} (fresh process)...", flush=True)
        run_child("prepare", model_dir, args.size, args.steps, args.threads)
    rows = []
    measurements = ("import", "load_fp32", "generate_bf16") if args.smoke else MEASUREMENTS  # smoke: each path once
    try:
        for what in measurements:
            res = run_child(what, model_dir, args.size, args.steps, args.threads)
            label = {
                "import": "import torch + diffusers + transformers only",
                "load_fp32": "load_pipeline(dtype=float32)",
                "load_bf16": "load_pipeline(dtype=bfloat16)",
                "generate_fp32": f"load fp32 + generate one {args.size}x{args.size} image",
                "generate_bf16": f"load bf16 + generate one {args.size}x{args.size} image",
            }[what]
            rows.append({"measurement": label, **res})
            print(f"  {label}: peak {res['peak_rss_gib']:.2f} GiB", flush=True)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]["peak_rss_gib"]
    for r in rows:
        r["above_import_gib"] = r["peak_rss_gib"] - base
    common.report(
        "memory_cpu",
        f"CPU memory: peak RSS, each in a fresh process ({'tiny model' if args.smoke else 'SD v1-4 architecture'})",
        rows,
        {
            "measurement": "measurement",
            "weights_gib": "weights GiB",
            "peak_rss_gib": "peak RSS GiB",
            "above_import_gib": "peak above import GiB",
            "rss_after_gib": "RSS after GiB",
            "load_s": "load s",
            "generate_s": "generate s",
        },
        args,
        notes=[f"Model: {kind}; generation: {args.steps} steps at {args.size}x{args.size}, guidance 7.5, PNDM."],
        extra={"model": "the real architecture, in a temporary folder" if tmp else public_name(model_dir)},
        machine=machine,
        formats={k: "{:.2f}" for k in ("weights_gib", "peak_rss_gib", "above_import_gib", "rss_after_gib")},
    )
    return {"rows": rows}


if __name__ == "__main__":
    main()
