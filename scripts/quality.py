"""Measure a trained toy Stable Diffusion family with the strict judge and print every figure as a table.

    python scripts/quality.py                      # full measurement, >= 300 images per row (minutes on 2 cores)
    python scripts/quality.py --quick              # small counts, seconds (used by the tests; --smoke is the same)
    python scripts/quality.py --models DIR         # another trained family (default: models/)
    python scripts/quality.py --models DIR --steps 30   # that family's default sampler at 30 steps, not 10
    python scripts/quality.py --models DIR --scheduler euler_a --steps 30   # another default sampler for every row

The judge is `helpers.strict_judge` (classical image analysis: no learned model, not the mini CLIP). Rows:
- prompt-faithful at guidance 1.0 and 7.5 with the default sampler (every one of the 90 combinations,
  training and held-out apart), mean shape IoU, median colour Delta E, and diversity: the spread across
  seeds of the shape's centre and size, against the spread in the training data;
- PNDM at 50 steps (SD v1's default) and every sampler of the notebooks' table at 20 steps, and DDIM ending its last
  step at alpha-bar 1 (`set_alpha_to_one=True`) beside SD's own config;
- negative prompts: "red" against prompts that leave the colour unnamed (how often the shape is still
  red, and faithful to the rest), and a negative naming a colour the prompt does not use;
- img2img (`StableDiffusionImg2ImgPipeline(**pipe.components)`): change one attribute, keep the place;
- inpainting (`StableDiffusionInpaintPipeline(**pipe.components)`): a shape inside the mask, the rest kept;
- mini-CLIP retrieval and the VAE's reconstruction error.

Writes the numbers to outputs/benchmarks/toy_quality_<time>.json (a new file every run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import helpers  # noqa: F401  (quiet library logs before diffusers/transformers load)
from helpers import strict_judge as sj
from helpers import training as tr
from helpers.editing import load_inpainting_unet
from helpers.paths import MODELS_DIR as _MODELS_DIR
from helpers.paths import OUTPUTS_DIR
from helpers.saving import public_name
from helpers.shapes_data import (
    COLOURS,
    HELD_OUT,
    SHAPES,
    Combo,
    all_combos,
    held_out_combos,
    make_dataset,
    make_dataset_v2,
    train_combos,
)

MODELS_DIR = _MODELS_DIR
GUIDANCE = 7.5
TABLE_SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")  # benchmarks/schedulers_quality.py's table
COMMAND = "python scripts/quality.py"
#: The inpainting rows' `padding_mask_crop` settings (diffusers' "inpaint only the masked area"): 0 crops the mask's
#: own box, 4 keeps half a latent cell of the picture around it. A second set of masks (seed 12) checks that the
#: figures are not the first set's luck.
INPAINT_CROP_PADDINGS = (0, 4)
INPAINT_OTHER_MASKS = 12


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


def image_size(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def training_data(pipe, n: int, seed: int, combos=None, rotate: bool = True):
    """Fresh images like the family's training data (second generation at 64 px, else the first; `rotate=False`:
    the second generation's squares and triangles upright)."""
    if image_size(pipe) == 64:
        return make_dataset_v2(n, seed=seed, combos=combos, form=0, rotate=rotate)
    return make_dataset(n, seed=seed, combos=combos, random_template=False)


def _uint8(images: np.ndarray) -> np.ndarray:
    return (np.nan_to_num(images).clip(0, 1) * 255).round().astype(np.uint8)


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, steps: int | None = None,
             negative: str | None = None, batch: int = 200) -> np.ndarray:  # fmt: skip
    """uint8 images (N, H, W, 3), one seeded generator per image, in batches."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        images = pipe(
            prompt=chunk, num_inference_steps=steps or default_steps(), guidance_scale=guidance_scale,
            negative_prompt=[negative] * len(chunk) if negative else None,
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + batch]], output_type="np",
        ).images  # fmt: skip
        out.append(_uint8(images))
    return np.concatenate(out)


def prompt_set(per_train: int, per_held: int) -> tuple[list[str], list[int], np.ndarray, list[Combo]]:
    """Canonical captions of every combination (per_train / per_held seeds each), seeds, held-out flags."""
    prompts, seeds, held, combos = [], [], [], []
    for j, c in enumerate(all_combos()):
        k = per_held if c in HELD_OUT else per_train
        prompts += [c.caption()] * k
        seeds += [10_000 * i + j for i in range(k)]
        held += [c in HELD_OUT] * k
        combos += [c] * k
    return prompts, seeds, np.array(held), combos


def spread(inspections: list[sj.Inspection], groups: list) -> dict[str, float]:
    """Mean over groups (one prompt each) of the std across images of the shape's centre and size."""
    cx, cy, size = [], [], []
    for g in sorted(set(groups), key=str):
        found = [s for s, k in zip(inspections, groups) if k == g and s.found]
        if len(found) >= 2:
            cx.append(np.std([s.cx for s in found]))
            cy.append(np.std([s.cy for s in found]))
            size.append(np.std([s.size for s in found]))
    return {"centre_std_px": float(np.mean(cx + cy)) if cx else 0.0, "size_std_px": float(np.mean(size) if size else 0)}


