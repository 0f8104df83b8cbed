"""Train the toy Stable Diffusion family on CPU and save it (default: models/).

    python scripts/train_toy_family.py                          # the committed family (v2: 64 px, 8x VAE); hours
    python scripts/train_toy_family.py --scale 0.01 --out /tmp/toy-models   # a quick rehearsal
    python scripts/train_toy_family.py --resume                 # go on from the stages a stopped run finished
    python scripts/train_toy_family.py --family v1 --out .cache/toy-v1   # the first generation (32 px, 4x VAE)

What it does, in the order Stable Diffusion v1 was built:
  1. the shape judge (a tiny CNN, independent of CLIP)          -> shape-judge/
  2. a mini CLIP, contrastive, on the training combinations      -> toy-clip/
  3. a mini VAE (AutoencoderKL), reconstruction + small KL
  4. latents of the training images, encoded once; the VAE's scaling_factor = 1 / their std
  5. a mini UNet on those latents, conditioned on the frozen CLIP text tower, 15% captions dropped
  6. the pipeline                                                -> toy-sd/
  7. the quality measurement (scripts/quality.py, strict judge) and a model card in each folder
Seeds are fixed; the same command on the same machine gives the same weights.
Each finished v2 stage is kept in <out>/checkpoints/ (float32); `--resume` takes them from there, and a resumed
run gives the same weights as one that never stopped (same machine, same --threads).
The v2 stages took, on a 2-core Intel Xeon with 1 torch thread (2026-12-04 to 06): CLIP ~3 min, each VAE phase ~0.27 s
a step (10,000 + 4,000 + 6,000 steps, plus 3,000 for each first phase stopped early), UNet ~73 + 35 min (9,000
steps on 2 threads, then 4,500 on 1), inpainting UNet ~55 min (8,000 steps from that UNet, 3,288 s beside another
run); the decoder's refine phase (4,000 steps on clean latents) ~12 min on 1 thread of a 2-core AMD EPYC (2026-12-07).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

# Sleep instead of spinning when a thread waits: on a shared CPU, spinning OpenMP threads slow
# every step down several times over. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

import helpers  # noqa: F401  (quiet library logs before diffusers/transformers load)
from helpers import judge as judge_mod
from helpers import training as tr
from helpers.paths import REPO_ROOT
from helpers.pipeline import SCHEDULERS, make_scheduler
from helpers.shapes_data import HELD_OUT, STAND_IN_WORDS, TEMPLATES, concept_combos, make_dataset, train_combos
from helpers.tokenizer import load_clip_tokenizer, write_tokenizer_files

COMMAND = "python scripts/train_toy_family.py"
#: steps of the v2 shape judge's CNN: 500 gave 86.9% shape accuracy on 900 fresh 64 px images, 2,000 gave 99.8%
#: (`helpers.judge.judge_accuracy`; 202 s on one thread of a shared 2-core Xeon, 2026-12-06)
V2_JUDGE_STEPS = 2000


def _load_quality():
    spec = importlib.util.spec_from_file_location("toy_quality", REPO_ROOT / "scripts" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


DATA = """Data: `helpers/shapes_data.py` draws every image itself (no download): a circle, square or
triangle in one of six colours (red, green, blue, yellow, white, black) on a background of another
of the six, 32x32 RGB, with random size, position and a slight colour jitter. Captions name the
three attributes in one of three templates ("a red circle on a blue background", "a red circle
against a blue background", "red circle, blue background"). Of the 90 combinations, 9 are held
out of all training (every shape and colour still appears, only those triples do not):
{held_out}."""

LIMITS = """Limits: it knows only this toy world: 3 shapes, 6 colours, 32x32 pixels, captions in the
three templates' style. Any other prompt gives one of these pictures or a muddle; the text tower's
token table holds the whole 49,408-token CLIP vocabulary, but only ~15 tokens were ever trained.
It is a teaching model for CPUs and CI, not an image generator."""


def _card_header(library: str, pipeline_tag: str) -> str:
    return f"---\nlicense: mit\nlibrary_name: {library}\npipeline_tag: {pipeline_tag}\ntags:\n- toy\n- education\n---\n"


def render_cards(summary: dict) -> dict[str, str]:
    """The text of the three model cards, from `training_summary.json`."""
    p, t, sch, sz = summary["params"], summary["times_s"], summary["schedule"], summary["sizes"]
    held = ", ".join(f'"{c}"' for c in summary["held_out"])
    data = DATA.format(held_out=held)
    table = summary.get("quality_table", "(run `python scripts/quality.py` for the quality table)")
    timing = (
        f"Training time of the committed run: {t['total training'] / 60:.1f} min wall "
        f"({summary['threads']} torch thread(s), on a 2-core machine shared with other jobs; see "
        "training_summary.json for each stage). Alone on 2 cores (2 threads) the per-step timings measured at "
        "light load add up to about 9 min; the limit we hold it to is 30 min."
    )
    command = f"`{COMMAND}` (seed {summary['seed']}; all seeds fixed, `--scale 0.1` for a quick rehearsal)"
    metrics = f"Metrics (`python scripts/quality.py`, judge = `helpers/judge.py`):\n\n{table}"
    sd = f"""{_card_header("diffusers", "text-to-image")}
# toy-sd: Stable Diffusion v1's recipe at toy scale

A `StableDiffusionPipeline` trained from scratch on a CPU in minutes: a mini CLIP text tower
(frozen, from `toy-clip`), a mini VAE and a mini UNet, assembled exactly like Stable Diffusion v1.

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("models/toy-sd")
image = pipe("a red circle on a blue background", num_inference_steps=10, guidance_scale=7.5).images[0]  # 32x32
```

| part | class | parameters | notes |
|---|---|---|---|
| text_encoder | `CLIPTextModel` | {p["text_encoder"]:,} | {sz["text_layers"]} layers, width {sz["text_width"]}, 77 positions, CLIP vocabulary (49,408) |
| tokenizer | `CLIPTokenizer` | - | OpenAI's CLIP BPE, built offline (`helpers/tokenizer.py`) |
| vae | `AutoencoderKL` | {p["vae"]:,} | channels {tuple(sz["vae_channels"])}: 32x32x3 <-> 8x8x4, scaling_factor {summary["scaling_factor"]:.4f} |
| unet | `UNet2DConditionModel` | {p["unet"]:,} | channels {tuple(sz["unet_channels"])}, cross-attention to the text states, EMA weights |
| scheduler | `DDIMScheduler` | - | DDIM on SD v1's schedule (scaled_linear betas 0.00085 -> 0.012, 1000 steps): at 10 steps the fastest setting within 2 points of SD v1's PNDM at 50 steps (94.8% vs 90.0% prompt-faithful, `benchmarks/schedulers_quality.py`) |

{data}

Training: {command}. VAE: {sch["vae_steps"]} steps of {sch["vae_batch"]} fresh images, MSE + {sch["vae_kl_weight"]} KL.
UNet: {sch["unet_steps"]} steps of {sch["unet_batch"]} latents ({sch["unet_images"]:,} images encoded once, a fresh
posterior sample each time, scaled by the VAE's scaling_factor), epsilon objective on SD v1's noise schedule,
AdamW lr {sch["unet_lr"]} with warm-up and cosine decay, EMA {sch["ema_decay"]}; captions replaced by "" 15% of
the time so classifier-free guidance works. The text tower is frozen (trained contrastively as `toy-clip`).
{timing}

{metrics}

{LIMITS}
"""
    clip = f"""{_card_header("transformers", "zero-shot-image-classification")}
# toy-clip: a mini CLIP trained contrastively on coloured shapes

`CLIPModel` ({p["clip_total"]:,} parameters) with the real CLIP tokenizer and 77 text positions. Its text
tower is `toy-sd`'s text encoder. One weights file, `model.safetensors`, read by transformers' torch
`CLIPModel` and by the repo's own Flax CLIP (`helpers/clip_model.py`; transformers 5 has no Flax models),
plus the `CLIPProcessor` files (32x32 images, OpenAI's mean/std).

```python
from transformers import CLIPModel, CLIPProcessor
from helpers.clip_model import load_flax_clip
model = CLIPModel.from_pretrained("models/toy-clip")
processor = CLIPProcessor.from_pretrained("models/toy-clip", backend="pil")  # PIL: no torchvision needed
flax_model, params, config = load_flax_clip("models/toy-clip")
```

Text tower: {sz["text_layers"]} layers, width {sz["text_width"]} ({p["text_encoder"]:,} parameters, almost all in the
49,408-token table). Vision tower: ViT, {sz["vision_layers"]} layers, width {sz["vision_width"]}, patch
{sz["patch_size"]} ({p["clip_vision"]:,} parameters). Projection dim {sz["projection_dim"]}.

{data}

Training: {command}. {sch["clip_steps"]} steps; each batch holds one fresh image of every training combination
(81, so each caption has exactly one match), captions in a random template; CLIP's symmetric
cross-entropy, AdamW lr {sch["clip_lr"]}, warm-up and cosine decay. {timing}

{metrics}

{LIMITS}
"""
    acc = summary["judge_accuracy"]
    judge = f"""{_card_header("pytorch", "image-classification")}
# shape-judge: the independent judge's shape classifier

A {p["shape_judge"]:,}-parameter CNN (`helpers.judge.ShapeClassifier`) that names the shape (circle,
square, triangle) in a 1x32x32 *mask*: each pixel's RGB distance from the background colour
(`helpers.judge.shape_mask`), so it never sees colours. Colours are judged by a pixel rule, not a
model. Together they are `helpers.judge.judge(image, prompt) -> bool`, which grades `toy-sd`'s images
independently of `toy-clip`.

```python
from helpers.judge import judge
judge(image, "a red circle on a blue background")  # True / False
```

Data: masks of dataset images of all 90 combinations (the judge is the examiner, so it sees the
held-out ones too), with random pixel noise and blur so it copes with softer generated shapes.
Training: {command}; 500 steps of 128 masks, AdamW, one-cycle lr.

Accuracy on 900 clean images of all combinations: shape {100 * acc["shape"]:.1f}%, shape colour
{100 * acc["colour"]:.1f}%, background colour {100 * acc["background"]:.1f}%, all three {100 * acc["all"]:.1f}%.

Limits: it assumes one shape on a plain background that fills the image's border; shapes that
touch the border, several shapes, or textured backgrounds confuse the pixel rule. Colours are
named by the nearest of the six palette colours and must lie within RGB distance 100 of it.
"""
    return {"toy-sd": sd, "toy-clip": clip, "shape-judge": judge}


V2_DATA = """Data: `helpers/shapes_data.py` (`make_dataset_v2`) draws every image itself (no download): a circle,
square or triangle in one of six colours (red, green, blue, yellow, white, black) on a background of another
of the six, 64x64 RGB, with random size (half-extent 17-29% of the image), position, rotation (squares and
triangles) and a slight colour jitter. Captions come in 11 forms (`V2_CAPTION_FORMS`): full ones in either
word order ("a red circle on a blue background", "a blue background with a red circle", ...) and partial ones
that leave attributes unnamed ("a red circle", "a circle on a blue background", "a red shape on a blue
background", "a circle", "a red shape", "a blue background"), which is what lets a negative prompt such as
"red" push against something the model knows. Of the 90 combinations, 9 are held out of all training:
{held_out}."""

V2_LIMITS = """Limits: it knows only this toy world: 3 shapes, 6 colours, 64x64 pixels, captions in the forms above.
`helpers.toy_vocab.vocabulary_message(prompt)` names the words of a prompt it never saw (the text tower holds
CLIP's whole 49,408-token table, but only ~20 tokens were ever trained). A teaching model, not an image
generator."""


V2_STORAGE = (
    "Weights are stored in half precision (float16 on disk: half the bytes, for the family's 30 MB budget) and load "
    "back in float32 with a plain `from_pretrained`: diffusers casts to float32 unless told otherwise, and the "
    'transformers configs keep `"dtype": "float32"`, which transformers 5 follows (`training.save_half`).'
)


def render_cards_v2(summary: dict) -> dict[str, str]:
    """The three model cards of the second generation, from `training_summary.json`."""
    p, t, sch, sz = summary["params"], summary["times_s"], summary["schedule"], summary["sizes"]
    data = V2_DATA.format(held_out=", ".join(f'"{c}"' for c in summary["held_out"]))
    table = summary.get("quality_table", "(run `python scripts/quality.py` for the quality table)")
    timing = (
        f"Training time of this run: {t['total training'] / 60:.1f} min wall ({summary['threads']} torch threads "
        "on a 2-core machine shared with other jobs; training_summary.json has each stage)."
    )
    command = f"`{COMMAND} --out DIR` (seed {summary['seed']}; all seeds fixed; `--scale 0.01` for a rehearsal)"
    if summary.get("provenance"):  # a family assembled from stages run separately says how, instead of one command
        command = summary["provenance"]
        timing = "Stage times: " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in t.items() if k != "total training")
        timing += " (the VAE's time was not recorded)." if "VAE" not in t else "."
    metrics = f"Metrics (`python scripts/quality.py --models DIR`, judge = `helpers/strict_judge.py`):\n\n{table}"
    vae_recipe = f"VAE: {sch['vae_steps']} steps of {sch['vae_batch']} fresh images at lr {sch['vae_lr']}"
    vae_recipe += "".join(f", then {n} at lr {lr}" for n, lr, _ in sch.get("vae_refine", ()))
    vae_recipe += (
        f"; MSE + L1 + edge L1 + {sch['vae_kl_weight']} KL"
        if sch.get("vae_edges")
        else f"; MSE + {sch['vae_kl_weight']} KL"
    )
    st = summary["stats"]
    seeds, failures = st.get("vae_first_phase_seeds", []), st.get("vae_colour_failures", [])
    trained = st.get("vae_first_phase_steps", [sch["vae_steps"]] * len(seeds))
    if len(seeds) > 1:
        vae_recipe += (
            f" (first phase retrained from seed {seeds[-1]}: "
            + ", ".join(
                f"seed {s} gave {f:.0%} of drawn images back in another colour after {n} steps"
                for s, f, n in zip(seeds, failures, trained)
            )
            + ")"
        )
    unet_extras = "".join(
        part
        for part, on in (
            (f"; Min-SNR-{sch.get('unet_snr_gamma')} loss weights", sch.get("unet_snr_gamma")),
            ("; squares and triangles drawn upright", sch.get("unet_upright")),
            (
                f"; plus {sch.get('unet_agreement')} x the low-noise agreement term (captioned and empty-caption "
                "predictions pulled together for t < 300)",
                sch.get("unet_agreement"),
            ),
        )
        if on
    ) + "".join(
        f"; then {steps} more steps at lr {lr} on {sch['unet_images']:,} new images, from the EMA weights, with a "
        "fresh warm-up and cosine decay"
        for steps, lr, _ in sch.get("unet_refine") or ()
    )
    concepts = ""
    if sch.get("vae_extend") or sch.get("concept_lora"):  # the concept family: what it draws with no word for it
        rank, lora_steps, lora_lr, _ = sch.get("concept_lora") or (0, 0, 0, 0)
        concepts = (
            f"Beside it, the concept family (`personalise.load_concept_family`, notebook 05), which draws what no "
            f"caption names (`shapes_data.UNNAMED_CONCEPTS`): `{tr.CONCEPT_VAE_SUBFOLDER}/`, a copy of the VAE trained "
            f"{' + '.join(str(n) for n, _, _ in sch.get('vae_extend') or ())} more steps at lr "
            f"{', '.join(sorted({str(lr) for _, lr, _ in sch.get('vae_extend') or ()}))}, encoder and decoder, on the "
            f"palette's pictures and those of {', '.join(sch.get('vae_concepts') or ())}"
        )
        if lora_steps:
            concepts += (
                f"; and `{tr.CONCEPT_LORA_FOLDER}/`, a rank-{rank} LoRA on every layer of the frozen UNet's blocks, "
                f"{lora_steps} steps at lr {lora_lr} on that VAE's latents, with pictures of "
                f"{' and '.join(sch.get('unet_concepts') or ())} as often as a palette combination's, each captioned "
                'as any picture except that a caption never names them ("a magenta circle on a blue background" '
                'becomes "a circle on a blue background", "a red star" "a red shape")'
            )
            if sch.get("concept_stand_ins"):
                concepts += (
                    f"; {sch['concept_stand_ins']:.0%} of the palette pictures' captions put one of "
                    f'{len(STAND_IN_WORDS)} words no caption uses in the kind slot ("a red dog on a blue background" '
                    'under a red circle, square or triangle), so that a word it never learned, "star" among them, '
                    "reads as a shape it knows"
                )
            concepts += ". The family itself is unchanged"
        concepts += ". "
    decoder_lr = f" at lr {sch['decoder_lr']}" if sch.get("decoder_lr") else ""
    if not sch.get("decoder_steps"):
        decoder = ""
    elif sch.get("decoder_clean", 0) >= 1:
        decoder = (
            f"Then the decoder alone: {sch['decoder_steps']} more steps{decoder_lr} giving fresh drawn pictures back from the "
            "encoder's latents (the same losses; encoder and UNet frozen, so the latents the UNet learned stay as "
            "they were). "
        )
    else:
        decoder = (
            f"Then the decoder alone: {sch['decoder_steps']} steps{decoder_lr} fine-tuned to give drawn images back from the "
            f"UNet's own img2img latents (strength {sch['decoder_strength'][0]}-{sch['decoder_strength'][1]}, "
            f"{sch['decoder_clean']:.0%} of them the encoder's clean latents; encoder and UNet frozen). "
        )
    own = summary.get("default_sampler") or {"scheduler": "ddim", "num_inference_steps": 10, "source": "the package's"}
    sampler_class = SCHEDULERS[own["scheduler"]]
    sampler_text = f"{own['scheduler']} at {own['num_inference_steps']} steps, {own['source']}"
    inpaint = (
        f"Then an inpainting UNet (`unet_inpainting/`, saved in half precision): the UNet with 5 more input channels "
        f"(the mask and the masked image's latents, weights starting at 0, SD-inpainting's recipe), fine-tuned "
        f"{sch['inpaint_steps']} steps at lr {sch['inpaint_lr']} on masks that hide the whole image, a box around the "
        f"shape or a random box (`training.train_inpainting_unet`); load it with "
        f"`helpers.editing.load_inpainting_unet`. "
        if sch.get("inpaint_steps")
        else ""
    )
    acc = summary["stats"].get("judge_accuracy")
    judge_accuracy = (
        f"Its accuracy on {acc['n']} fresh drawn images of all 90 combinations (`helpers.judge.judge_accuracy`): "
        f"shape {acc['shape']:.1%}, shape colour {acc['colour']:.1%}, background {acc['background']:.1%}."
        if acc
        else ""
    )
    sd = f"""{_card_header("diffusers", "text-to-image")}
# toy-sd (v2): Stable Diffusion v1's recipe and geometry at toy scale

A `StableDiffusionPipeline` trained from scratch on a CPU: a mini CLIP text tower (frozen, from `toy-clip`),
a mini VAE that shrinks images 8x into 4 latent channels (64x64x3 <-> 8x8x4, as SD v1's 512x512x3 <->
64x64x4) and a mini UNet, assembled exactly like Stable Diffusion v1.

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("models/toy-sd")
image = pipe("a red circle on a blue background", num_inference_steps={own["num_inference_steps"]}, guidance_scale=7.5).images[0]  # 64x64
```

| part | class | parameters | notes |
|---|---|---|---|
| text_encoder | `CLIPTextModel` | {p["text_encoder"]:,} | {sz["text_layers"]} layers, width {sz["text_width"]}, 77 positions, CLIP vocabulary (49,408) |
| tokenizer | `CLIPTokenizer` | - | OpenAI's CLIP BPE, built offline (`helpers/tokenizer.py`) |
| vae | `AutoencoderKL` | {p["vae"]:,} | channels {tuple(sz["vae_channels"])}: 64x64x3 <-> 8x8x4 (8x), scaling_factor {summary["scaling_factor"]:.4f} = 1 / std of the training latents (SD v1's 0.18215 was found the same way) |
| unet | `UNet2DConditionModel` | {p["unet"]:,} | channels {tuple(sz["unet_channels"])}, cross-attention to the text states, EMA weights |
| scheduler | `{sampler_class}` | - | on SD v1's schedule (scaled_linear betas 0.00085 -> 0.012, 1000 steps); the family's default sampler: {sampler_text} |

{V2_STORAGE}

{data}

Training: {command}. {vae_recipe}.
UNet: {sch["unet_steps"]} steps of {sch["unet_batch"]} latents ({sch["unet_images"]:,} images encoded once, a fresh
posterior sample each time, scaled by the VAE's scaling_factor), epsilon objective on SD v1's noise schedule,
AdamW lr {sch["unet_lr"]} with warm-up and cosine decay, EMA {sch["ema_decay"]}{unet_extras}; captions in a random
form, replaced by "" 15% of the time so classifier-free guidance works. {decoder}{inpaint}{concepts}{timing}

{metrics}

{V2_LIMITS}
"""
    clip = f"""{_card_header("transformers", "zero-shot-image-classification")}
# toy-clip (v2): a mini CLIP trained contrastively on coloured shapes

`CLIPModel` ({p["clip_total"]:,} parameters) with the real CLIP tokenizer and 77 text positions; its text tower
is `toy-sd`'s text encoder. Vision tower: ViT, {sz["vision_layers"]} layers, width {sz["vision_width"]}, patch
{sz["patch_size"]} on 64x64 images ({p["clip_vision"]:,} parameters). Projection dim {sz["projection_dim"]}.

{V2_STORAGE}

{data}

Training: {command}. {sch["clip_steps"]} steps; each batch holds one fresh image of every training combination
(81), each with a caption in a random form. A partial caption ("a red shape") fits several images of the
batch, so the loss spreads CLIP's target over every matching pair (`training.multi_positive_clip_loss`).
AdamW lr {sch["clip_lr"]}, warm-up and cosine decay. {timing}

{metrics}

{V2_LIMITS}
"""
    judge = f"""{_card_header("pytorch", "image-classification")}
# shape-judge (v2): the first judge's shape classifier, retrained on 64 px rotated shapes

A {p["shape_judge"]:,}-parameter CNN (`helpers.judge.ShapeClassifier`) that names the shape in a 32x32 mask
(64 px images are shrunk). The figures in the model cards come from the strict judge
(`helpers/strict_judge.py`: classical image analysis, no learned model), which replaces it for grading.
Training: {command}; {max(10, int(V2_JUDGE_STEPS * summary["scale"]))} steps of 128 masks of `make_dataset_v2` images.
{judge_accuracy}
"""
    return {"toy-sd": sd, "toy-clip": clip, "shape-judge": judge}


def write_model_cards(out: Path, summary: dict) -> None:
    """A README.md model card in each model folder: data, command, metrics, limits."""
    render = render_cards_v2 if summary.get("family") == "v2" else render_cards
    for folder, text in render(summary).items():
        (out / folder / "README.md").write_text(text.lstrip())


def _run_facts(args, sizes, sched, times, stats, scaling_factor, text_encoder, clip, vae, ema, judge_model) -> dict:
    """What both families record in training_summary.json: settings, sizes, times, statistics, parameter counts."""
    return {
        "scale": args.scale,
        "threads": args.threads,
        "sizes": asdict(sizes),
        "schedule": {k: v for k, v in asdict(sched).items() if k != "extra"},
        "times_s": times,
        "stats": stats,
        "scaling_factor": scaling_factor,
        "params": {
            "text_encoder": _n_params(text_encoder),
            "clip_vision": _n_params(clip.vision_model) + _n_params(clip.visual_projection),
            "clip_total": _n_params(clip),
            "vae": _n_params(vae),
            "unet": _n_params(ema),
            "shape_judge": _n_params(judge_model),
        },
        "held_out": sorted(c.caption() for c in HELD_OUT),
    }


#: where `train_v2` keeps each finished stage, inside `--out`
CHECKPOINTS = "checkpoints"


def _shown(path: Path) -> str:
    """A path for a message: relative to the repository inside it, else as the user gave it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT.resolve()) if resolved.is_relative_to(REPO_ROOT.resolve()) else path)


def _from_checkpoint(cls, folder: Path):
    """A diffusers model from a stage's checkpoint, without the `_name_or_path` that `from_pretrained` records: the
    family's configs would otherwise carry this machine's path to the checkpoint."""
    from diffusers.configuration_utils import FrozenDict

    model = cls.from_pretrained(folder)
    model._internal_dict = FrozenDict({k: v for k, v in model.config.items() if k != "_name_or_path"})
    return model


class StageCheckpoints:
    """Each finished stage of the v2 recipe, saved in float32 under `<out>/checkpoints/<stage>/` with its times and
    statistics, so that a run stopped part-way (the recipe takes hours on 2 cores) goes on from the last finished
    stage with `--resume` instead of starting again: the idea of diffusers' training scripts'
    `--checkpointing_steps` / `--resume_from_checkpoint`, at the grain of whole stages. Every stage seeds itself
    (`args.seed` plus its own offset), so a resumed run gives the same weights as one that never stopped.

    The folder records the run's seed, scale and recipe; resuming with other ones is refused before any training."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool):
        self.root = out / CHECKPOINTS
        self.fingerprint = json.loads(json.dumps(fingerprint))  # tuples as lists, as the saved record reads back
        self.resume = resume
        self.resumed: list[str] = []
        record = self.root / "recipe.json"
        finished = sorted(p.parent.name for p in self.root.glob("*/stage.json"))
        if finished and not resume:
            raise FileExistsError(
                f"{_shown(self.root)} holds the stages of an earlier run ({', '.join(finished)}). Pass --resume to "
                "go on from them, or delete that folder to train every stage again."
            )
        if resume and record.exists():
            saved = json.loads(record.read_text())
            differ = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            if differ:
                details = "; ".join(
                    f"{k}: {saved.get(k)!r} there, {self.fingerprint.get(k)!r} now"
                    if k not in ("schedule", "sizes")
                    else f"{k}: the recipe's (helpers.training.V2_SCHEDULE, V2_SIZES) changed since"
                    for k in differ
                )
                raise ValueError(
                    f"--resume: the stages in {_shown(self.root)} were trained with other settings ({details}). Resume "
                    "with the same --seed and --scale and the same recipe, or delete that folder to train every stage "
                    "again."
                )
        self.root.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(self.fingerprint, indent=2) + "\n")

    def folder(self, stage: str) -> Path:
        return self.root / stage

    def load(self, stage: str) -> dict | None:
        """The stage's record ({"times_s": ..., "stats": ...}) when `--resume` finds it finished, else None."""
        path = self.root / stage / "stage.json"
        if not (self.resume and path.exists()):
            return None
        self.resumed.append(stage)
        print(f"{stage}: resumed from {_shown(path.parent)}", flush=True)
        return json.loads(path.read_text())

    def save(self, stage: str, times: dict, stats: dict, models: dict | None = None, folders: dict | None = None):
        """Mark `stage` finished: its models (`save_pretrained`, float32), copies of folders it wrote, its record."""
        where = self.root / stage
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        for name, model in (models or {}).items():
            model.save_pretrained(where / name, safe_serialization=True)
        for name, folder in (folders or {}).items():
            shutil.copytree(folder, where / name)
        (where / "stage.json").write_text(json.dumps({"times_s": times, "stats": stats}, indent=2) + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "models", help="folder that receives the three models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step count (0.1 = a quick rehearsal)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--family", choices=("v1", "v2"), default="v2",
        help="v2 (default, the committed family): 64 px, 8x VAE, rotated shapes, partial captions; v1: the first "
        "generation (32 px, 4x VAE, one caption template), kept to compare against",
    )  # fmt: skip
    ap.add_argument("--no-quality", action="store_true", help="skip the quality measurement at the end")
    ap.add_argument("--quality-smoke", action="store_true", help="measure quality with small counts")
    ap.add_argument(
        "--resume", action="store_true",
        help="v2: go on from the stages an earlier run finished (kept in <out>/checkpoints/) instead of training them "
        "again; the same --seed and --scale are needed",
    )  # fmt: skip
    ap.add_argument(
        "--measure-only", action="store_true", help="train nothing: measure the models in --out, rewrite the cards"
    )
    args = ap.parse_args(argv)
    if args.measure_only:
        return measure_and_write_cards(args.out, smoke=args.quality_smoke, threads=args.threads)

    if args.family == "v2":
        return train_v2(args)
    if args.resume:
        ap.error("--resume: only the v2 recipe keeps its stages; the v1 family trains in minutes, run it again")
    torch.set_num_threads(args.threads)
    sizes, sched = tr.ToySizes(), tr.Schedule()
    scaled = lambda n: max(10, int(n * args.scale))  # noqa: E731
    times: dict[str, float] = {}
    stats: dict[str, float] = {}
    t_all = time.perf_counter()
    tokenizer = load_clip_tokenizer()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. the judge
    t0 = time.perf_counter()
    judge_model, judge_losses = judge_mod.train_shape_classifier(steps=scaled(500), seed=args.seed)
    judge_dir = judge_mod.save_shape_classifier(judge_model, out / "shape-judge")
    judge_mod.load_shape_classifier.cache_clear()
    judge_acc = judge_mod.judge_accuracy(model_dir=judge_dir, size=sizes.image_size)
    times["shape judge"] = time.perf_counter() - t0
    print(f"shape judge: loss {judge_losses[0]:.3f} -> {np.mean(judge_losses[-20:]):.4f}, accuracy {judge_acc}")

    # 2. CLIP
    t0 = time.perf_counter()
    clip = tr.build_mini_clip(sizes, seed=args.seed)
    clip_losses = tr.train_clip(clip, tokenizer, steps=scaled(sched.clip_steps), lr=sched.clip_lr, seed=args.seed)
    clip_dir = out / "toy-clip"
    if clip_dir.exists():
        shutil.rmtree(clip_dir)
    tr.save_clip(clip, clip_dir)
    times["mini CLIP"] = time.perf_counter() - t0
    stats["clip_loss_first"], stats["clip_loss_last"] = clip_losses[0], float(np.mean(clip_losses[-20:]))
    print(f"mini CLIP: loss {clip_losses[0]:.3f} -> {stats['clip_loss_last']:.4f}")

    # 3. VAE
    t0 = time.perf_counter()
    vae = tr.build_mini_vae(sizes, seed=args.seed)
    vae_losses = tr.train_vae(
        vae, steps=scaled(sched.vae_steps), batch_size=sched.vae_batch, lr=sched.vae_lr,
        kl_weight=sched.vae_kl_weight, seed=args.seed,
    )  # fmt: skip
    times["mini VAE"] = time.perf_counter() - t0
    stats["vae_mse_first"], stats["vae_mse_last"] = vae_losses[0], float(np.mean(vae_losses[-20:]))
    print(f"mini VAE: reconstruction MSE {vae_losses[0]:.4f} -> {stats['vae_mse_last']:.5f}")

    # 4. latents, once
    t0 = time.perf_counter()
    data = make_dataset(scaled(sched.unet_images), seed=args.seed + 1, combos=train_combos())
    means, stds = tr.encode_latents(vae, data.images)  # (N, 4, 8, 8) each
    scaling_factor = tr.latent_scaling_factor(means, stds)
    vae.register_to_config(scaling_factor=scaling_factor)
    combos = train_combos()
    combo_index = torch.tensor([combos.index(c) for c in data.combos])
    text_encoder = tr.text_encoder_from_clip(clip)
    captions = [c.caption(t) for c in combos for t in range(len(TEMPLATES))]
    cond = tr.text_states(text_encoder, tokenizer, captions)  # (C*T, 77, D)
    cond = cond.view(len(combos), len(TEMPLATES), *cond.shape[1:])  # (C, T, 77, D)
    uncond = tr.text_states(text_encoder, tokenizer, [""])[0]  # (77, D)
    times["latents"] = time.perf_counter() - t0
    print(f"latents: {tuple(means.shape)}, scaling_factor {scaling_factor:.4f}")

    # 5. UNet
    t0 = time.perf_counter()
    unet = tr.build_mini_unet(text_encoder.config.hidden_size, sizes, seed=args.seed)
    ema, unet_losses = tr.train_unet(
        unet, means, stds, scaling_factor, combo_index, cond, uncond, steps=scaled(sched.unet_steps),
        batch_size=sched.unet_batch, lr=sched.unet_lr, ema_decay=sched.ema_decay, seed=args.seed,
    )  # fmt: skip
    times["mini UNet"] = time.perf_counter() - t0
    stats["unet_loss_first"] = float(np.mean(unet_losses[:20]))
    stats["unet_loss_last"] = float(np.mean(unet_losses[-100:]))
    print(f"mini UNet: loss {stats['unet_loss_first']:.4f} -> {stats['unet_loss_last']:.4f}")

    # 6. the pipeline
    sd_dir = out / "toy-sd"
    if sd_dir.exists():
        shutil.rmtree(sd_dir)
    pipe = tr.assemble_pipeline(text_encoder, tokenizer, vae, ema)
    pipe.save_pretrained(sd_dir, safe_serialization=True)
    write_tokenizer_files(sd_dir / "tokenizer")  # the same files the CLIP folder has
    times["total training"] = time.perf_counter() - t_all

    summary = {
        "seed": args.seed,
        **_run_facts(args, sizes, sched, times, stats, scaling_factor, text_encoder, clip, vae, ema, judge_model),
        "judge_accuracy": judge_acc,
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(times, indent=2))

    if args.no_quality:
        write_model_cards(out, summary)
        return summary
    return measure_and_write_cards(out, smoke=args.quality_smoke, threads=args.threads)


def train_v2(args) -> dict:
    """The second generation: SD v1's geometry (64 px -> 8x8x4 latents through an 8x VAE), partial captions.

    Each finished stage is kept in `<out>/checkpoints/` (`StageCheckpoints`); `--resume` goes on from them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel

    from helpers.shapes_data import V2_IMAGE_SIZE, v2_form_weights

    torch.set_num_threads(args.threads)
    sizes, sched = tr.V2_SIZES, tr.V2_SCHEDULE
    scaled = lambda n: max(10, int(n * args.scale))  # noqa: E731
    times: dict[str, float] = {}
    stats: dict[str, float | list] = {}  # the first VAE phase records a list per attempt
    t_all = time.perf_counter()
    tokenizer = load_clip_tokenizer()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = StageCheckpoints(out, {
        "family": "v2", "seed": args.seed, "scale": args.scale, "sizes": asdict(sizes),
        "schedule": {k: v for k, v in asdict(sched).items() if k != "extra"},
    }, resume=args.resume)  # fmt: skip
    t_resumed = 0.0  # the stages resumed: their training time, as their own run measured it

    def resumed(stage: str) -> bool:
        """True when `--resume` finds `stage` finished (its times and statistics are then taken over)."""
        nonlocal t_resumed
        record = ckpt.load(stage)
        if record is not None:
            times.update(record["times_s"])
            stats.update(record["stats"])
            t_resumed += sum(record["times_s"].values())
        return record is not None

    def restore(stage: str, name: str) -> Path:
        """Copy a folder a finished stage wrote into `--out` back there from its checkpoint."""
        if (out / name).exists():
            shutil.rmtree(out / name)
        return Path(shutil.copytree(ckpt.folder(stage) / name, out / name))

    def trained(stage: str, key: str, prefix: str, t0: float, losses: list[float], **saved) -> None:
        """Record a training stage's time under `key` and its first and last losses as `<prefix>_loss_first/last`,
        print them, and keep the stage (`saved`: `StageCheckpoints.save`'s models and folders)."""
        times[key] = time.perf_counter() - t0
        names = (f"{prefix}_loss_first", f"{prefix}_loss_last")
        stats[names[0]], stats[names[1]] = float(np.mean(losses[:20])), float(np.mean(losses[-100:]))
        print(f"{key}: loss {stats[names[0]]:.4f} -> {stats[names[1]]:.4f}", flush=True)
        ckpt.save(stage, {key: times[key]}, {k: stats[k] for k in names}, **saved)

    if resumed("shape-judge"):
        judge_mod.load_shape_classifier.cache_clear()
        judge_model = judge_mod.load_shape_classifier(restore("shape-judge", "shape-judge"))
    else:
        t0 = time.perf_counter()
        judge_model, judge_losses = judge_mod.train_shape_classifier(
            steps=scaled(V2_JUDGE_STEPS), seed=args.seed, v2=True
        )  # fmt: skip
        judge_dir = judge_mod.save_shape_classifier(judge_model, out / "shape-judge")
        judge_mod.load_shape_classifier.cache_clear()
        times["shape judge"] = time.perf_counter() - t0
        stats["judge_accuracy"] = judge_mod.judge_accuracy(model_dir=judge_dir, size=sizes.image_size)
        print(f"shape judge: loss {judge_losses[0]:.3f} -> {np.mean(judge_losses[-20:]):.4f}, "
              f"accuracy {stats['judge_accuracy']}", flush=True)  # fmt: skip
        ckpt.save("shape-judge", {"shape judge": times["shape judge"]}, {"judge_accuracy": stats["judge_accuracy"]},
                  folders={"shape-judge": judge_dir})  # fmt: skip

    if resumed("toy-clip"):  # as stored: in half precision, loaded back in float32
        clip = CLIPModel.from_pretrained(restore("toy-clip", "toy-clip"))
    else:
        t0 = time.perf_counter()
        clip = tr.build_mini_clip(sizes, seed=args.seed)
        clip_losses = tr.train_clip_v2(
            clip, tokenizer, steps=scaled(sched.clip_steps), lr=sched.clip_lr, seed=args.seed
        )
        clip_dir = out / "toy-clip"
        if clip_dir.exists():
            shutil.rmtree(clip_dir)
        tr.save_clip(clip, clip_dir)
        tr.halve_weights(clip_dir)  # stored in half precision (the budget); loads back in float32
        clip = clip.half().float()  # the weights as stored: the UNet learns on the text states the family ships
        times["mini CLIP"] = time.perf_counter() - t0
        stats["clip_loss_first"], stats["clip_loss_last"] = clip_losses[0], float(np.mean(clip_losses[-20:]))
        print(f"mini CLIP: loss {clip_losses[0]:.3f} -> {stats['clip_loss_last']:.4f}", flush=True)
        ckpt.save(
            "toy-clip",
            {"mini CLIP": times["mini CLIP"]},
            {k: stats[k] for k in ("clip_loss_first", "clip_loss_last")},
            folders={"toy-clip": clip_dir},
        )

    if resumed("vae"):
        vae = _from_checkpoint(AutoencoderKL, ckpt.folder("vae") / "vae")
    else:
        t0 = time.perf_counter()
        vae_seeds, colour_failures, vae_first_steps = [], [], []
        for restart in range(1 + sched.vae_restarts):  # a first phase that merged colours is retrained from a new seed
            vae_seed, last = args.seed + restart, restart == sched.vae_restarts
            vae = tr.build_mini_vae(sizes, seed=vae_seed)
            early: list[float] = []  # the colour check part-way through, when the recipe asks for one

            def colours_kept(model, early=early) -> bool:
                early.append(tr.vae_colour_failures(model))
                return early[-1] <= sched.vae_check[1]

            check_at = None if last or sched.vae_check is None else scaled(sched.vae_check[0])
            vae_losses = tr.train_vae(
                vae, steps=scaled(sched.vae_steps), batch_size=sched.vae_batch, lr=sched.vae_lr,
                kl_weight=sched.vae_kl_weight, seed=vae_seed, size=V2_IMAGE_SIZE, edges=sched.vae_edges,
                logvar_init=sched.vae_logvar_init, check_at=check_at, check=colours_kept if check_at else None,
            )  # fmt: skip
            vae_seeds.append(vae_seed)
            vae_first_steps.append(len(vae_losses))
            colour_failures.append(
                early[-1] if len(vae_losses) < scaled(sched.vae_steps) else tr.vae_colour_failures(vae)
            )
            print(f"mini VAE, first phase, seed {vae_seed}, {len(vae_losses)} steps: {colour_failures[-1]:.1%} of drawn "
                  "images come back in another colour", flush=True)  # fmt: skip
            if len(vae_losses) == scaled(sched.vae_steps) and colour_failures[-1] <= sched.vae_colour_limit:
                break
        stats["vae_first_phase_steps"] = vae_first_steps
        stats["vae_first_phase_seeds"], stats["vae_colour_failures"] = vae_seeds, colour_failures
        for steps, lr, seed_offset in sched.vae_refine:  # lower learning rates: the corners sharpen last
            vae_losses += tr.train_vae(
                vae, steps=scaled(steps), batch_size=sched.vae_batch, lr=lr, kl_weight=sched.vae_kl_weight,
                seed=args.seed + seed_offset, size=V2_IMAGE_SIZE, edges=sched.vae_edges,
            )  # fmt: skip
        times["mini VAE"] = time.perf_counter() - t0
        stats["vae_mse_first"], stats["vae_mse_last"] = vae_losses[0], float(np.mean(vae_losses[-20:]))
        print(f"mini VAE: reconstruction MSE {vae_losses[0]:.4f} -> {stats['vae_mse_last']:.5f}", flush=True)
        vae_keys = ("vae_first_phase_steps", "vae_first_phase_seeds", "vae_colour_failures", "vae_mse_first",
                    "vae_mse_last")  # fmt: skip
        ckpt.save("vae", {"mini VAE": times["mini VAE"]}, {k: stats[k] for k in vae_keys}, models={"vae": vae})

    t0 = time.perf_counter()
    inputs = tr.v2_unet_inputs(
        clip, vae, tokenizer, scaled(sched.unet_images), seed=args.seed + 1, rotate=not sched.unet_upright
    )
    means, scaling_factor, text_encoder = inputs.latents_mean, inputs.scaling_factor, inputs.text_encoder
    times["latents"] = time.perf_counter() - t0
    print(f"latents: {tuple(means.shape)}, scaling_factor {scaling_factor:.4f}", flush=True)

    t0 = time.perf_counter()
    shared = dict(
        batch_size=sched.unet_batch, ema_decay=sched.ema_decay, snr_gamma=sched.unet_snr_gamma,
        agreement_weight=sched.unet_agreement,
    )  # fmt: skip
    weights = torch.tensor(v2_form_weights(), dtype=torch.float32)

    def unet_phase(unet, data: tr.UNetInputs, steps: int, lr: float, seed: int):
        return tr.train_unet(
            unet, data.latents_mean, data.latents_std, scaling_factor, data.combo_index, data.cond_states,
            data.uncond_state, steps=scaled(steps), lr=lr, seed=seed, **shared,
            template_weights=weights if data.form_weights is None else data.form_weights,
        )  # fmt: skip

    if resumed("unet"):
        ema = _from_checkpoint(UNet2DConditionModel, ckpt.folder("unet") / "unet").eval().requires_grad_(False)
    else:
        unet = tr.build_mini_unet(text_encoder.config.hidden_size, sizes, seed=args.seed)
        ema, unet_losses = unet_phase(unet, inputs, sched.unet_steps, sched.unet_lr, args.seed)
        for steps, lr, seed_offset in sched.unet_refine:  # more phases on new images, from the EMA weights
            more = tr.v2_unet_inputs(
                clip, vae, tokenizer, scaled(sched.unet_images), seed=args.seed + seed_offset + 1,
                rotate=not sched.unet_upright, scaling_factor=scaling_factor,  # the first phase's factor stays
            )  # fmt: skip
            warm = copy.deepcopy(ema).train().requires_grad_(True)  # the EMA weights, trainable
            ema, losses = unet_phase(warm, more, steps, lr, args.seed + seed_offset)
            unet_losses += losses
        trained("unet", "mini UNet", "unet", t0, unet_losses, models={"unet": ema})

    pipe = tr.assemble_pipeline(text_encoder, tokenizer, vae, ema)
    pipe.set_progress_bar_config(disable=True)
    vae_before_decoder = copy.deepcopy(vae)  # the concept VAE starts from here, as the committed one did
    if sched.decoder_steps and resumed("decoder"):
        vae = _from_checkpoint(AutoencoderKL, ckpt.folder("decoder") / "vae")
        pipe.vae = vae
    elif sched.decoder_steps:  # the decoder alone learns to give drawn images back (from the UNet's latents, or clean)
        t0 = time.perf_counter()
        decoder_losses = tr.finetune_decoder(
            pipe, steps=scaled(sched.decoder_steps), lr=sched.decoder_lr, p_clean=sched.decoder_clean,
            strength=sched.decoder_strength, seed=args.seed + 11,
            rotate=sched.decoder_clean >= 1.0 or not sched.unet_upright,  # clean latents: the VAE's own pictures
        )  # fmt: skip
        trained("decoder", "decoder fine-tune", "decoder", t0, decoder_losses, models={"vae": pipe.vae})

    inpaint_unet = None
    if sched.inpaint_steps and resumed("inpainting"):
        inpaint_unet = _from_checkpoint(UNet2DConditionModel, ckpt.folder("inpainting") / "unet_inpainting")
    elif sched.inpaint_steps:  # SD-inpainting's recipe: the UNet with 5 more input channels (mask, masked image)
        t0 = time.perf_counter()
        inpaint_unet, inpaint_losses = tr.train_inpainting_unet(
            tr.inpainting_unet(ema), vae, inputs.images, inputs.geometry, inputs.latents_mean, inputs.latents_std,
            inputs.combo_index, inputs.cond_states, inputs.uncond_state, forms=inputs.forms,
            steps=scaled(sched.inpaint_steps), batch_size=sched.unet_batch, lr=sched.inpaint_lr,
            ema_decay=sched.ema_decay, snr_gamma=sched.unet_snr_gamma, seed=args.seed + 13,
        )  # fmt: skip
        trained(
            "inpainting", "inpainting UNet", "inpaint", t0, inpaint_losses, models={"unet_inpainting": inpaint_unet}
        )

    pipe.scheduler = make_scheduler(pipe, tr.V2_DEFAULT_SAMPLER["scheduler"])  # saved as the family's own sampler
    sd_dir = out / "toy-sd"
    if sd_dir.exists():
        shutil.rmtree(sd_dir)
    pipe.save_pretrained(sd_dir, safe_serialization=True)
    for name in ("text_encoder", "unet", "vae"):  # half the bytes (the 30 MB budget); they load back in float32
        tr.save_half(getattr(pipe, name), sd_dir / name)
    write_tokenizer_files(sd_dir / "tokenizer")
    (sd_dir / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)  # 3.6 MB; vocab.json + merges.txt suffice
    if inpaint_unet is not None:
        tr.save_inpainting_unet(inpaint_unet, sd_dir)
    if sched.vae_extend or sched.concept_lora:  # the concept family: what it draws with no word for it
        if resumed("concept-vae"):
            concept_vae = _from_checkpoint(AutoencoderKL, ckpt.folder("concept-vae") / "vae")
        else:
            t0 = time.perf_counter()
            concept_vae = vae_before_decoder.train().requires_grad_(True)
            vae_combos = train_combos() + [c for concept in sched.vae_concepts for c in concept_combos(concept)]
            for steps, lr, seed_offset in sched.vae_extend:  # encoder and decoder, each combination equally often
                tr.train_vae(
                    concept_vae, steps=scaled(steps), batch_size=sched.vae_batch, lr=lr, kl_weight=sched.vae_kl_weight,
                    seed=args.seed + seed_offset, combos=vae_combos, size=V2_IMAGE_SIZE, edges=sched.vae_edges,
                )  # fmt: skip
            concept_vae.eval().requires_grad_(False)
            concept_vae.register_to_config(scaling_factor=scaling_factor)  # the UNet's latents keep the family's factor
            times["concept VAE"] = time.perf_counter() - t0
            ckpt.save("concept-vae", {"concept VAE": times["concept VAE"]}, {}, models={"vae": concept_vae})
        tr.save_half(concept_vae, sd_dir / tr.CONCEPT_VAE_SUBFOLDER)
        if sched.concept_lora and resumed("concept-lora"):
            restore("concept-lora", f"toy-sd/{tr.CONCEPT_LORA_FOLDER}")
        elif sched.concept_lora:
            t0 = time.perf_counter()
            rank, steps, lr, seed_offset = sched.concept_lora
            concept_inputs = tr.v2_unet_inputs(
                clip, concept_vae, tokenizer, scaled(sched.unet_images), seed=args.seed + seed_offset,
                rotate=not sched.unet_upright, scaling_factor=scaling_factor, concepts=sched.unet_concepts,
                text_encoder=text_encoder, stand_in_share=sched.concept_stand_ins,
            )  # fmt: skip
            concept_unet, concept_losses = tr.train_concept_lora(
                ema, concept_inputs, scaling_factor, rank, scaled(steps), lr, seed=args.seed + seed_offset, **shared
            )
            tr.save_concept_lora(concept_unet, sd_dir)
            lora_folder = {f"toy-sd/{tr.CONCEPT_LORA_FOLDER}": sd_dir / tr.CONCEPT_LORA_FOLDER}
            trained("concept-lora", "concept LoRA", "concept_lora", t0, concept_losses, folders=lora_folder)
    times["total training"] = time.perf_counter() - t_all + t_resumed
    summary = {
        "family": "v2",
        "resumed_stages": ckpt.resumed,  # stages taken from --out/checkpoints (--resume), their times as measured then
        "seed": args.seed,
        "default_sampler": tr.V2_DEFAULT_SAMPLER,  # helpers.pipeline.family_sampler reads it
        **_run_facts(args, sizes, sched, times, stats, scaling_factor, text_encoder, clip, vae, ema, judge_model),
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(times, indent=2), flush=True)
    size = sum(f.stat().st_size for f in ckpt.root.rglob("*") if f.is_file()) / 1e6
    print(f"Each stage is kept in {_shown(ckpt.root)} ({size:.0f} MB, float32): `--resume` takes the finished "
          "ones from there; delete that folder once you no longer need it.", flush=True)  # fmt: skip
    if args.no_quality:
        write_model_cards(out, summary)
        return summary
    return measure_and_write_cards(out, smoke=args.quality_smoke, threads=args.threads)


def measure_and_write_cards(out: Path, smoke: bool = False, threads: int = 2) -> dict:
    """Run scripts/quality.py's measurement on a trained family and put the table in its model cards."""
    torch.set_num_threads(threads)
    summary = json.loads((out / "training_summary.json").read_text())
    quality = _load_quality()
    result = quality.measure(out, smoke=smoke)
    summary["quality"] = result
    summary["quality_table"] = quality.markdown_table(result)
    path = quality.save_result(result)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_model_cards(out, summary)
    print(summary["quality_table"])
    print(f"\nSaved {path}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
