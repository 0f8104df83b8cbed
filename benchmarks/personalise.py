"""Teaching the toy family a new word on a CPU: what textual inversion and LoRA learn, in how long, at what cost.

Four runs on the committed offline family's concept sibling (`--family concepts`, notebook 05's: the family with
its `vae_concepts/` VAE and its `concepts_lora/` LoRA fused, `P.load_concept_family`), each with
`helpers.personalise` and SD's own loss:

- textual inversion of "<magenta>", initialised from "red": a colour no caption of the family names, which the
  concept sibling draws under captions that leave the colour unnamed (`shapes_data.UNNAMED_CONCEPTS`);
- textual inversion of "<orange>", the comparison: a colour the VAE gives back but the UNet never drew, between
  red and yellow, which it draws;
- LoRA (rank 4; `--lora-targets`, default the cross-attention's to_k/to_v, notebook 05's) for "star", a word in
  CLIP's vocabulary no caption used, a shape the concept sibling draws under "a red shape"; half of its batch
  (`--prior-images`) is the family's own training images (DreamBooth's prior preservation, Ruiz et al. 2022,
  https://arxiv.org/abs/2208.12242) and 15% of its captions are empty, which hold old prompts' drift down;
- the upper bound beside it (`--full-steps`, 0 skips it): every weight of the UNet fine-tuned on the same pictures
  (`P.finetune_unet`). What this does not learn, no adapter on this UNet will in as many steps.

For each: training time and steps; the training loss on a fixed held-out batch before and after (same noise and
timesteps, so comparable); the strict judge (`helpers.strict_judge`) on the new prompt over `--seeds` seeds, as
faithful / every name right (colour, kind, background; any IoU) / right colour / right kind; the same judge on the VAE's reconstructions of drawn images of that
prompt ("VAE ceiling": no text- or UNet-side method can draw what the decoder cannot); old prompts' rates with the
adapter loaded from its file into a fresh pipeline and after `unload_lora_weights()`; the adapter's size next to
the UNet's. Generation: the family's own sampler and steps, guidance 7.5. The defaults are notebook 05's settings
(its images, steps, learning rates and batch), so the training times are the notebook's.

    python benchmarks/personalise.py --threads 2             # notebook 05's settings on 2 cores
    python benchmarks/personalise.py --smoke                 # a few steps: checks the code path only

Where the star stops (`--star-radius`): at the family's sizes a star's points are under one of the 8x8 latent
pixels wide, so the VAE's encoder hands the UNet rounded stars to learn. `--star-radius 0.35 0.44` draws the stars
(training, held-out and ceiling pictures) larger, where the VAE keeps them; `--methods` picks the rows and
`--lora-targets all` puts the adapter on every layer instead of the attention projections:

    python benchmarks/personalise.py --threads 1 --methods lora,full --star-radius 0.35 0.44 --full-steps 800
    python benchmarks/personalise.py --threads 1 --methods lora --star-radius 0.35 0.44 --lora-targets all \
        --rank 16 --lora-steps 400

`--model` runs it on another family folder (a candidate retrain); `--family plain` on the family itself, which never
drew magenta or a star; `--lora-targets attention` puts the adapter on every attention projection (diffusers'
examples, `P.LORA_TARGETS`) instead of the cross-attention's keys and values (Custom Diffusion's choice,
`P.LORA_TARGETS_CROSS`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from helpers import personalise as P
from helpers.paths import MODELS_DIR
from helpers.pipeline import default_sampler
from helpers.shapes_data import UNNAMED_CONCEPTS, V2_RADIUS, Combo, max_radius

OLD_COMBOS = [  # training combinations of the family, every shape, colour and background at least once
    Combo("circle", "red", "blue"), Combo("square", "green", "white"), Combo("triangle", "yellow", "black"),
    Combo("circle", "white", "red"), Combo("square", "black", "yellow"), Combo("triangle", "blue", "white"),
    Combo("circle", "yellow", "green"), Combo("square", "red", "black"),
]  # fmt: skip
RUNS = (  # method, concept, prompt judged, init word (textual inversion)
    ("textual inversion", "magenta", "a <magenta> circle on a blue background", "red"),
    ("textual inversion", "orange", "a <orange> circle on a blue background", "red"),
    ("LoRA", "star", "a red star on a blue background", None),
)
#: the upper bound beside the LoRA row (`--full-steps`): every UNet weight trained on the LoRA's pictures
FULL_RUN = ("full fine-tune (upper bound)", "star", "a red star on a blue background", None)
METHOD_KEYS = {"textual inversion": "ti", "LoRA": "lora"}


def load(model: Path, family: str = "concepts"):
    """The family's pipeline; `family="concepts"`: its concept sibling (`P.load_concept_family`), as notebook 05."""
    from diffusers import StableDiffusionPipeline
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars, one per pipeline, would drown the tables

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return P.load_concept_family(pipe, model) if family == "concepts" else pipe