#: An IoU miss this close to the judge's threshold is a near miss (a hair of blur at the edge; see `misses`).
NEAR_IOU = 0.01


def misses(verdicts: list[sj.Verdict]) -> dict:
    """Why a row's images missed: how many missed, and how many failed each of the judge's checks (an image can fail
    several), with the IoU misses within `NEAR_IOU` of the threshold counted apart."""
    out = {"n": sum(not v.faithful for v in verdicts)}
    for check in sj.CHECKS:
        out[check] = sum(check in v.failed for v in verdicts)
    out["IoU near the threshold"] = sum("IoU" in v.failed and v.iou >= sj.IOU_MIN - NEAR_IOU for v in verdicts)
    return out


def grade(images: np.ndarray, prompts: list[str], held: np.ndarray | None = None) -> dict:
    """Strict-judge figures of one row: faithful (all / training combos / held-out), IoU, Delta E, and why the
    misses missed (`misses`)."""
    inspections = [sj.inspect(im, **sj.inspect_options(p)) for im, p in zip(images, prompts)]
    verdicts = [sj.verdict(s, p) for s, p in zip(inspections, prompts)]
    ok = np.array([v.faithful for v in verdicts])
    found = [s for s in inspections if s.found]
    row = {
        "n": len(ok),
        "faithful": float(ok.mean()),
        "mean_iou": float(
            np.mean(
                [
                    s.ious.get(sj.parse_caption(p).shape or s.kind, 0.0) if s.found else 0.0
                    for s, p in zip(inspections, prompts)
                ]
            )
        ),  # fmt: skip
        "median_colour_delta_e": float(np.median([s.colour_delta_e for s in found])) if found else float("inf"),
        "median_background_delta_e": float(np.median([s.background_delta_e for s in found])) if found else 0.0,
        "misses": misses(verdicts),
    }
    if held is not None and held.any():
        row |= {"faithful_train_combos": float(ok[~held].mean()), "faithful_held_out": float(ok[held].mean()),
                "n_held_out": int(held.sum())}  # fmt: skip
    return row, inspections


def with_scheduler(pipe, name: str):
    """A scheduler of kind `name` from the pipeline's own config (same betas and `prediction_type`)."""
    from helpers.pipeline import make_scheduler

    return make_scheduler(pipe, name)


