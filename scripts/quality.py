"""Measure the toy Stable Diffusion family and print a markdown table.

    python scripts/quality.py                # full measurement (~1-3 min on 2 CPU cores)
    python scripts/quality.py --smoke        # small counts, seconds (used by the tests)
    python scripts/quality.py --models DIR   # another trained family (default: models/)

What it measures (the judge, `helpers.judge`, is independent of the mini CLIP):
- prompt-faithful fraction of generated images at guidance 1.0 and 7.5: every one of the 90
  combinations (training and held-out), 25 PNDM steps, several seeds each;
- how often the image the mini CLIP ranks best among 8 samples (guidance 7.5) is faithful;
- mini-CLIP retrieval: for fresh images of the held-out combinations, is the right caption the
  most similar of all 90?
- VAE reconstruction error on fresh images; the judge's own accuracy on clean images.

Writes the numbers to outputs/benchmarks/toy_quality_<time>.json (a new file every run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from diffusers import PNDMScheduler

import helpers  # noqa: F401  (quiet library logs before diffusers/transformers load)
from helpers import judge as judge_mod
from helpers import training as tr
from helpers.paths import MODELS_DIR as _MODELS_DIR
from helpers.paths import OUTPUTS_DIR
from helpers.shapes_data import HELD_OUT, TEMPLATES, all_combos, held_out_combos, make_dataset, train_combos

MODELS_DIR = _MODELS_DIR
STEPS = 25  # sampler steps used for every generated image here


def load_family(models_dir: Path):
    """(pipe, clip, tokenizer) from a models folder, with the same calls a user makes."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPModel, CLIPTokenizer

    diffusers_logging.disable_progress_bar()  # the "Loading pipeline components" bar
    try:
        pipe = StableDiffusionPipeline.from_pretrained(models_dir / "toy-sd")
    finally:
        diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    clip = CLIPModel.from_pretrained(models_dir / "toy-clip").eval()
    tokenizer = CLIPTokenizer.from_pretrained(models_dir / "toy-clip")
    return pipe, clip, tokenizer


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, batch: int = 256) -> np.ndarray:
    """uint8 images (N, 32, 32, 3), one seeded generator per image, in batches."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        images = pipe(
            prompt=prompts[i : i + batch], num_inference_steps=STEPS, guidance_scale=guidance_scale,
            generator=gens, output_type="np",
        ).images  # fmt: skip
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def faithful_at(pipe, guidance_scale: float, seeds_train: int, seeds_held: int, judge_dir: Path) -> dict:
    """Judge images of every training combination (seeds_train each) and held-out one (seeds_held each)."""
    prompts, seeds, held = [], [], []
    for c in all_combos():
        k = seeds_held if c in HELD_OUT else seeds_train
        prompts += [c.caption()] * k
        seeds += [10_000 * i + hash_combo(c) for i in range(k)]
        held += [c in HELD_OUT] * k
    t0 = time.perf_counter()
    images = generate(pipe, prompts, seeds, guidance_scale)
    seconds = time.perf_counter() - t0
    ok = np.array(judge_verdicts(images, prompts, judge_dir))
    held = np.array(held)
    return {
        "guidance_scale": guidance_scale,
        "n": len(ok),
        "faithful": float(ok.mean()),
        "faithful_train_combos": float(ok[~held].mean()),
        "faithful_held_out": float(ok[held].mean()),
        "n_held_out": int(held.sum()),
        "seconds_per_image_batched": seconds / len(ok),
    }


def hash_combo(c) -> int:
    return all_combos().index(c)


def judge_verdicts(images: np.ndarray, prompts: list[str], judge_dir: Path) -> list[bool]:
    verdicts = judge_mod.inspect(images, judge_dir)
    return [v.matches(p) for v, p in zip(verdicts, prompts)]


@torch.no_grad()
def best_of_8(pipe, clip, tokenizer, combos, judge_dir: Path, guidance_scale: float = 7.5) -> dict:
    """For each prompt: 8 samples, the mini CLIP picks one, the judge grades the pick."""
    prompts = [c.caption() for c in combos for _ in range(8)]
    seeds = [777_000 + 8 * hash_combo(c) + j for c in combos for j in range(8)]
    images = generate(pipe, prompts, seeds, guidance_scale)
    ok = np.array(judge_verdicts(images, prompts, judge_dir)).reshape(len(combos), 8)
    picks, ranked_ok = [], []
    for i, c in enumerate(combos):
        scores = tr.clip_scores(clip, tokenizer, images[8 * i : 8 * i + 8], [c.caption()])[:, 0]  # (8,)
        best = int(scores.argmax())
        picks.append(best)
        ranked_ok.append(bool(ok[i, best]))
    held = np.array([c in HELD_OUT for c in combos])
    ranked_ok = np.array(ranked_ok)
    return {
        "n_prompts": len(combos),
        "best_of_8_faithful": float(ranked_ok.mean()),
        "best_of_8_faithful_held_out": float(ranked_ok[held].mean()) if held.any() else None,
        "any_of_8_faithful": float(ok.any(axis=1).mean()),
        "mean_faithful_of_8": float(ok.mean()),
    }


@torch.no_grad()
def clip_retrieval(clip, tokenizer, per_combo: int, seed: int = 4242) -> dict:
    """Top-1 image -> caption retrieval among all 90 canonical captions, on fresh images."""
    captions = [c.caption() for c in all_combos()]
    result = {}
    for name, combos in (("held_out", held_out_combos()), ("train_combos", train_combos())):
        data = make_dataset(per_combo * len(combos), seed=seed, combos=combos, random_template=False)
        scores = tr.clip_scores(clip, tokenizer, data.images, captions)  # (N, 90)
        truth = torch.tensor([captions.index(c.caption()) for c in data.combos])
        result[f"retrieval_top1_{name}"] = float((scores.argmax(1) == truth).float().mean())
        result[f"n_{name}"] = len(data)
    # the other templates, on held-out images: does CLIP read the paraphrases too?
    data = make_dataset(per_combo * len(held_out_combos()), seed=seed + 1, combos=held_out_combos())
    for t in range(1, len(TEMPLATES)):
        caps = [c.caption(t) for c in all_combos()]
        scores = tr.clip_scores(clip, tokenizer, data.images, caps)
        truth = torch.tensor([caps.index(c.caption(t)) for c in data.combos])
        result[f"retrieval_top1_held_out_template{t}"] = float((scores.argmax(1) == truth).float().mean())
    return result


def vae_error(pipe, n: int, seed: int = 999) -> dict:
    out = {}
    for name, combos in (("held_out", held_out_combos()), ("train_combos", train_combos())):
        data = make_dataset(n, seed=seed, combos=combos)
        mse = tr.vae_reconstruction_mse(pipe.vae, data.images)
        out[f"vae_mse_{name}"] = mse
        out[f"vae_psnr_db_{name}"] = float(10 * np.log10(4.0 / mse))  # pixels in [-1, 1]: peak-to-peak 2
    return out


def single_image_seconds(pipe, prompt: str = "a red circle on a blue background", repeats: int = 3) -> float:
    """Wall time of one default pipeline call (1 image, 25 steps, guidance 7.5)."""
    pipe(prompt, num_inference_steps=STEPS, guidance_scale=7.5)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        pipe(prompt, num_inference_steps=STEPS, guidance_scale=7.5)
    return (time.perf_counter() - t0) / repeats


def measure(models_dir: Path = MODELS_DIR, smoke: bool = False) -> dict:
    """All the numbers, as a dict (also written to outputs/benchmarks/)."""
    models_dir = Path(models_dir)
    judge_dir = models_dir / "shape-judge"
    pipe, clip, tokenizer = load_family(models_dir)
    seeds_train, seeds_held = (1, 2) if smoke else (3, 8)
    scheduler = pipe.scheduler
    result = {"models_dir": str(models_dir), "smoke": smoke, "num_inference_steps": STEPS}
    result["scheduler"] = type(scheduler).__name__
    t0 = time.perf_counter()
    result["guidance_1.0"] = faithful_at(pipe, 1.0, seeds_train, seeds_held, judge_dir)
    result["guidance_7.5"] = faithful_at(pipe, 7.5, seeds_train, seeds_held, judge_dir)
    if not smoke:  # SD v1's own sampler, for comparison: it overshoots on this tiny model at high guidance
        pipe.scheduler = PNDMScheduler.from_config(scheduler.config)
        result["guidance_7.5_pndm"] = faithful_at(pipe, 7.5, seeds_train, seeds_held, judge_dir)
        pipe.scheduler = scheduler
    combos = held_out_combos()[:3] + train_combos()[::27] if smoke else all_combos()
    result["best_of_8"] = best_of_8(pipe, clip, tokenizer, combos, judge_dir)
    result["clip"] = clip_retrieval(clip, tokenizer, per_combo=2 if smoke else 20)
    result["vae"] = vae_error(pipe, n=64 if smoke else 512)
    result["judge"] = judge_mod.judge_accuracy(n=90 if smoke else 900, model_dir=judge_dir)
    result["seconds_per_image_single_call"] = single_image_seconds(pipe, repeats=1 if smoke else 3)
    result["measure_seconds"] = time.perf_counter() - t0
    result["torch_threads"] = torch.get_num_threads()
    return result


def markdown_table(r: dict) -> str:
    g1, g7, b8, clip, vae, jd = r["guidance_1.0"], r["guidance_7.5"], r["best_of_8"], r["clip"], r["vae"], r["judge"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [
        ("Prompt-faithful, guidance 1.0 (all / held-out)", f"{pct(g1['faithful'])} / {pct(g1['faithful_held_out'])}",
         f"{g1['n']} images ({g1['n_held_out']} held-out)", "clearly below 7.5"),
        ("Prompt-faithful, guidance 7.5 (all / held-out)", f"{pct(g7['faithful'])} / {pct(g7['faithful_held_out'])}",
         f"{g7['n']} images ({g7['n_held_out']} held-out)", ">= 90%"),
        ("CLIP-ranked best of 8 is faithful (guidance 7.5)", pct(b8["best_of_8_faithful"]),
         f"{b8['n_prompts']} prompts x 8", ">= 97%"),
        ("At least one of 8 is faithful", pct(b8["any_of_8_faithful"]), f"{b8['n_prompts']} prompts x 8", ""),
        ("Mini-CLIP retrieval top-1, held-out images (of 90 captions)", pct(clip["retrieval_top1_held_out"]),
         f"{clip['n_held_out']} images", ""),
        ("Mini-CLIP retrieval top-1, training-combination images", pct(clip["retrieval_top1_train_combos"]),
         f"{clip['n_train_combos']} images", ""),
        ("VAE reconstruction MSE, held-out (pixels in [-1, 1])",
         f"{vae['vae_mse_held_out']:.5f} ({vae['vae_psnr_db_held_out']:.1f} dB)", "", ""),
        ("VAE reconstruction MSE, training combinations",
         f"{vae['vae_mse_train_combos']:.5f} ({vae['vae_psnr_db_train_combos']:.1f} dB)", "", ""),
        ("Judge accuracy on clean images (shape / colours / all)",
         f"{pct(jd['shape'])} / {pct(min(jd['colour'], jd['background']))} / {pct(jd['all'])}", f"{jd['n']} images", ""),
        ("Seconds per image (1 image, 25 steps, guidance 7.5)", f"{r['seconds_per_image_single_call']:.3f}",
         f"{r['torch_threads']} threads", ""),
    ]  # fmt: skip
    if "guidance_7.5_pndm" in r:
        gp = r["guidance_7.5_pndm"]
        rows.insert(2, ("Prompt-faithful, guidance 7.5 with PNDM (SD v1's sampler)",
                        f"{pct(gp['faithful'])} / {pct(gp['faithful_held_out'])}", f"{gp['n']} images", ""))  # fmt: skip
    lines = [f"Sampler: {r['scheduler']}, {r['num_inference_steps']} steps.", ""]
    lines += ["| metric | value | sample | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def save_result(r: dict) -> Path:
    out_dir = OUTPUTS_DIR / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"toy_quality{'_smoke' if r['smoke'] else ''}_{stamp}"
    path = out_dir / f"{name}.json"
    i = 1
    while path.exists():  # never overwrite an earlier result
        path = out_dir / f"{name}_{i}.json"
        i += 1
    path.write_text(json.dumps(r, indent=2) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=MODELS_DIR)
    ap.add_argument("--smoke", action="store_true", help="small counts: seconds, not minutes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = measure(args.models, smoke=args.smoke)
    path = save_result(r)
    print(markdown_table(r))
    print(f"\nSaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
