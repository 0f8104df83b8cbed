"""CLIP ranking throughput: Flax `jax.pmap` on 1 and 2 host devices, the jit + NamedSharding twin, one-device
jit, and the PyTorch twin, on the real ViT-B/32 architecture (random weights from its public config) and on
the mini CLIP (the trained toy CLIP when `models/toy-clip` exists, else the tiny random one).

Images per second are end to end, as `helpers.clip_ranking.rank` gives them: preprocessing (resize, crop,
normalise) + both towers + sorting, for `--n-images` 256x256 images per call, after one untimed call that
compiles. The device count is fixed when jax starts, so each count runs in its own subprocess (this script
with `--worker --devices N`, which calls `set_host_device_count(N)` before jax starts). On a CPU, "devices" are slices of the same cores: more of them does not add compute, it
only shows that the recipe is right and what the splitting costs; on several GPUs/TPUs pmap scales.

    python benchmarks/clip_throughput.py            # 16 images, 3 repeats: ~3 min on 2 cores
    python benchmarks/clip_throughput.py --smoke    # 4 images, 1 repeat, ViT-B/32 cut to 1 layer, 2 devices only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import common
import numpy as np

DEVICE_COUNTS = (1, 2)
PROMPT = "a red circle on a blue background"
# (method, device counts it runs on)
PLAN = (("pmap", (1, 2)), ("sharded", (1, 2)), ("single", (1,)), ("torch", (1,)))


def jax_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("jax", "jaxlib", "flax", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def n_params(clip) -> float:
    """Millions of parameters."""
    if clip.backend == "torch":
        return sum(p.numel() for p in clip.model.parameters()) / 1e6
    import jax

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(clip.params)) / 1e6


def worker(args) -> list[dict]:
    """Runs in a fresh interpreter: ask for `args.devices` CPU devices, then time every method that uses them."""
    from helpers import clip_ranking as cr

    cr.set_host_device_count(args.devices)  # before jax's first computation: the count is fixed then
    import jax
    import torch

    n_dev = jax.local_device_count()
    default_threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(args.n_images)]
    models = {}
    if "vit-b32" in args.models:
        layers = 1 if args.smoke else None
        models["ViT-B/32 (random)" + (", 1 layer" if layers else "")] = lambda: cr.build_vit_b32(
            num_hidden_layers=layers
        )
    if "mini" in args.models:
        folder = cr.offline_clip_dir()
        name = "toy CLIP (trained)" if folder == cr.TOY_CLIP_DIR else "mini CLIP (random)"
        models[name] = lambda: {b: cr.load_clip(folder, backend=b) for b in cr.BACKENDS}
    rows = []
    for name, build in models.items():
        clips = build()
        for method, counts in PLAN:
            if n_dev not in counts and not args.smoke:  # smoke: every method in the one worker
                continue
            clip = clips["torch" if method == "torch" else "flax"]
            # torch: its default threads, and 1 thread (on a shared, busy CPU, 2 threads can be far slower)
            for threads in sorted({default_threads, 1}, reverse=True) if method == "torch" else [None]:
                torch.set_num_threads(threads or default_threads)
                seconds = common.time_calls(
                    lambda clip=clip, method=method: cr.rank(
                        images, PROMPT, clip, method=method, chunk_size=args.chunk_size
                    ),
                    repeats=args.repeats,
                    warmup=1,
                )
                sec = common.median(seconds)
                rows.append(
                    {
                        "model": name,
                        "params_m": round(n_params(clip), 1),
                        "image_px": clip.image_size,
                        "method": method,
                        "devices": n_dev if method in ("pmap", "sharded") else 1,
                        "torch_threads": threads,
                        "images": args.n_images,
                        "seconds": round(sec, 4),
                        "images_per_s": args.n_images / sec,
                        "repeats": args.repeats,
                    }
                )
            torch.set_num_threads(default_threads)
        del clips
    return rows


def run_worker(n_devices: int, args) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--devices", str(n_devices)]
    cmd += ["--n-images", str(args.n_images)]
    cmd += ["--repeats", str(args.repeats), "--chunk-size", str(args.chunk_size), "--models", *args.models]
    cmd += ["--smoke"] if args.smoke else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker with {n_devices} device(s) failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> Path | None:
    ap = common.parser(__doc__)
    ap.add_argument("--n-images", type=int, default=16, help="images per rank() call")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (the median counts)")
    ap.add_argument("--chunk-size", type=int, default=64, help="rank()'s chunk_size")
    ap.add_argument("--models", nargs="+", default=["vit-b32", "mini"], choices=["vit-b32", "mini"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)  # the worker's CPU device count
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_images, args.repeats = 4, 1
    if args.worker:
        import helpers  # noqa: F401

        common.apply_threads(args.threads)
        print(json.dumps(worker(args)))
        return None

    # smoke: one worker (2 devices) runs every method, to check the code paths quickly; else one per count,
    # one after the other, so the measurements do not share the cores
    rows = [row for n in ((2,) if args.smoke else DEVICE_COUNTS) for row in run_worker(n, args)]
    rows.sort(
        key=lambda r: (r["model"], [m for m, _ in PLAN].index(r["method"]), r["devices"], -(r["torch_threads"] or 0))
    )
    columns = {
        "model": "model",
        "params_m": "params (M)",
        "image_px": "image px",
        "method": "method",
        "devices": "devices",
        "torch_threads": "torch threads",
        "images": "images",
        "seconds": "seconds",
        "images_per_s": "images/s",
    }
    notes = [
        "Flax = the repo's own CLIP (helpers/clip_model.py) on the same weights as torch. pmap: jax.pmap, params "
        "replicated, batch padded to a multiple of the device count; sharded: jax.jit over a Mesh with NamedSharding; "
        "single: jax.jit on one device; torch: transformers CLIPModel (fp32). XLA uses its own thread pool; torch "
        "threads as shown.",
        "End to end per rank() call (preprocessing included), median of the timed calls after one compiling call.",
        "Host devices share the same CPU cores: on a CPU more devices cannot add compute.",
    ]
    return common.report(
        "clip_throughput",
        "CLIP ranking throughput (images/s)",
        rows,
        columns,
        args,
        notes=notes,
        extra={"library_versions": jax_versions(), "prompt": PROMPT},
    )


if __name__ == "__main__":
    main()