def faithful_rows(pipe, quick: bool) -> dict:
    """Guidance 1.0 and 7.5 at the default sampler, diversity, PNDM-50 and the table's samplers at 20 steps."""
    per_train, per_held = (1, 2) if quick else (4, 8)  # full: 81 x 4 + 9 x 8 = 396 images per row
    prompts, seeds, held, combos = prompt_set(per_train, per_held)
    if quick:
        keep = np.arange(len(prompts)) % 6 == 0
        prompts, seeds, combos = (
            [p for p, k in zip(prompts, keep) if k],
            [s for s, k in zip(seeds, keep) if k],
            [c for c, k in zip(combos, keep) if k],
        )
        held = held[keep]
    default = pipe.scheduler
    pipe.scheduler = with_scheduler(pipe, default_scheduler())
    out = {"default": f"{default_scheduler()}-{default_steps()}"}
    for g in (1.0, GUIDANCE):
        images = generate(pipe, prompts, seeds, g)
        out[f"guidance_{g}"], _ = grade(images, prompts, held)
    # diversity: several seeds of a few prompts at the default guidance, against the training data's spread
    div_combos = all_combos()[:: 15 if quick else 5]
    k = 4 if quick else 16
    d_prompts = [c.caption() for c in div_combos for _ in range(k)]
    d_seeds = [555_000 + i for i in range(len(d_prompts))]
    images = generate(pipe, d_prompts, d_seeds, GUIDANCE)
    generated = spread([sj.inspect(im) for im in images], d_prompts)
    data = training_data(pipe, len(d_prompts), seed=321, combos=div_combos)
    reference = spread([sj.inspect(im) for im in data.images], [c.caption() for c in data.combos])
    out["diversity"] = {
        "generated": generated,
        "training_data": reference,
        "centre_ratio": generated["centre_std_px"] / max(reference["centre_std_px"], 1e-9),
        "size_ratio": generated["size_std_px"] / max(reference["size_std_px"], 1e-9),
        "n": len(d_prompts),
    }
    from diffusers import DDIMScheduler

    cells = [("pndm", with_scheduler(pipe, "pndm"), 50)]
    cells += [(s, with_scheduler(pipe, s), 20) for s in TABLE_SAMPLERS]
    # DDIM's last step: SD's config (set_alpha_to_one=False) ends it at alphas_cumprod[0], leaving
    # sqrt(1 - alphas_cumprod[0]) = 0.029 of the predicted noise in the latents; ending at 1 makes DDIM (eta 0) exactly
    # Euler's method (notebook 03, section 4), so this row tells how much of DDIM's gap to Euler is that last step.
    cells += [("ddim_alpha_to_one", DDIMScheduler.from_config(default.config, set_alpha_to_one=True), 20)]
    for name, scheduler, steps in cells:
        pipe.scheduler = scheduler
        images = generate(pipe, prompts, seeds, GUIDANCE, steps=4 if quick else steps)
        out[f"{name}_{steps}"], _ = grade(images, prompts, held)
    pipe.scheduler = default
    return out


def negative_rows(pipe, quick: bool) -> dict:
    """Negative prompts: 'red' against prompts that leave the shape's colour unnamed; an unused colour."""
    per = 1 if quick else 12
    pairs = [(s, b) for s in SHAPES for b in COLOURS if b != "red"][:: 5 if quick else 1]  # 15 pairs
    prompts = [f"a {s} on a {b} background" for s, b in pairs for _ in range(per)]
    seeds = [888_000 + i for i in range(len(prompts))]
    out = {"n": len(prompts)}
    for label, neg in (("without", None), ("negative_red", "red"), ("negative_a_red_shape", "a red shape")):
        images = generate(pipe, prompts, seeds, GUIDANCE, negative=neg)
        row, inspections = grade(images, prompts)
        row["red_rate"] = float(np.mean([s.found and s.colour == "red" for s in inspections]))
        out[label] = row
    # a full prompt with a negative that names a colour it does not use: must stay faithful
    combos = [c for c in all_combos() if "green" not in (c.colour, c.background)][:: 8 if quick else 1]
    prompts = [c.caption() for c in combos for _ in range(1 if quick else 6)]
    seeds = [889_000 + i for i in range(len(prompts))]
    out["full_prompt_negative_green"], _ = grade(generate(pipe, prompts, seeds, GUIDANCE, negative="green"), prompts)
    return out


