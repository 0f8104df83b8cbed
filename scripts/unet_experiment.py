"""Train one mini UNet on a saved mini CLIP and VAE, and judge it along the way: the runs behind the README's
UNet table (issue 12: what the second family's UNet lacks).

    python scripts/unet_experiment.py --clip DIR/toy-clip --vae DIR/toy-sd/vae --steps 3000 --batch 32
    python scripts/unet_experiment.py ... --snr-gamma 5 --evals 3000,6000,9000 --steps 9000
    python scripts/unet_experiment.py ... --upright          # squares and triangles drawn unrotated

The CLIP and the VAE come from `python scripts/train_toy_family.py --family v2 --out DIR` (or any saved
`CLIPModel` and `AutoencoderKL`). The UNet is built and trained exactly as that script does (the second
generation's sizes, caption forms and weights; `helpers.training.train_unet`), with the loop's settings from the
command line. At each step count of `--evals` the EMA weights draw the quality script's prompt set (4 seeds for
each training combination, 8 for each held-out one: 396 images) at guidance 7.5 with the default sampler (DDIM;
`--sample-steps`, default 10), and the strict judge grades them. Prints one table row per evaluation and writes
the numbers to outputs/benchmarks/unet_experiment_<time>.json (a new file every run; `--out` elsewhere). Training
time excludes the evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleep, don't spin, while waiting (shared CPUs)

import numpy as np
import torch

import helpers  # noqa: F401  (quiet library logs before diffusers/transformers load)
from helpers import strict_judge as sj
from helpers import training as tr
from helpers.paths import OUTPUTS_DIR, REPO_ROOT
from helpers.pipeline import DEFAULT_STEPS
from helpers.shapes_data import v2_form_weights
from helpers.tokenizer import load_clip_tokenizer

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import quality  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, required=True, help="a saved mini CLIP (CLIPModel folder)")
    ap.add_argument("--vae", type=Path, required=True, help="a saved AutoencoderKL folder")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.998, help="EMA decay of the weights that are judged")
    ap.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR loss weights (none: plain MSE)")
    ap.add_argument("--images", type=int, default=12150, help="training images, encoded once to latents")
    ap.add_argument("--channels", default="32,64,64", help="the UNet's block_out_channels")
    ap.add_argument("--heads", default="8", help="attention heads per block: one number, or one per block")
    ap.add_argument(
        "--prediction-type", choices=tr.PREDICTION_TYPES, default="epsilon",
        help="what the UNet predicts (sampled with DDIM set to the same)",
    )  # fmt: skip
    ap.add_argument(
        "--agreement", type=float, default=0.0,
        help="weight of the low-noise agreement of the conditional and unconditional predictions (train_unet)",
    )  # fmt: skip
    ap.add_argument("--agreement-t-max", type=int, default=300, help="the timesteps below which it applies")
    ap.add_argument("--upright", action="store_true", help="draw squares and triangles unrotated")
    ap.add_argument("--evals", default=None, help="step counts at which to judge (default: the last step)")
    ap.add_argument(
        "--decoder-steps", type=int, default=0,
        help="then fine-tune the VAE decoder on the UNet's img2img latents this many steps and judge again",
    )  # fmt: skip
    ap.add_argument("--decoder-clean", type=float, default=0.3, help="share of clean latents in that fine-tune")
    ap.add_argument("--decoder-strength", default="0.3,0.8", help="img2img strength range of that fine-tune")
    ap.add_argument(
        "--sample-steps", type=int, default=None, help="DDIM steps of the judged samples (default: the family's, 10)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init", type=Path, default=None,
        help="continue from a saved UNet folder (e.g. models/toy-sd/unet) instead of a new one; --channels and "
        "--heads are then its own, and so is --vae's scaling_factor (the one that UNet learned on)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None, help="save the pipeline at each evaluation under this folder")
    ap.add_argument("--out", type=Path, default=OUTPUTS_DIR / "benchmarks", help="folder for the JSON result")
    ap.add_argument("--quick", action="store_true", help="judge 1 seed per combination (90 images), not 396")
    args = ap.parse_args(argv)
    for name in ("clip", "vae", "init"):
        folder = getattr(args, name)
        if folder is not None and not (folder / "config.json").is_file():
            ap.error(f"--{name} {folder}: no config.json there; give a folder written by save_pretrained")
    args.eval_steps = sorted({int(s) for s in args.evals.split(",")}) if args.evals else [args.steps]
    if not all(0 < s <= args.steps for s in args.eval_steps):
        ap.error(f"--evals {args.evals}: every step count must be between 1 and --steps {args.steps}")
    return args


def judge_row(pipe, prompts, seeds, held, steps: int | None = None) -> dict:
    """The strict judge's figures for one evaluation (`steps` DDIM steps), with the faithful rate per shape kind."""
    images = quality.generate(pipe, prompts, seeds, quality.GUIDANCE, steps=steps)
    row, inspections = quality.grade(images, prompts, held)
    kinds: dict[str, list[bool]] = {}
    for found, prompt in zip(inspections, prompts):
        kinds.setdefault(sj.parse_caption(prompt).shape, []).append(sj.verdict(found, prompt).faithful)
    row["faithful_by_kind"] = {k: float(np.mean(v)) for k, v in kinds.items()}
    row["sample_steps"] = steps or DEFAULT_STEPS
    return row


