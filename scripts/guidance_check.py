"""Judge a saved toy family at several guidance settings: the runs behind the README's "Guidance multiplies the
UNet's late errors" rows (issue 12).

    python scripts/guidance_check.py DIR/toy-sd-9000 --guidance 3,5,7.5,12 --guided-share 0.3,0.5,0.7 --rescale 0.7

Each setting draws the quality script's prompt set (2 seeds for each training combination, 4 for each held-out
one: 198 images; `--quick`: 90) with DDIM at `--steps` (default 30), and the strict judge grades them:
- `--guidance G,...`: classifier-free guidance at G for every step;
- `--guided-share S,...`: guidance 7.5 for the first share S of the steps, then the captioned prediction alone
  (diffusers' dynamic-CFG callback: https://huggingface.co/docs/diffusers/using-diffusers/callback);
- `--rescale R`: guidance 7.5 with the pipeline's `guidance_rescale=R` (Lin et al. 2023).
Prints one table row per setting.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleep, don't spin, while waiting (shared CPUs)

import numpy as np
import torch

import helpers  # noqa: F401  (quiet library logs before diffusers/transformers load)
from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import quality  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipe", type=Path, help="a saved StableDiffusionPipeline folder (save_pretrained)")
    ap.add_argument("--guidance", default="7.5", help="guidance scales, each for every step")
    ap.add_argument("--guided-share", default="", help="shares of the steps (0-1] guided at 7.5, then not")
    ap.add_argument("--rescale", type=float, default=None, help="also guidance 7.5 with this guidance_rescale")
    ap.add_argument("--steps", type=int, default=30, help="DDIM steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1 seed per combination (90 images), not 198")
    args = ap.parse_args(argv)
    if not (args.pipe / "model_index.json").is_file():
        ap.error(f"{args.pipe}: no model_index.json there; give a folder written by save_pretrained")
    args.guidance, args.guided_share = _floats(args.guidance), _floats(args.guided_share)
    if not all(0 < s <= 1 for s in args.guided_share):
        ap.error(f"--guided-share {args.guided_share}: each share must be in (0, 1]")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    return args


def guidance_until(share: float):
    """A `callback_on_step_end` that turns guidance off after the first `share` of the steps: from then on the
    pipeline keeps only the captioned half of the text states and predicts with it alone."""

    def callback(pipe, step_index, timestep, kwargs):
        if step_index == int(pipe.num_timesteps * share) - 1:
            kwargs["prompt_embeds"] = kwargs["prompt_embeds"].chunk(2)[-1]  # [uncond, cond] -> cond
            pipe._guidance_scale = 0.0  # what diffusers' own dynamic-CFG example sets
        return kwargs

    return callback


def judge(pipe, prompts, seeds, held, steps: int, guidance: float, **call) -> dict:
    out = []
    for i in range(0, len(prompts), 100):
        images = pipe(
            prompt=prompts[i : i + 100], num_inference_steps=steps, guidance_scale=guidance, output_type="np",
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + 100]], **call,
        ).images  # fmt: skip
        out.append(quality._uint8(images))
    row, _ = quality.grade(np.concatenate(out), prompts, held)
    return row


def main(argv=None) -> list[dict]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.pipe)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds, held, _ = quality.prompt_set(1, 1) if args.quick else quality.prompt_set(2, 4)
    settings = [(f"guidance {g}", g, {}) for g in args.guidance]
    settings += [
        (f"guidance 7.5 for the first {s:.0%} of the steps", 7.5,
         {"callback_on_step_end": guidance_until(s), "callback_on_step_end_tensor_inputs": ["prompt_embeds"]})
        for s in args.guided_share
    ]  # fmt: skip
    if args.rescale is not None:
        settings.append((f"guidance 7.5, guidance_rescale {args.rescale}", 7.5, {"guidance_rescale": args.rescale}))
    print(f"| setting ({args.steps} DDIM steps, {len(prompts)} images) | faithful | mean IoU |\n|---|---|---|")
    rows = []
    for label, guidance, call in settings:
        row = {"setting": label, **judge(pipe, prompts, seeds, held, args.steps, guidance, **call)}
        rows.append(row)
        print(f"| {label} | {row['faithful']:.1%} | {row['mean_iou']:.3f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