def img2img_rows(pipe, quick: bool) -> dict:
    """Change the shape's colour of a training-style picture; report faithful and centre shift per strength."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    n = 24 if quick else 300
    data = training_data(pipe, n, seed=4321, combos=all_combos())
    rng = np.random.default_rng(0)
    prompts = []
    for c in data.combos:
        new = [k for k in COLOURS if k not in (c.colour, c.background)][int(rng.integers(4))]
        prompts.append(Combo(c.shape, new, c.background).caption())
    before = [sj.inspect(im) for im in data.images]
    out = {"n": n}
    for strength in (0.5, 0.6, 0.7) if not quick else (0.7,):
        images = []
        for i in range(0, n, 100):
            res = i2i(
                prompt=prompts[i : i + 100], image=[data.pil(j) for j in range(i, min(n, i + 100))],
                strength=strength, num_inference_steps=max(default_steps(), 20), guidance_scale=GUIDANCE,
                generator=[torch.Generator().manual_seed(7000 + j) for j in range(i, min(n, i + 100))],
                output_type="np",
            ).images  # fmt: skip
            images.append(_uint8(res))
        row, after = grade(np.concatenate(images), prompts)
        shift = [np.hypot(a.cx - b.cx, a.cy - b.cy) if a.found and b.found else np.inf for a, b in zip(after, before)]
        row["centre_within_3px"] = float(np.mean(np.array(shift) <= 3))
        row["median_centre_shift_px"] = float(np.median(shift))
        row["faithful_and_within_3px"] = float(
            np.mean([sj.verdict(a, p).faithful and s <= 3 for a, p, s in zip(after, prompts, shift)])
        )
        out[f"strength_{strength}"] = row
    return out


def inpaint_rows(pipe, quick: bool, n: int | None = None, unet=None, padding_mask_crop: int | None = None,
                 mask_seed: int = 11, seed: int = 9000) -> dict:  # fmt: skip
    """A shape inside a square mask on a plain background; pixels outside the mask, raw and pasted back.

    `unet`: a 9-channel inpainting UNet (`helpers.editing.load_inpainting_unet`); None: the pipeline's own
    4-channel UNet, which inpaints by blending latents. `padding_mask_crop`: the pipeline's own "inpaint only the
    masked area" (crop a square around the mask plus that many pixels, inpaint it at the model's size, paste it back
    with `apply_overlay`); diffusers takes one PIL image per call there, so it runs image by image. `mask_seed` and
    `seed` draw the masks and backgrounds, and the first generator seed."""
    from PIL import Image

    from helpers.editing import inpainting_pipeline
    from helpers.shapes_data import _jitter

    inp = inpainting_pipeline(pipe, unet)
    size = image_size(pipe)
    n = n or (24 if quick else 300)
    rng = np.random.default_rng(mask_seed)
    combos = [all_combos()[int(rng.integers(90))] for _ in range(n)]
    inits, masks, boxes = [], [], []
    for c in combos:
        init = np.zeros((size, size, 3), dtype=np.uint8) + np.array(_jitter(COLOURS[c.background], rng), np.uint8)
        side = int(0.6 * size)
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[y0 : y0 + side, x0 : x0 + side] = 255
        inits.append(Image.fromarray(init))
        masks.append(Image.fromarray(mask))
        boxes.append((x0, y0, side))
    prompts = [c.caption() for c in combos]
    steps = max(default_steps(), 20)
    if padding_mask_crop is None:
        images = []
        for i in range(0, n, 100):
            res = inp(
                prompt=prompts[i : i + 100], image=inits[i : i + 100], mask_image=masks[i : i + 100],
                num_inference_steps=steps, guidance_scale=GUIDANCE, height=size, width=size,
                generator=[torch.Generator().manual_seed(seed + j) for j in range(i, min(n, i + 100))], output_type="np",
            ).images  # fmt: skip
            images.append(_uint8(res))
        images = np.concatenate(images)
    else:  # the pipeline crops, inpaints, and pastes the result into the original itself (PIL in, PIL out)
        images = np.stack([
            np.asarray(inp(
                prompt=p, image=init, mask_image=mask, num_inference_steps=steps, guidance_scale=GUIDANCE,
                height=size, width=size, generator=torch.Generator().manual_seed(seed + j),
                padding_mask_crop=padding_mask_crop,
            ).images[0])
            for j, (p, init, mask) in enumerate(zip(prompts, inits, masks))
        ])  # fmt: skip
    inside, raw, pasted = [], [], []
    for im, init, mask, box, p in zip(images, inits, masks, boxes, prompts):
        m = np.asarray(mask) > 127
        keep = np.where(m[..., None], im, np.asarray(init))  # the original pasted back outside the mask
        s = sj.inspect(keep)
        x0, y0, side = box
        in_box = s.found and x0 <= s.cx <= x0 + side and y0 <= s.cy <= y0 + side
        inside.append(sj.verdict(s, p).faithful and in_box)
        diff = np.abs(im.astype(float) - np.asarray(init, dtype=float)).mean(-1)
        raw.append(diff[~m].mean())
        pasted.append(np.abs(keep.astype(float) - np.asarray(init, dtype=float)).mean(-1)[~m].mean())
    return {
        "n": n,
        "padding_mask_crop": padding_mask_crop,
        "mask_seed": mask_seed,
        "shape_inside_mask_faithful": float(np.mean(inside)),
        "outside_change_raw_255": float(np.mean(raw)),
        "outside_change_pasted_255": float(np.mean(pasted)),
    }


@torch.no_grad()
def clip_retrieval(clip, tokenizer, pipe, per_combo: int, seed: int = 4242) -> dict:
    """Top-1 image -> caption retrieval among all 90 canonical captions, on fresh images."""
    captions = [c.caption() for c in all_combos()]
    result = {}
    for name, combos in (("held_out", held_out_combos()), ("train_combos", train_combos())):
        data = training_data(pipe, per_combo * len(combos), seed=seed, combos=combos)
        scores = tr.clip_scores(clip, tokenizer, data.images, captions)  # (N, 90)
        truth = torch.tensor([captions.index(c.caption()) for c in data.combos])
        result[f"retrieval_top1_{name}"] = float((scores.argmax(1) == truth).float().mean())
        result[f"n_{name}"] = len(data)
    return result


def ranking_rows(pipe, clip, tokenizer, quick: bool, per_prompt: int = 8) -> dict:
    """The blog's best-of-N: rank each prompt's `per_prompt` images by CLIP score, and judge with the strict judge
    (not CLIP) how often the top image is faithful, against the average and the bottom image; at guidance 1.0, where
    the sampler's misses are wrong colours and kinds, and at the default guidance, where they are outlines."""
    prompts = [c.caption() for c in all_combos()][:: 15 if quick else 1]
    per_prompt = 2 if quick else per_prompt
    out = {"n_prompts": len(prompts), "per_prompt": per_prompt}
    for g in (1.0, GUIDANCE):
        every = [p for p in prompts for _ in range(per_prompt)]
        images = generate(pipe, every, [777_000 + i for i in range(len(every))], g)
        ok = np.array([v.faithful for v in sj.judge_many(images, every)]).reshape(len(prompts), per_prompt)
        order = [
            tr.clip_scores(clip, tokenizer, images[i * per_prompt : (i + 1) * per_prompt], [p])[:, 0].argsort(
                descending=True
            ).numpy()
            for i, p in enumerate(prompts)
        ]  # fmt: skip
        out[f"guidance_{g}"] = {
            "top_1": float(np.mean([ok[i, o[0]] for i, o in enumerate(order)])),
            "mean": float(ok.mean()),
            "bottom_1": float(np.mean([ok[i, o[-1]] for i, o in enumerate(order)])),
        }
    return out


