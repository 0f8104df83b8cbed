"""Item 1: our batched `generate()` against the blog's loop of separate pipeline calls.

The blog (2022) made `sample_num` images like this::

    for i in range(sample_num):
        with autocast("cuda"):
            lst.append(pipe(prompt, guidance_scale=7.5)["sample"][0])

one pipeline call per image: the text encoder runs n times and the UNet sees a batch of 2 (guidance)
per step. `helpers.pipeline.generate(pipe, prompt, n_images=n)` makes ONE call with one
`torch.Generator` per image: the text is encoded once and the UNet sees a batch of 2n per step.
Both runs here use the same model, steps, guidance and seeds (seed + i for image i), so they make
the same images (the table shows the largest pixel difference) and only the speed differs.

    python benchmarks/generation_vs_blog.py            # n = 10, 50 steps, 3 rounds
    python benchmarks/generation_vs_blog.py --smoke    # n = 2, 2 steps, 1 round
"""

from __future__ import annotations

import time

import common
import numpy as np
import torch

from helpers.offline import sd_scheduler
from helpers.pipeline import TOY_MODEL_DIR, generate, load_pipeline, offline_model_dir

PROMPT = "a red circle on a blue background"


def blog_loop(pipe, prompt: str, n: int, steps: int, seed: int, guidance_scale: float) -> list[np.ndarray]:
    """The blog's recipe: n separate calls (with a seeded generator each, so the images are comparable)."""
    images = []
    for i in range(n):
        out = pipe(
            prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(seed + i),
        )
        images.append(np.asarray(out.images[0]))
    return images


def batched(pipe, prompt: str, n: int, steps: int, seed: int, guidance_scale: float) -> list[np.ndarray]:
    result = generate(
        pipe,
        prompt,
        n_images=n,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        show_progress=False,
    )
    return [np.asarray(im) for im in result.images]


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    ap.add_argument("--n", type=int, default=10, help="images per prompt (the blog's sample_num)")
    ap.add_argument("--steps", type=int, default=50, help="denoising steps (PNDM, SD v1's default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating blog/ours rounds; the median counts")
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model folder (default: the offline model)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.steps, args.rounds = 2, 2, 1
    threads = common.apply_threads(args.threads)
    machine = common.machine_info()

    model_dir = args.model or offline_model_dir()
    pipe = load_pipeline(model_dir, device="cpu", dtype=torch.float32)
    pipe.scheduler = sd_scheduler()  # the blog's sampler: SD v1-4's own PNDM, for both recipes
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=PROMPT, n=args.n, steps=args.steps, seed=args.seed, guidance_scale=args.guidance_scale)
    batched(pipe, **{**kw, "n": 1, "steps": 1})  # warm-up: first-call allocations and lazy inits
    times = {"blog": [], "ours": []}
    images = {}
    for _ in range(args.rounds):  # alternate, so load from other programs hits both sides alike
        for name, fn in (("blog", blog_loop), ("ours", batched)):
            t0 = time.perf_counter()
            images[name] = fn(pipe, **kw)
            times[name].append(time.perf_counter() - t0)
    max_diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images["blog"], images["ours"]))

    blog_s, ours_s = common.median(times["blog"]), common.median(times["ours"])
    rows = [
        {
            "recipe": f"blog: {args.n} separate pipe() calls",
            "seconds": blog_s,
            "images_per_s": args.n / blog_s,
            "speedup": 1.0,
            "all_seconds": times["blog"],
        },
        {
            "recipe": f"ours: generate(n_images={args.n}), one batched call",
            "seconds": ours_s,
            "images_per_s": args.n / ours_s,
            "speedup": blog_s / ours_s,
            "all_seconds": times["ours"],
        },
    ]
    kind = "trained toy family" if str(model_dir) == str(TOY_MODEL_DIR) else "tiny random model"
    common.report(
        "generation_vs_blog",
        f"Generation: the blog's loop vs one batched call ({args.n} images, {args.steps} PNDM steps)",
        rows,
        {"recipe": "recipe", "seconds": f"s for {args.n} images", "images_per_s": "images/s", "speedup": "speed-up"},
        args,
        notes=[
            f"Model: {kind} ({model_dir}), {pipe.unet.config.sample_size * pipe.vae_scale_factor} px, "
            f"guidance {args.guidance_scale}, fp32 on CPU, {threads} threads; median of {args.rounds} alternating rounds.",
            f"Same seeds on both sides: largest pixel difference between the two sets = {max_diff} (of 255).",
        ],
        extra={"model": str(model_dir), "model_kind": kind, "max_pixel_diff": max_diff, "threads": threads},
        machine=machine,
        formats={"speedup": "{:.2f}x", "images_per_s": "{:.3f}"},
    )
    return {"rows": rows, "max_pixel_diff": max_diff}


if __name__ == "__main__":
    main()