def rates(pipe, prompt: str, seeds, steps: int) -> tuple[dict[str, float], np.ndarray]:
    images = P.generate_images(pipe, prompt, seeds, steps)
    return P.judge_rates(images, prompt), images


def old_prompts(pipe, seeds, steps: int) -> tuple[dict[str, float], np.ndarray]:
    """Judge rates over every old prompt x seed, and the images (for exact comparisons)."""
    images = np.concatenate([P.generate_images(pipe, c.caption(), seeds, steps) for c in OLD_COMBOS])
    captions = [c.caption() for c in OLD_COMBOS for _ in seeds]
    per = [P.judge_rates(im[None], cap) for im, cap in zip(images, captions)]
    return {k: float(np.mean([r[k] for r in per])) for k in per[0]}, images


def run(method: str, concept: str, prompt: str, init_word: str | None, base, base_old, args, folder: Path) -> dict:
    size = P.image_size(base)
    pipe = load(args.model, args.family)
    seeds = range(args.seeds)
    if method == "textual inversion":
        n_train, steps = args.ti_images, args.ti_steps
    else:  # LoRA and its upper bound train on the same pictures
        n_train, steps = args.lora_images, args.lora_steps if method == "LoRA" else args.full_steps
    radius = tuple(args.star_radius) if args.star_radius and concept == "star" else None
    data = P.concept_images(concept, n_train, 0, size, radius=radius)
    held_out = P.concept_images(concept, args.eval_images, 1, size, radius=radius)
    family = P.family_images(args.eval_images, seed=2, size=size)
    row: dict = {"method": method, "concept": concept, "prompt": prompt, "steps": steps, "train_images": n_train,
                 "radius": list(radius) if radius else None}  # fmt: skip
    if method == "textual inversion":
        token = P.CONCEPT_WORDS[concept]
        P.add_token(pipe, token, init_word)
        row["before"] = rates(pipe, prompt, seeds, args.sample_steps)[0]
        row["loss_before"] = P.fixed_batch_loss(pipe, held_out, held_out.captions)
        start = time.perf_counter()
        losses = P.train_textual_inversion(pipe, token, data, data.captions, steps=steps, lr=args.ti_lr,
                                           batch_size=args.batch_size, seed=0, progress=False)  # fmt: skip
        row["train_s"] = time.perf_counter() - start
        path = P.save_textual_inversion(pipe, token, folder / f"{concept}.safetensors")
        loaded = load(args.model, args.family)
        loaded.load_textual_inversion(path)
        row["adapter_params"] = int(P.token_embedding(pipe, token).numel())
        row["adapter_bytes"] = path.stat().st_size
        unloaded = base  # the token changes no other prompt: the base pipeline is the "unloaded" one
    else:  # LoRA, or its upper bound: every UNet weight, on the same pictures
        row["before"] = rates(pipe, prompt, seeds, args.sample_steps)[0]
        row["loss_before"] = P.fixed_batch_loss(pipe, held_out, held_out.captions)
        concepts = UNNAMED_CONCEPTS if args.family == "concepts" else ()  # the concept sibling's own pictures too
        prior = P.family_images(args.prior_images, seed=3, size=size, concepts=concepts)  # the family's own
        images, captions = np.concatenate([data.images, prior.images]), data.captions + prior.captions
        if method == "LoRA":
            targets = {"attention": P.LORA_TARGETS, "cross": P.LORA_TARGETS_CROSS, "all": P.LORA_TARGETS_ALL}[
                args.lora_targets
            ]
            P.add_lora(pipe.unet, rank=args.rank, alpha=args.rank, seed=0, target_modules=targets)  # seeded A
        train, lr = (P.train_lora, args.lora_lr) if method == "LoRA" else (P.finetune_unet, args.full_lr)
        start = time.perf_counter()
        losses = train(pipe, images, captions, steps=steps, lr=lr, batch_size=args.batch_size, seed=0, progress=False)
        row["train_s"] = time.perf_counter() - start
        if method == "LoRA":
            P.save_lora(pipe, folder / "star-lora")
            loaded = load(args.model, args.family)
            loaded.load_lora_weights(folder / "star-lora", weight_name=P.LORA_WEIGHT_NAME)
            row["adapter_params"] = P.parameter_counts(pipe.unet)["adapter"]
            row["adapter_bytes"] = P.lora_size(folder / "star-lora")
            unloaded = None
        else:  # nothing saved apart: the fine-tuned pipeline is the result, a fresh one the "unloaded" state
            loaded, unloaded = pipe, base
            row["adapter_params"] = P.parameter_counts(base.unet)["unet"]
            row["adapter_bytes"] = 4 * row["adapter_params"]  # the whole UNet, float32
    row["s_per_step"] = row["train_s"] / max(1, len(losses))
    row["loss_after"] = P.fixed_batch_loss(pipe, held_out, held_out.captions)
    row["old_loss_before"] = P.fixed_batch_loss(base, family.images, family.captions)
    row["old_loss_after"] = P.fixed_batch_loss(pipe, family.images, family.captions)
    row["after"], trained_images = rates(pipe, prompt, seeds, args.sample_steps)
    row["after_loaded"], loaded_images = rates(loaded, prompt, seeds, args.sample_steps)
    row["loaded_max_diff"] = float(np.abs(loaded_images - trained_images).max())  # the file holds what was trained
    row["ceiling"] = P.vae_ceiling(base, prompt, args.seeds, radius=radius)
    row["old_loaded"], old_images = old_prompts(loaded, range(args.old_seeds), args.sample_steps)
    if unloaded is None:
        loaded.unload_lora_weights()
        unloaded = loaded
    row["old_unloaded"], old_unloaded_images = old_prompts(unloaded, range(args.old_seeds), args.sample_steps)
    row["old_loaded_max_diff"] = float(np.abs(old_images - base_old).max())
    row["old_unloaded_max_diff"] = float(np.abs(old_unloaded_images - base_old).max())
    row["unet_params"] = P.parameter_counts(base.unet)["unet"]
    row["unet_bytes"] = 4 * row["unet_params"]  # float32
    return row