def vae_error(pipe, n: int, seed: int = 999) -> dict:
    out = {}
    for name, combos in (("held_out", held_out_combos()), ("train_combos", train_combos())):
        data = training_data(pipe, n, seed=seed, combos=combos)
        mse = tr.vae_reconstruction_mse(pipe.vae, data.images)
        out[f"vae_mse_{name}"] = mse
        out[f"vae_psnr_db_{name}"] = float(10 * np.log10(4.0 / mse))  # pixels in [-1, 1]: peak-to-peak 2
    return out


@torch.no_grad()
def vae_round_trip(pipe, n: int, seed: int = 4242, rotate: bool = True) -> dict:
    """The VAE's ceiling: drawn images through encode (posterior mean) -> decode, judged against their captions.

    No prompt can make the pipeline draw better than its decoder gives back a drawn picture.
    """
    data = training_data(pipe, n, seed=seed, rotate=rotate)
    row, _ = grade(tr.vae_round_trip_images(pipe.vae, data.images), [c.caption() for c in data.combos])
    return row


def single_image_seconds(pipe, prompt: str = "a red circle on a blue background", repeats: int = 3) -> float:
    """Wall time of one default pipeline call (1 image, the default steps, guidance 7.5)."""
    pipe(prompt, num_inference_steps=default_steps(), guidance_scale=GUIDANCE)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        pipe(prompt, num_inference_steps=default_steps(), guidance_scale=GUIDANCE)
    return (time.perf_counter() - t0) / repeats


_STEPS: int | None = None  # `measure(steps=...)`: the default sampler's steps for this measurement
_SCHEDULER: str | None = None  # `measure(scheduler=...)`: the default sampler for this measurement


_FAMILY = None  # the measured family's own default sampler (`helpers.pipeline.family_sampler`), when it records one


def default_steps() -> int:
    """The default sampler's steps: the family's own (else `helpers.pipeline.DEFAULT_STEPS`) unless `measure` was
    given some."""
    from helpers.pipeline import DEFAULT_STEPS

    return _STEPS or (_FAMILY.num_inference_steps if _FAMILY else DEFAULT_STEPS)


def default_scheduler() -> str:
    """The default sampler: the family's own (else `helpers.pipeline.DEFAULT_SCHEDULER`) unless `measure` was given
    one."""
    from helpers.pipeline import DEFAULT_SCHEDULER

    return _SCHEDULER or (_FAMILY.scheduler if _FAMILY else DEFAULT_SCHEDULER)