def print_row(label: str, train_s: float, row: dict) -> None:
    kinds = " / ".join(f"{row['faithful_by_kind'][k]:.1%}" for k in ("circle", "square", "triangle"))
    print(
        f"| {label} | {train_s:.0f} | {row['faithful']:.1%} | {row['faithful_held_out']:.1%} "
        f"| {row['mean_iou']:.3f} | {kinds} |",
        flush=True,
    )


def main(argv=None) -> list[dict]:
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = load_clip_tokenizer()
    clip = CLIPModel.from_pretrained(args.clip).eval()
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    keep = vae.config.scaling_factor if args.init is not None else None  # --init's UNet learned on the VAE's own
    inputs = tr.v2_unet_inputs(
        clip, vae, tokenizer, args.images, seed=args.seed + 1, rotate=not args.upright, scaling_factor=keep
    )
    text_encoder, scaling_factor = inputs.text_encoder, inputs.scaling_factor
    heads = tuple(int(h) for h in args.heads.split(","))
    sizes = replace(
        tr.V2_SIZES,
        unet_channels=tuple(int(c) for c in args.channels.split(",")),
        unet_heads=heads[0] if len(heads) == 1 else heads,
        latent_channels=vae.config.latent_channels,  # the UNet reads and writes the VAE's latents
    )
    if args.init is None:
        unet = tr.build_mini_unet(text_encoder.config.hidden_size, sizes, seed=args.seed)
    else:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(args.init).float()
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise SystemExit(
                f"--init's UNet reads {unet.config.cross_attention_dim}-wide text states, but this CLIP gives "
                f"{text_encoder.config.hidden_size}: give the CLIP it was trained with."
            )
    prompts, seeds, held, _ = quality.prompt_set(1, 1) if args.quick else quality.prompt_set(4, 8)

    rows: list[dict] = []
    clock = {"start": time.perf_counter(), "judging": 0.0}
    print("| steps | train s | faithful | held-out | mean IoU | circle / square / triangle |", flush=True)
    print("|---|---|---|---|---|---|", flush=True)

    def evaluate(step: int, ema) -> None:
        if step not in args.eval_steps:
            return
        t0 = time.perf_counter()
        train_s = t0 - clock["start"] - clock["judging"]
        pipe = tr.assemble_pipeline(text_encoder, tokenizer, vae, ema, tr.default_scheduler(args.prediction_type))
        pipe.set_progress_bar_config(disable=True)
        row = {"steps": step, "train_s": round(train_s, 1), **judge_row(pipe, prompts, seeds, held, args.sample_steps)}
        rows.append(row)
        if args.save:
            pipe.save_pretrained(args.save / f"toy-sd-{step}")
        print_row(str(step), train_s, row)
        clock["judging"] += time.perf_counter() - t0

    ema, _ = tr.train_unet(
        unet, inputs.latents_mean, inputs.latents_std, scaling_factor, inputs.combo_index, inputs.cond_states,
        inputs.uncond_state, steps=args.steps, batch_size=args.batch, lr=args.lr, ema_decay=args.ema, seed=args.seed, progress=False, snr_gamma=args.snr_gamma, prediction_type=args.prediction_type,
        agreement_weight=args.agreement, agreement_t_max=args.agreement_t_max,
        template_weights=torch.tensor(v2_form_weights(), dtype=torch.float32), callback=evaluate,
    )  # fmt: skip
    if args.decoder_steps:
        pipe = tr.assemble_pipeline(text_encoder, tokenizer, vae, ema, tr.default_scheduler(args.prediction_type))
        pipe.set_progress_bar_config(disable=True)
        n_drawn = 90 if args.quick else 300
        before = quality.vae_round_trip(pipe, n_drawn, rotate=not args.upright)["faithful"]  # the decoder's ceiling
        t0 = time.perf_counter()
        lo, hi = (float(s) for s in args.decoder_strength.split(","))
        tr.finetune_decoder(
            pipe, steps=args.decoder_steps, p_clean=args.decoder_clean, strength=(lo, hi), rotate=not args.upright,
            progress=False,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        row = {"steps": args.steps, "decoder_steps": args.decoder_steps, "decoder_train_s": round(train_s, 1)}
        row |= judge_row(pipe, prompts, seeds, held, args.sample_steps)
        row["vae_round_trip_before"] = before
        row["vae_round_trip"] = quality.vae_round_trip(pipe, n_drawn, rotate=not args.upright)["faithful"]
        rows.append(row)
        if args.save:
            pipe.save_pretrained(args.save / f"toy-sd-{args.steps}-decoder-{args.decoder_steps}")
        print_row(f"{args.steps} + decoder {args.decoder_steps}", train_s, row)
        print(
            f"VAE round trip of {n_drawn} drawn images (as this run draws them), before / after the decoder "
            f"fine-tune: {before:.1%} / {row['vae_round_trip']:.1%}",
            flush=True,
        )
    settings = {k: v for k, v in vars(args).items() if not isinstance(v, Path)}  # no paths: nothing private
    settings["init"] = None if args.init is None else f"{args.init.parent.name}/{args.init.name}"
    result = {"settings": settings, "scaling_factor": scaling_factor, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"unet_experiment_{datetime.now(UTC):%Y%m%dT%H%M%S%f}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.name} in {args.out.name}/", flush=True)
    return rows


if __name__ == "__main__":
    main()