def fmt_rates(r: dict) -> str:
    return f"{r['faithful']:.0%} / {r['named']:.0%} / {r['colour']:.0%} / {r['kind']:.0%}"


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--model", type=Path, default=MODELS_DIR / "toy-sd")
    ap.add_argument("--family", choices=("concepts", "plain"), default="concepts",
                    help="concepts: the family's concept sibling, as notebook 05 (P.load_concept_family); plain: the "
                    "family as it is")  # fmt: skip
    ap.add_argument("--seeds", type=int, default=16, help="seeds of the new prompt (and drawn images for the ceiling)")
    ap.add_argument("--old-seeds", type=int, default=4, help="seeds per old prompt (8 old prompts)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ti-steps", type=int, default=250)  # notebook 05's TI = dict(steps=250, lr=5e-3, ...)
    ap.add_argument("--ti-lr", type=float, default=5e-3)
    ap.add_argument("--ti-images", type=int, default=48)
    ap.add_argument("--lora-steps", type=int, default=200)  # notebook 05's LORA = dict(steps=200, lr=1e-3, ...)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--lora-images", type=int, default=96)
    ap.add_argument("--prior-images", type=int, default=None,
                    help="the family's own pictures beside the LoRA's (prior preservation; default: as many as "
                    "--lora-images, notebook 05's)")  # fmt: skip
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument(
        "--lora-targets",
        choices=("attention", "cross", "all"),
        default="cross",
        help="attention: to_q/to_k/to_v/to_out.0 (diffusers' default); cross: the cross-attention's to_k/to_v "
        "(Custom Diffusion's choice); all: every linear and conv layer",
    )
    ap.add_argument(
        "--star-radius",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="draw the stars with this half-extent range (share of the image; default: the family's)",
    )
    ap.add_argument(
        "--methods",
        default="ti,lora,full",
        help="comma-separated rows to run: ti (both textual inversions), lora, full (needs --full-steps)",
    )
    ap.add_argument("--full-steps", type=int, default=1600,
                    help="then fine-tune every UNet weight on the LoRA's pictures this many steps (0: skip)")  # fmt: skip
    ap.add_argument("--full-lr", type=float, default=2e-4)
    ap.add_argument("--eval-images", type=int, default=64, help="held-out images for the fixed-batch losses")
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="sampling steps of every judged image (default: the family's own sampler's, as notebook 05)")  # fmt: skip
    args = ap.parse_args()
    methods = set(args.methods.split(","))
    if not methods or methods - {"ti", "lora", "full"}:
        ap.error(f"--methods takes a comma-separated subset of ti, lora, full; got {args.methods!r}.")
    if methods == {"full"} and args.full_steps <= 0:
        ap.error("--methods full with --full-steps 0 runs nothing: give --full-steps N (default 1600).")
    top = max_radius("star")  # draw_v2's own bound: larger stars would cross the border
    if args.star_radius and not 0 < args.star_radius[0] <= args.star_radius[1] <= top:
        ap.error(
            f"--star-radius LOW HIGH needs 0 < LOW <= HIGH <= {top:.2f} (a share of the image); got {args.star_radius}."
        )
    if args.prior_images is not None and args.prior_images < 1:
        ap.error(
            f"--prior-images needs at least 1 (the family's own pictures beside the stars); got {args.prior_images}."
        )
    if args.smoke:
        args.seeds, args.old_seeds, args.ti_steps, args.lora_steps = 2, 1, 3, 3
        args.full_steps = min(args.full_steps, 3)
        args.ti_images, args.lora_images, args.eval_images, args.batch_size = 6, 6, 4, 4
        args.sample_steps = args.sample_steps or 2
    args.prior_images = args.prior_images or args.lora_images  # as many as the star pictures: half of the data
    threads = common.apply_threads(args.threads)
    machine = common.machine_info()  # after the threads are set: it records torch's thread count
    base = load(args.model, args.family)
    args.sample_steps = args.sample_steps or default_sampler(base).num_inference_steps
    base_old = old_prompts(base, range(args.old_seeds), args.sample_steps)[1]
    folder = Path(tempfile.mkdtemp(prefix="personalise-"))
    try:
        runs = [r for r in RUNS if METHOD_KEYS[r[0]] in methods]
        runs += [FULL_RUN] if args.full_steps > 0 and "full" in methods else []
        rows = [run(*spec, base, base_old, args, folder) for spec in runs]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for r in rows:
        r |= {f"{k}_rates": fmt_rates(r[k]) for k in ("before", "after", "after_loaded", "ceiling", "old_loaded",
                                                      "old_unloaded")}  # fmt: skip
        r["prompt_md"] = f"`{r['prompt']}`"  # backticks: markdown would read <magenta> as an HTML tag
        r["loss"] = f"{r['loss_before']:.4f} -> {r['loss_after']:.4f}"
        r["old_loss"] = f"{r['old_loss_before']:.4f} -> {r['old_loss_after']:.4f}"
        r["size"] = f"{r['adapter_params']:,} params, {r['adapter_bytes'] / 1024:.1f} KiB"
        r["unet_size"] = f"{r['unet_params']:,} params, {r['unet_bytes'] / 1024**2:.1f} MiB"
    n_old = len(OLD_COMBOS) * args.old_seeds
    print(
        f"\n### What the adapter does to old prompts ({len(OLD_COMBOS)} prompts x {args.old_seeds} seeds = {n_old})\n"
    )
    print(common.markdown_table(rows, {
        "method": "method", "concept": "concept", "old_loaded_rates": "old prompts, loaded (faithful / named / colour / kind)",
        "old_loaded_max_diff": "max abs diff vs base", "old_unloaded_rates": "unloaded", "old_unloaded_max_diff":
        "max abs diff vs base", "old_loss": "old captions' loss", "size": "adapter", "unet_size": "UNet",
    }))  # fmt: skip
    columns = {
        "method": "method", "concept": "concept", "steps": "steps", "train_s": "train s", "s_per_step": "s/step",
        "loss": "held-out loss", "prompt_md": "prompt (judged)", "before_rates": "before (faithful / named / colour / kind)",
        "after_loaded_rates": "after, loaded from file", "loaded_max_diff": "file vs trained (max abs diff)",
        "ceiling_rates": "VAE ceiling",
    }  # fmt: skip
    ran = {r["method"] for r in rows}
    settings = [  # one line per kind of run that ran
        f"Textual inversion: lr {args.ti_lr}, batch {args.batch_size}, {args.ti_images} images."
        if "textual inversion" in ran
        else None,
        f"LoRA: rank {args.rank}, alpha {args.rank}, on the {args.lora_targets} layers, lr {args.lora_lr}, batch "
        f"{args.batch_size}, {args.lora_images} star images + {args.prior_images} family images (prior "
        "preservation, `P.family_images`), 15% of captions empty (caption dropout, as in the UNet's training)."
        if "LoRA" in ran
        else None,
        f"Full fine-tune: every UNet weight, {args.full_steps} steps at lr {args.full_lr}, on the LoRA's pictures "
        "(star and family images, caption dropout): the most any adapter could learn from them; its 'adapter' is "
        "the whole UNet and 'after, loaded' the fine-tuned pipeline itself."
        if FULL_RUN[0] in ran
        else None,
    ]
    settings = [line for line in settings if line]
    lo, hi = args.star_radius or V2_RADIUS
    stars = f"{lo:.0%}-{hi:.0%} of the image" + (" (the family's sizes)" if not args.star_radius else "")
    common.report(
        "personalise" if not args.star_radius else "personalise-star-size",
        f"Teaching the toy family a new word ({args.seeds} seeds per prompt, {threads} torch thread(s))",
        rows, columns, args, machine=machine,
        notes=[
            "faithful / named / colour / kind: shares of images the strict judge (IoU >= 0.93 with the ideal shape, "
            "Delta E <= 25) finds faithful; in which it finds every name of the caption (colour, kind and background, "
            "whatever the IoU); with the named colour; with the named kind. The committed 64 px family draws 97.5% of "
            "its own prompts faithfully (scripts/quality.py), so 'faithful' is meaningful; the others say which part "
            "of a new concept was learned.",
            "VAE ceiling: the judge on the toy VAE's reconstructions of drawn images of the prompt: an adapter on the "
            "text encoder or the UNet cannot draw better than the decoder can paint.",
            "held-out loss: SD's training loss on drawn images of the concept, same noise and timesteps before and "
            "after. Old captions' loss: the same on the family's own images (drift of old prompts).",
            f"Stars drawn with a half-extent of {stars}: training, held-out and VAE-ceiling pictures.",
            *settings,
            f"Every judged image: {type(base.scheduler).__name__}, {args.sample_steps} steps, guidance 7.5.",
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