def measure(models_dir: Path = MODELS_DIR, smoke: bool = False, quick: bool | None = None,
            steps: int | None = None, scheduler: str | None = None) -> dict:  # fmt: skip
    """All the numbers, as a dict (also written to outputs/benchmarks/).

    `steps` and `scheduler` replace the default sampler's steps and kind, in every row that uses the default sampler
    (the guidance, diversity, negative-prompt, img2img and inpainting rows)."""
    global _STEPS, _SCHEDULER, _FAMILY
    from helpers.pipeline import _check_scheduler, family_sampler

    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps}: the default sampler needs at least 1 step; leave it out for the family's own")
    scheduler = None if scheduler is None else _check_scheduler(scheduler)
    previous = _STEPS, _SCHEDULER, _FAMILY
    _STEPS, _SCHEDULER, _FAMILY = steps, scheduler, family_sampler(Path(models_dir) / "toy-sd")
    try:
        return _measure(Path(models_dir), smoke if quick is None else quick)
    finally:
        _STEPS, _SCHEDULER, _FAMILY = previous


def _measure(models_dir: Path, quick: bool) -> dict:
    pipe, clip, tokenizer = load_family(models_dir)
    pipe.scheduler = with_scheduler(pipe, default_scheduler())  # the negative, img2img and inpainting rows use it
    t0 = time.perf_counter()
    result = {"models_dir": public_name(models_dir), "smoke": quick, "image_size": image_size(pipe)}
    result["vae_scaling_factor"] = pipe.vae.config.scaling_factor
    result |= faithful_rows(pipe, quick)
    result["negative"] = negative_rows(pipe, quick)
    result["img2img"] = img2img_rows(pipe, quick)
    result["inpaint"] = inpaint_rows(pipe, quick)
    unet9 = load_inpainting_unet(models_dir / "toy-sd")
    if unet9 is not None:  # the family's 9-channel inpainting UNet (SD-inpainting's recipe), when it has one
        result["inpaint_unet"] = inpaint_rows(pipe, quick, unet=unet9)
        for pad in INPAINT_CROP_PADDINGS[-1:] if quick else INPAINT_CROP_PADDINGS:
            result[f"inpaint_unet_crop_{pad}"] = inpaint_rows(pipe, quick, unet=unet9, padding_mask_crop=pad)
        if not quick:  # the same rows on other masks, backgrounds and seeds
            other = {"mask_seed": INPAINT_OTHER_MASKS, "seed": 19000}
            result["inpaint_unet_other_masks"] = inpaint_rows(pipe, quick, unet=unet9, **other)
            for pad in INPAINT_CROP_PADDINGS:
                result[f"inpaint_unet_crop_{pad}_other_masks"] = inpaint_rows(
                    pipe, quick, unet=unet9, padding_mask_crop=pad, **other
                )
    result["clip"] = clip_retrieval(clip, tokenizer, pipe, per_combo=1 if quick else 10)
    result["ranking"] = ranking_rows(pipe, clip, tokenizer, quick)
    result["vae"] = vae_error(pipe, n=32 if quick else 256)
    result["vae"]["round_trip"] = vae_round_trip(pipe, n=24 if quick else 300)
    result["seconds_per_image_single_call"] = single_image_seconds(pipe, repeats=1 if quick else 3)
    result["measure_seconds"] = time.perf_counter() - t0
    result["torch_threads"] = torch.get_num_threads()
    return result


def markdown_table(r: dict) -> str:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    g1, g7, div, neg = r["guidance_1.0"], r[f"guidance_{GUIDANCE}"], r["diversity"], r["negative"]
    both = lambda row: f"{pct(row['faithful'])} / {pct(row.get('faithful_held_out', float('nan')))}"  # noqa: E731
    sample = lambda row: f"{row['n']} images ({row.get('n_held_out', 0)} held-out)"  # noqa: E731
    rows = [
        (f"Prompt-faithful, guidance 1.0, {r['default']} (all / held-out)", both(g1), sample(g1), "clearly below 7.5"),
        (f"Prompt-faithful, guidance 7.5, {r['default']} (all / held-out)", both(g7), sample(g7), ">= 95%"),
        ("Mean shape IoU with the ideal shape (guidance 7.5)", f"{g7['mean_iou']:.3f}", sample(g7), ">= 0.85"),
        ("Median colour Delta E, shape / background (guidance 7.5)",
         f"{g7['median_colour_delta_e']:.1f} / {g7['median_background_delta_e']:.1f}", sample(g7), "<= 10"),
        ("Diversity: std of the centre across seeds, generated / training data (px)",
         f"{div['generated']['centre_std_px']:.2f} / {div['training_data']['centre_std_px']:.2f} "
         f"({pct(div['centre_ratio'])})", f"{div['n']} images", ">= 50%"),
        ("Diversity: std of the size across seeds, generated / training data (px)",
         f"{div['generated']['size_std_px']:.2f} / {div['training_data']['size_std_px']:.2f} "
         f"({pct(div['size_ratio'])})", f"{div['n']} images", ">= 50%"),
        ("Prompt-faithful, PNDM 50 steps (SD v1's default)", both(r["pndm_50"]), sample(r["pndm_50"]),
         "default >= this"),
    ]  # fmt: skip
    rows += [
        (f"Prompt-faithful, {s} 20 steps", both(r[f"{s}_20"]), sample(r[f"{s}_20"]), ">= 90%") for s in TABLE_SAMPLERS
    ]
    if "ddim_alpha_to_one_20" in r:
        rows.append(("Prompt-faithful, ddim 20 steps ending at alpha-bar 1 (set_alpha_to_one=True; SD's config: False)",
                     both(r["ddim_alpha_to_one_20"]), sample(r["ddim_alpha_to_one_20"]), ""))  # fmt: skip
    rows += [
        ("Shape is red, prompts without a colour: no negative / negative 'red' / negative 'a red shape'",
         f"{pct(neg['without']['red_rate'])} / {pct(neg['negative_red']['red_rate'])} / "
         f"{pct(neg['negative_a_red_shape']['red_rate'])}", f"{neg['n']} images each", "'red' <= 10%"),
        ("Faithful to the rest of the prompt: no negative / negative 'red' / 'a red shape'",
         f"{pct(neg['without']['faithful'])} / {pct(neg['negative_red']['faithful'])} / "
         f"{pct(neg['negative_a_red_shape']['faithful'])}", f"{neg['n']} images each", ""),
        ("Full prompt with negative 'green' (a colour it does not use): faithful",
         pct(neg["full_prompt_negative_green"]["faithful"]), f"{neg['full_prompt_negative_green']['n']} images", ""),
    ]  # fmt: skip
    for key, row in r["img2img"].items():
        if key.startswith("strength_"):
            rows.append((
                f"img2img, new shape colour, strength {key[9:]}: faithful / centre within 3 px / both",
                f"{pct(row['faithful'])} / {pct(row['centre_within_3px'])} / {pct(row['faithful_and_within_3px'])}",
                f"{row['n']} images", ">= 90% at some strength <= 0.7",
            ))  # fmt: skip
    inpaint_kinds = [("inpaint", "the UNet, blending latents"), ("inpaint_unet", "the 9-channel inpainting UNet")]
    inpaint_kinds += [(f"inpaint_unet_crop_{p}", f"the 9-channel inpainting UNet, padding_mask_crop={p}: crop, inpaint, "
                       "paste back") for p in INPAINT_CROP_PADDINGS]  # fmt: skip
    for key, how in inpaint_kinds:
        if key not in r:
            continue
        ip, other = r[key], r.get(f"{key}_other_masks")
        inside = pct(ip["shape_inside_mask_faithful"])
        if other:
            inside += f" / {pct(other['shape_inside_mask_faithful'])} (other masks)"
        rows += [
            (f"Inpainting ({how}): the named shape inside the mask", inside,
             f"{ip['n']} images" + (" per set" if other else ""), ">= 90%"),
            (f"Inpainting ({how}): mean change outside the mask, as output / original pasted back (of 255)",
             f"{ip['outside_change_raw_255']:.2f} / {ip['outside_change_pasted_255']:.2f}", f"{ip['n']} images",
             "<= 4"),
        ]  # fmt: skip
    rows += [
        ("Mini-CLIP retrieval top-1, held-out / training images (of 90 captions)",
         f"{pct(r['clip']['retrieval_top1_held_out'])} / {pct(r['clip']['retrieval_top1_train_combos'])}",
         f"{r['clip']['n_held_out']} / {r['clip']['n_train_combos']} images", ""),
    ]  # fmt: skip
    if "ranking" in r:  # results saved before the row existed have none
        rk = r["ranking"]
        rows += [
            (f"CLIP's best of {rk['per_prompt']}, guidance {g}: faithful top-1 / average / bottom-1 image",
             f"{pct(rk[f'guidance_{g}']['top_1'])} / {pct(rk[f'guidance_{g}']['mean'])} / "
             f"{pct(rk[f'guidance_{g}']['bottom_1'])}", f"{rk['n_prompts']} prompts", "")
            for g in (1.0, GUIDANCE)
        ]  # fmt: skip
    rows += [
        ("VAE round trip of drawn images (its ceiling): faithful / mean IoU",
         f"{pct(r['vae']['round_trip']['faithful'])} / {r['vae']['round_trip']['mean_iou']:.3f}",
         f"{r['vae']['round_trip']['n']} images", ""),
        ("VAE reconstruction MSE, held-out / training (pixels in [-1, 1])",
         f"{r['vae']['vae_mse_held_out']:.5f} / {r['vae']['vae_mse_train_combos']:.5f}", "", ""),
        (f"Seconds per image (1 image, {r['default']}, guidance 7.5)", f"{r['seconds_per_image_single_call']:.3f}",
         f"{r['torch_threads']} threads", ""),
    ]  # fmt: skip
    lines = [
        f"Judge: `helpers/strict_judge.py` (IoU >= {sj.IOU_MIN}, Delta E <= {sj.DELTA_E_MAX}). "
        f"Images {r['image_size']} px, VAE scaling_factor {r['vae_scaling_factor']:.4f}. "
        f"Command: `{COMMAND} --models {r['models_dir']}{' --quick' if r['smoke'] else ''}`.",
        "",
        "| metric | value | sample | target |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def misses_table(r: dict) -> str:
    """The rows with a target, and why their images missed: the number failing each of the judge's checks."""
    neg = r["negative"]
    rows = [(f"guidance 7.5, {r['default']}", r[f"guidance_{GUIDANCE}"]), ("pndm 50 steps", r["pndm_50"])]
    rows += [(f"{s} 20 steps", r[f"{s}_20"]) for s in (*TABLE_SAMPLERS, "ddim_alpha_to_one") if f"{s}_20" in r]
    rows += [(f"negative {k}", neg[key]) for k, key in (("none", "without"), ("'red'", "negative_red"),
                                                        ("'a red shape'", "negative_a_red_shape"))]  # fmt: skip
    rows += [("full prompt, negative 'green'", neg["full_prompt_negative_green"])]
    rows += [
        (f"img2img, strength {k[9:]} (judge only; the centre apart)", v)
        for k, v in r["img2img"].items()
        if k.startswith("strength_")
    ]
    rows = [(name, row["misses"]) for name, row in rows if "misses" in row]  # results saved before had none
    if not rows:
        return ""
    cols = [*sj.CHECKS, "IoU near the threshold"]
    lines = [
        f"Why images missed (the number failing each check; an image can fail several; near: IoU within {NEAR_IOU} "
        f"of {sj.IOU_MIN}):",
        "",
        "| row | missed | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    lines += [f"| {name} | {m['n']} | " + " | ".join(str(m[c]) for c in cols) + " |" for name, m in rows]
    return "\n".join(lines)


def save_result(r: dict) -> Path:
    out_dir = OUTPUTS_DIR / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
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
    ap.add_argument("--quick", "--smoke", action="store_true", dest="quick", help="small counts: seconds, not minutes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps of the default sampler (default: the family's own, else helpers.pipeline.DEFAULT_STEPS)",
    )
    ap.add_argument(
        "--scheduler",
        default=None,
        help="the default sampler for every row that uses it (default: the family's own, else DEFAULT_SCHEDULER)",
    )
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps {args.steps}: give at least 1, or leave it out for the family's default")
    if args.scheduler is not None:
        from helpers.pipeline import SCHEDULERS

        if args.scheduler.lower() not in SCHEDULERS:
            ap.error(f"--scheduler {args.scheduler}: choose one of {', '.join(SCHEDULERS)}")
    torch.set_num_threads(args.threads)
    r = measure(args.models, quick=args.quick, steps=args.steps, scheduler=args.scheduler)
    path = save_result(r)
    print(markdown_table(r))
    print("\n" + misses_table(r))
    print(f"\nSaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
