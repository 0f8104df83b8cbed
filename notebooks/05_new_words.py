# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Teach the model a new word: textual inversion and LoRA, on a CPU
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-step-by-step/sd-step-by-step/blob/main/notebooks/05_new_words.ipynb)
#
# After generating, what people most want is a model that knows *their* thing: a style, a face, an object. Two
# ways to teach it, both small enough to share as a file and both loaded with diffusers' own APIs:
#
# - **textual inversion** (Gal et al. 2022) learns a new *word*: one new row of the text encoder's token table,
#   everything else frozen;
# - **LoRA** (Hu et al. 2021) learns a small *change of the UNet*: low-rank updates of its attention layers.
#
# The offline toy family (64 px pictures, an 8x VAE as in SD) was trained on shapes in six named colours; it never saw
# magenta or a star. A new word finds what a model can already draw: Gal et al. (2022) find words for things Stable
# Diffusion's predecessor, which had seen nearly everything, could draw but not name. So we use the family's *concept
# sibling*: the same family after it was also shown magenta shapes and stars, under captions that never name them
# ("a circle on a blue background", "a red shape on a blue background"). Its VAE saw those pictures too, and a LoRA
# on its UNet learned them; both come with the family (made by `scripts/train_toy_family.py`) and load with diffusers'
# own calls. It draws magenta shapes and stars, and has no word for them: a word it never learned, "star" among them,
# it reads as one of the shapes it knows, as Stable Diffusion answers a word it never learned with something it knows.
# We teach it the word `<magenta>` with
# textual inversion and the word "star" with LoRA, each in about a minute on a CPU, with Stable Diffusion's own
# training loss, and we measure what it learned, what else moved, and what a new word cannot do (a colour the UNet
# never drew).
#
# **What you will be able to do**
# - write the loss Stable Diffusion is trained with, and use it to train something new;
# - say what textual inversion trains (one row: 32 numbers here, 768 for SD v1), check that prompts without the
#   new token give the very same images, and save and load the word with `pipe.load_textual_inversion`;
# - say what LoRA adds to a layer ($W + \frac{\alpha}{r} B A$), count its parameters, and save, load and remove
#   an adapter with `pipe.load_lora_weights` and `pipe.unload_lora_weights`;
# - test what the frozen decoder can draw at all, and say what neither method can teach;
# - choose where an adapter sits, and measure what it moves in the prompts it was not trained for.
#
# **Needs**: no GPU. On a CPU with the offline toy family: 250 steps of textual inversion and 200 of LoRA, each about
# a minute on one busy CPU thread (the cells print their times), and the whole notebook in a few minutes. With a real
# model on a GPU the training cells skip and point to section 5, the recipe for v1-4
# (images, steps, memory, time, with sources); the loading calls are the same. The helpers are in
# `helpers/personalise.py`: open it beside this notebook.

# %% tags=["skip-execution", "nbval-skip"]
# Colab / Gradient only: install this project's release, one wheel with the helpers, the offline models and
# the configs. Where `helpers` is already importable (a clone after `make setup`, CI) it does nothing. Colab's
# torch, jax and Hugging Face packages already satisfy our ranges, so pip keeps every one of them.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("helpers") is None:
    spec = "sd-step-by-step @ git+https://github.com/sd-step-by-step/sd-step-by-step@v0.3.0"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

# %%
import helpers  # first: it quietens diffusers' and transformers' import-time log messages
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers import personalise as P
from helpers import strict_judge as judge
from helpers.diffusion import q_sample
from helpers.pipeline import choose_model, default_sampler, is_toy_family, load_pipeline
from helpers.plotting import show_images
from helpers.shapes_data import UNNAMED_CONCEPTS, Combo

SEED = 0
N = 16  # seeds per measurement: SEED, ..., SEED + 15
SEEDS = range(SEED, SEED + N)
MODEL, WHY = choose_model()  # set SD_MODEL, or pass a Hub id / folder, to choose another
print("model:", MODEL)
print("why:  ", WHY)

# %%
# The Hub login, only where it is needed: on Colab/Gradient with a Hub model (a hidden prompt, or an HF_TOKEN
# secret; then accept the license at https://huggingface.co/CompVis/stable-diffusion-v1-4 once). On a laptop
# "Run all" never stops here: the offline model needs no Hub.
from helpers.runtime import log_in_if_needed

print("Hub login:", log_in_if_needed(MODEL))

# %% [markdown]
# ## 1. What the model can draw but cannot name
#
# Training needs float32 (half-precision gradients underflow), so we load the pipeline in float32 even where the
# other notebooks use fp16. For the toy family, `P.load_concept_family` then makes it the concept sibling: it swaps
# in the VAE from `vae_concepts/` and loads the LoRA from `concepts_lora/` with `pipe.load_lora_weights`; then
# `pipe.fuse_lora()` adds $\frac{\alpha}{r} B A$ into each weight and `pipe.unload_lora_weights()` drops the
# adapter's layers. The change stays in the UNet's own weights, and the LoRA we train in section 4 sits on top of
# it. The training images come from the dataset code that drew the family's own training data: magenta shapes and
# stars, now with captions that name them ("a <magenta> square on a green background", "a red star on a blue
# background").

# %%
def load_family():
    """The model in float32; the toy family as its concept sibling (magenta shapes and stars, no words for them)."""
    model = load_pipeline(MODEL, dtype=torch.float32)
    model.set_progress_bar_config(disable=True)
    return P.load_concept_family(model, MODEL) if is_toy_family(model) else model


pipe = load_family()
TOY = is_toy_family(pipe)
H = P.image_size(pipe)
STEPS = default_sampler(pipe).num_inference_steps  # the family's own sampler and steps (notebook 01) for every sample
OUT = Path(tempfile.mkdtemp(prefix="new_words_"))  # where the learned files go (deleted with the machine)
COLOUR_PROMPT = "a <magenta> circle on a blue background"
STAR_PROMPT = "a red star on a blue background"
print(f"{type(pipe.scheduler).__name__}, {STEPS} steps; images {H}x{H}; toy family: {TOY}")
if TOY:
    magenta_data = P.concept_images("magenta", 48, seed=SEED, size=H)  # 48 drawings, captions with "<magenta>"
    star_data = P.concept_images("star", 96, seed=SEED, size=H)  # 96 drawings of stars, captions with "star"
    show_images(list(magenta_data.images[:6]) + list(star_data.images[:6]),
                [c[:28] for c in magenta_data.captions[:6] + star_data.captions[:6]], ncols=6)  # fmt: skip

# %% [markdown]
# Before training: what the family draws for captions that leave the colour or the kind open, and for the prompts
# we want to teach. The strict judge (`helpers/strict_judge.py`, classical image analysis, no model) fits a circle,
# a square, a triangle and, where the caption allows one, a star to each image, and names its colours; for a caption
# that leaves the colour open it also considers magenta. `<magenta>` is not a word of the tokenizer yet: it reads as
# `<`, `magenta`, `>`, tokens the toy text encoder was never trained on; "star" is a word of CLIP's vocabulary that
# no training caption used. The family samples with its own default, Euler ancestral at 30 steps (printed above).

# %%
UNNAMED = {"magenta": "a circle on a blue background", "star": "a red shape on a blue background"}
if TOY:
    unnamed = {c: P.generate_images(pipe, prompt, SEEDS, STEPS) for c, prompt in UNNAMED.items()}
    found = {c: [judge.inspect(im, **judge.inspect_options(UNNAMED[c])) for im in (255 * unnamed[c]).round().astype(np.uint8)]
             for c in UNNAMED}  # fmt: skip
    magenta_share = np.mean([f.colour == "magenta" for f in found["magenta"]])
    star_share = np.mean([f.kind == "star" for f in found["star"]])
    for c, f in found.items():
        names = [x.colour for x in f] if c == "magenta" else [x.kind for x in f]
        print(f"{UNNAMED[c]!r} over {N} seeds:", {name: names.count(name) for name in sorted(set(names))})
    show_images(list(unnamed["magenta"][:8]) + list(unnamed["star"][:8]),
                [f"{f.colour} {f.kind}" for f in found["magenta"][:8] + found["star"][:8]], ncols=8)  # fmt: skip
    colour_before = P.concept_scores(P.generate_images(pipe, COLOUR_PROMPT, SEEDS, STEPS), COLOUR_PROMPT)
    before_star = P.generate_images(pipe, STAR_PROMPT, SEEDS, STEPS)  # (16, H, W, 3) in [0, 1]
    star_before = P.judge_rates(before_star, STAR_PROMPT)
    print(f"{COLOUR_PROMPT!r}: named magenta {colour_before['colour']:.0%}")
    print(f"{STAR_PROMPT!r}: judged a star {star_before['kind']:.0%}, red {star_before['colour']:.0%}")
    print("tokens of", repr(COLOUR_PROMPT), "->", pipe.tokenizer.tokenize(COLOUR_PROMPT))
    assert magenta_share >= 0.9 and star_share >= 0.5  # it draws both where a caption leaves them open ...
    assert colour_before["colour"] <= 0.1  # ... and no word asks for magenta
    assert star_before["kind"] <= 0.4  # ... nor "star": a word it never learned mostly draws the shapes it knows

# %% [markdown]
# **Two words it never learned.** `<magenta>` draws no magenta (printed above): its three tokens mean nothing the
# UNet answers with magenta. "a red star" is drawn mostly as a circle, a square or a triangle, and a star only now
# and then (printed above): the text encoder never learned "star" either. A word no caption used still means
# *something* to the frozen model, and what it means is an accident of training: a first version of this sibling
# read "star" much as "shape" and drew stars 88% of the time (`benchmarks/toy_family_history.md`, 2026-12-07). So
# this one's LoRA was also shown palette pictures under captions with other words it never learned in the kind slot
# ("a red dog on a blue background" under a red circle, square or triangle: `shapes_data.STAND_IN_WORDS`, "star"
# never among them), and now an unknown word means one of the shapes it knows. Both words have something to find: textual
# inversion (section 3) finds the magenta, and LoRA (section 4) ties "star" to the stars the sibling draws only
# where a caption leaves the kind open.

# %% [markdown]
# ## 2. The loss both methods minimise
#
# Both train with the loss the UNet was trained with (Ho et al. 2020, on latents as in Rombach et al. 2022):
# encode an image, $z_0 = s \cdot \mathcal E(x)$; pick a timestep $t$ and noise $\epsilon \sim \mathcal N(0, I)$;
# noise the latents with the closed form of notebook 03; ask the UNet, given the caption's text states $c$, which
# noise was added:
#
# $$x_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, \qquad
# L = \mathbb E_{z_0, \epsilon, t} \left\lVert \epsilon - \epsilon_\theta(x_t, t, c) \right\rVert^2$$
#
# What changes between the methods is only *which numbers may move*. `P.diffusion_loss` is this loss; here its
# noising step is checked against the scheduler the family was trained with (`DDPMScheduler.add_noise`).

# %%
from diffusers import DDPMScheduler

ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
alphas_cumprod = P.noise_schedule(pipe)  # (1000,): abar_t of the pipeline's own schedule
g = torch.Generator().manual_seed(SEED)
z0 = torch.randn(4, 4, 8, 8, generator=g)
eps = torch.randn(4, 4, 8, 8, generator=g)
t = torch.tensor([0, 250, 500, 999])
ours = q_sample(z0, t, eps, alphas_cumprod)  # sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
theirs = ddpm.add_noise(z0, eps, t)
print(f"q_sample vs DDPMScheduler.add_noise: max abs diff {(ours - theirs).abs().max():.1e}")
assert torch.allclose(ours, theirs, atol=1e-6)
assert torch.allclose(alphas_cumprod, ddpm.alphas_cumprod)

# %% [markdown]
# ## 3. Textual inversion: one new row of the token table
#
# The text encoder turns each token id into a row of its token table (32 numbers per token in the toy, 768 in SD
# v1; notebook 02) before its transformer layers. Textual inversion adds one token, `<magenta>`, with one new row
# $v_*$, and trains only that row, everything else frozen:
#
# $$v_* = \arg\min_v \; \mathbb E \left\lVert \epsilon - \epsilon_\theta\big(x_t, t, c_\theta(y; v)\big) \right\rVert^2$$
#
# where $y$ is a caption containing the token. The new row starts as the row of a related word ("red"). Because no
# other number changes, every prompt *without* the token must give the very same images: we check that bit for bit.
#
# To stop early, press the notebook's stop button (■) or Ctrl-C: the loop catches the interrupt and keeps what it
# learned. `TIME_BUDGET_S` stops it too.

# %%
TI = dict(steps=250, lr=5e-3, batch_size=16)  # toy settings: about a minute on one CPU thread
TIME_BUDGET_S = 240  # stop after this long, whatever the step
OLD = [Combo("circle", "red", "blue"), Combo("square", "yellow", "black"), Combo("triangle", "white", "green")]
if TOY:
    held_out = P.concept_images("magenta", 64, seed=SEED + 1, size=H)  # a fixed check batch, not trained on
    old_before = {c: P.generate_images(pipe, c.caption(), SEEDS[:4], STEPS) for c in OLD}  # no "<magenta>" in them
    token_id = P.add_token(pipe, "<magenta>", init_word="red")
    table = pipe.text_encoder.get_input_embeddings().weight
    print(f"new token id {token_id}; the table is now {tuple(table.shape)}; trainable numbers: {table.shape[1]}")
    table_before = table.detach().clone()
    loss_before = P.fixed_batch_loss(pipe, held_out, held_out.captions)
    snapshots = {0: P.generate_images(pipe, COLOUR_PROMPT, [SEED], STEPS)[0]}  # step -> one sample

    def watch(step: int, loss: float) -> None:
        if step % 80 == 0:
            snapshots[step] = P.generate_images(pipe, COLOUR_PROMPT, [SEED], STEPS)[0]

    deadline = time.perf_counter() + TIME_BUDGET_S
    start = time.perf_counter()
    ti_losses = P.train_textual_inversion(pipe, "<magenta>", magenta_data, magenta_data.captions, seed=SEED,
                                          should_stop=lambda: time.perf_counter() > deadline, callback=watch, **TI)  # fmt: skip
    ti_seconds = time.perf_counter() - start
    loss_after = P.fixed_batch_loss(pipe, held_out, held_out.captions)
    print(
        f"{len(ti_losses)} steps in {ti_seconds:.0f} s; loss on the check batch {loss_before:.4f} -> {loss_after:.4f}"
    )
    assert loss_after < loss_before  # it learned: the new word explains the magenta pictures better
else:
    print("A real model: section 5 gives the recipe for SD v1-4 on a GPU (these toy settings are not it).")


def plot_training(losses: list[float], snapshots: dict, title: str) -> None:
    """The loss per step (and its running mean of 10) beside the samples taken along the way."""
    fig, axes = plt.subplots(1, len(snapshots) + 1, figsize=(2.2 * len(snapshots) + 5, 2.4),
                             gridspec_kw={"width_ratios": [3] + [1] * len(snapshots)})  # fmt: skip
    axes[0].plot(losses, alpha=0.3, label="per step")
    axes[0].plot(np.arange(9, len(losses)), np.convolve(losses, np.ones(10) / 10, mode="valid"), label="mean of 10")
    axes[0].set(xlabel="step", ylabel="loss", title=title)
    axes[0].legend()
    for ax, (step, im) in zip(axes[1:], sorted(snapshots.items())):
        ax.imshow(im)
        ax.set_title(f"step {step}")
        ax.axis("off")
    plt.show()


if TOY:
    plot_training(ti_losses, snapshots, "textual inversion of <magenta>")

# %% [markdown]
# The loss per step is noisy (each step draws new timesteps and noise); on a fixed check batch of magenta pictures
# it fell (printed above). Now the pictures, over 16 seeds: the median colour difference (CIELAB $\Delta E$) between
# each circle and magenta, how often the strict judge names it magenta and finds the whole picture faithful (a
# magenta circle, IoU >= 0.93, on blue); and whether anything else moved.

# %%
if TOY:
    after_colour = P.generate_images(pipe, COLOUR_PROMPT, SEEDS, STEPS)
    colour_after = P.concept_scores(after_colour, COLOUR_PROMPT)
    others = torch.ones(len(table), dtype=torch.bool)
    others[token_id] = False
    moved = (table.detach() - table_before)[others].abs().max().item()
    old_after = {c: P.generate_images(pipe, c.caption(), SEEDS[:4], STEPS) for c in OLD}
    old_diff = max(np.abs(old_after[c] - old_before[c]).max() for c in OLD)
    for name, r in (("before", colour_before), ("after", colour_after)):
        print(f"{name:7s}: Delta E to magenta {r['colour_delta_e']:5.1f}; named magenta {r['colour']:4.0%}; "
              f"faithful {r['faithful']:4.0%}")  # fmt: skip
    print(f"other rows of the table moved by at most {moved}; prompts without the token changed by at most {old_diff}")
    print(f"judged a magenta circle on blue: {colour_after['named']:.0%} (before: {colour_before['named']:.0%})")
    show_images(list(after_colour[:8]), [f"seed {s}" for s in list(SEEDS)[:8]], ncols=8)
    assert moved == 0.0 and old_diff == 0.0  # nothing else changed, so no other prompt did
    shown_colour = P.concept_scores(after_colour[:8], COLOUR_PROMPT)
    assert colour_after["named"] >= 0.8 and shown_colour["named"] >= 0.75  # magenta circles on blue (issue 16: 80%)
    assert colour_after["faithful"] >= 0.7  # most pass the strict IoU too
    assert colour_after["colour_delta_e"] <= 15  # close to magenta (the judge names a colour within Delta E 25)

# %% [markdown]
# **What it learned.** One row moved, every other prompt gives the same images to the last bit, and the circles
# are magenta (printed above): the judge finds a magenta circle on blue in nearly every picture, and most pass its
# strict outline test (IoU >= 0.93) as well. Textual inversion found a word for something the frozen model could
# already draw: the UNet drew magenta circles for "a circle on a blue background" (section 1), and the new row
# points its colour there. On the family itself, whose UNet and VAE never drew magenta, the same 250 steps reach
# none (0% of 16 seeds: `benchmarks/results/personalise-wide48-13k-20261206-183732.json`). On v1-4, which has seen
# nearly everything, this is how a few photos become a word (section 5).
#
# **Save and load.** The learned word is one row: diffusers' format is a safetensors file holding
# `{"<magenta>": tensor of shape (1, D)}`. A fresh pipeline reads it with `load_textual_inversion`, exactly as it
# would read a concept from the Hub (`pipe.load_textual_inversion("sd-concepts-library/cat-toy")`).

# %%
if TOY:
    path = P.save_textual_inversion(pipe, "<magenta>", OUT / "magenta.safetensors")
    fresh = load_family()
    fresh.load_textual_inversion(path)
    reloaded = P.generate_images(fresh, COLOUR_PROMPT, SEEDS[:4], STEPS)
    trained = P.generate_images(pipe, COLOUR_PROMPT, SEEDS[:4], STEPS)  # same batch: same float rounding
    print(f"{path.name}: {path.stat().st_size} bytes; reloaded vs trained: max abs diff "
          f"{np.abs(reloaded - trained).max():.1e}")  # fmt: skip
    assert np.abs(reloaded - trained).max() < 1e-5
    del fresh

# %% [markdown]
# ### The decoder's ceiling
#
# Textual inversion changes only what the UNet is *asked*; LoRA (next) changes how it answers. Neither changes the
# VAE decoder: whatever the UNet makes, the picture is $\mathcal D(z / s)$ for some latents $z$. So the question "can
# this decoder draw it at all?" needs no training of the UNet. Two tests on 16 drawn pictures of each concept:
#
# - the **round trip**: encode each picture and decode it again (`P.vae_ceiling`). This only asks for the latents
#   the encoder gives, so it is a lower bound;
# - the **search**: start from those latents and move them, 25 Adam steps, to make the decoded picture match the
#   drawn one, the decoder frozen (`P.decoder_reach`). What even these latents do not give, no prompt, no new word
#   and no adapter can.
#
# Magenta (red plus blue, no green) is far from the six palette colours, and orange lies between two of them (red
# and yellow); the VAE learned to give back both, and stars, from drawn pictures of them. A star is a new outline in
# known colours; at the family's sizes its points are under one latent pixel wide.

# %%
CONCEPTS = {"orange": "a <orange> circle on a blue background", "magenta": "a <magenta> circle on a blue background",
            "star": STAR_PROMPT}  # fmt: skip
if TOY:
    ceiling = {c: P.vae_ceiling(pipe, prompt, N) for c, prompt in CONCEPTS.items()}
    reach = {c: P.decoder_reach(pipe, prompt, N) for c, prompt in CONCEPTS.items()}
    for c in CONCEPTS:
        named = "judged a star" if c == "star" else f"named {c}"
        share = "kind" if c == "star" else "colour"
        print(f"{c:8s}: {named} after the round trip {ceiling[c][share]:4.0%} (Delta E {ceiling[c]['colour_delta_e']:5.1f}),"
              f" after the search {reach[c][share]:4.0%} (Delta E {reach[c]['colour_delta_e']:5.1f})")  # fmt: skip
    assert min(ceiling[c]["colour"] for c in ("orange", "magenta")) >= 0.85  # both colours come back
    assert min(reach[c]["colour"] for c in ("orange", "magenta")) >= 0.9
    assert ceiling["star"]["kind"] >= 0.6 and reach["star"]["kind"] >= 0.9  # stars, the points rounded

# %% [markdown]
# So the decoder paints both colours, and stars, most of them from the encoder's own latents (the round trip), nearly
# all from searched ones; the round trip rounds some stars' points, so the judge's strict IoU (>= 0.93) seldom
# passes a star, and we count what it calls a star. The family's own decoder (`vae/`), which never saw magenta,
# gives it back at $\Delta E$ 127, and no word could teach it there (`benchmarks/toy_family_history.md`, 2026-12-06
# and 07): the sibling's VAE had to see magenta first.
#
# The round trip matters more than a lower bound suggests: training never shows the UNet a picture, only the
# encoder's latents of it (SD's loss noises $z_0 = s\,\mathcal E(x)$). What the encoder rounds, the UNet is taught
# rounded.

# %% [markdown]
# ## 4. LoRA: a small change of the UNet
#
# The word "star" needs the UNet to answer differently, but only a little, and in a way that can be saved apart and
# removed. LoRA adds to each chosen linear layer $W$ a low-rank update:
#
# $$W' = W + \frac{\alpha}{r} B A, \qquad A \in \mathbb R^{r \times d_{in}},\ B \in \mathbb R^{d_{out} \times r}$$
#
# $B$ starts at zero, so at first $W' = W$ and the model is unchanged. Only $A$ and $B$ train:
# $r (d_{in} + d_{out})$ numbers per layer instead of $d_{in} d_{out}$. diffusers adds it through peft
# (`unet.add_adapter`). Which layers? diffusers' LoRA examples adapt the query, key, value and output projections
# of every attention layer (`P.LORA_TARGETS`). We adapt only the keys and values of the cross-attention
# (`attn2.to_k`, `attn2.to_v`: `P.LORA_TARGETS_CROSS`), the layers that read the text, as Custom Diffusion does for
# a new concept (Kumari et al. 2022): they see only the text states, so a prompt without the new word moves little.
# `benchmarks/personalise.py` measures both choices (below). Half of the training pictures are the family's own, with
# their own captions, drawn as its UNet saw them in training (`P.family_images`), so that learning stars does not
# make everything starry (DreamBooth's prior preservation, Ruiz et al. 2022). And as in the UNet's own training, 15% of the captions are
# replaced by the empty prompt: the adapter also changes the unconditional prediction, which classifier-free
# guidance uses at every step.

# %%
LORA = dict(steps=200, lr=1e-3, batch_size=16)  # toy settings: about a minute on one CPU thread
RANK = 4
if TOY:
    lora_pipe = load_family()  # a fresh pipeline: no <magenta> in it
    old_plain = {c: P.generate_images(lora_pipe, c.caption(), SEEDS, STEPS) for c in OLD}
    star_check = P.concept_images("star", 64, seed=SEED + 1, size=H)
    star_loss_before = P.fixed_batch_loss(lora_pipe, star_check, star_check.captions)
    n_adapter = P.add_lora(lora_pipe.unet, rank=RANK, target_modules=P.LORA_TARGETS_CROSS, seed=SEED)  # A: own seed
    counts = P.parameter_counts(lora_pipe.unet)
    print(
        f"adapter: {counts['adapter']:,} numbers; the UNet: {counts['unet']:,} ({counts['adapter'] / counts['unet']:.1%})"
    )
    prior = P.family_images(len(star_data.images), seed=SEED + 3, size=H,
                            concepts=UNNAMED_CONCEPTS)  # its own training pictures, as the sibling saw them # fmt: skip
    images = np.concatenate([star_data.images, prior.images])
    captions = star_data.captions + prior.captions
    star_snapshots = {0: before_star[0]}

    def watch_star(step: int, loss: float) -> None:
        if step % 50 == 0:
            star_snapshots[step] = P.generate_images(lora_pipe, STAR_PROMPT, [SEED], STEPS)[0]

    deadline = time.perf_counter() + TIME_BUDGET_S
    start = time.perf_counter()
    lora_losses = P.train_lora(lora_pipe, images, captions, seed=SEED, callback=watch_star,
                               should_stop=lambda: time.perf_counter() > deadline, **LORA)  # fmt: skip
    lora_seconds = time.perf_counter() - start
    star_loss_after = P.fixed_batch_loss(lora_pipe, star_check, star_check.captions)
    print(f"{len(lora_losses)} steps in {lora_seconds:.0f} s; loss on the check batch of stars "
          f"{star_loss_before:.4f} -> {star_loss_after:.4f}")  # fmt: skip
    assert star_loss_after < star_loss_before
    plot_training(lora_losses, star_snapshots, "LoRA for 'star'")

# %% [markdown]
# Over 16 seeds: how star-like the shapes are (the IoU of each with the best-fitting ideal star; drawn stars score
# >= 0.96, circles, squares and triangles <= 0.72), how many the judge calls stars, and what the adapter does to
# prompts it was not trained for.

# %%
if TOY:
    after_star = P.generate_images(lora_pipe, STAR_PROMPT, SEEDS, STEPS)
    star_after = P.concept_scores(after_star, STAR_PROMPT)
    star_before_s = P.concept_scores(before_star, STAR_PROMPT)
    for name, r in (("before", star_before_s), ("with LoRA", star_after)):
        print(f"{name:10s}: star IoU {r['kind_iou']:.2f}; judged a star {r['kind']:4.0%}; red {r['colour']:4.0%}")
    old_with = {c: P.judge_rates(P.generate_images(lora_pipe, c.caption(), SEEDS, STEPS), c.caption()) for c in OLD}
    old_without = {c: P.judge_rates(old_plain[c], c.caption()) for c in OLD}
    for c in OLD:
        print(f"  {c.caption()!r}: faithful {old_with[c]['faithful']:.0%} with the adapter, "
              f"{old_without[c]['faithful']:.0%} without")  # fmt: skip
    show_images(list(after_star[:8]), [f"seed {s}" for s in list(SEEDS)[:8]], ncols=8)
    shown = P.concept_scores(after_star[:8], STAR_PROMPT)
    star_fit = lambda im: judge.inspect(im, kinds=("circle", "square", "triangle", "star")).ious["star"]  # noqa: E731
    drawn_fit = [star_fit(im) for im in star_check.images]  # 64 drawn stars
    others_fit = [star_fit(im) for im in P.family_images(32, seed=SEED + 3, size=H).images]  # 32 drawn shapes
    print(
        f"star IoU of drawn stars >= {min(drawn_fit):.2f}; of drawn circles, squares, triangles <= {max(others_fit):.2f}"
    )
    assert min(drawn_fit) >= 0.95 and max(others_fit) <= 0.73  # the scale the sentence above reads it on
    assert star_after["kind"] >= 0.7 and shown["kind"] >= 0.625  # stars (issue 16: 70%) ...
    assert star_after["kind"] >= star_before["kind"] + 0.3  # ... far more than before: the word now asks for them
    assert star_after["kind_iou"] < 0.93  # ... their points rounded: few pass the judge's strict IoU
    faithful_with, faithful_without = (np.mean([r[c]["faithful"] for c in OLD]) for r in (old_with, old_without))
    print(f"old prompts faithful: {faithful_with:.0%} with the adapter, {faithful_without:.0%} without")
    assert faithful_with >= 0.9 and faithful_without >= 0.9  # old prompts keep (issue 16: 90% with the adapter)

# %% [markdown]
# **What it learned.** "a red star on a blue background" now draws stars most of the time, where before it drew
# mostly circles, squares and triangles (printed above): 200 steps tied the word to a shape the sibling could draw but
# had no word for. Their points come back rounded (the star IoU printed above, against a drawn star's >= 0.95), as
# the VAE's round trip rounds them: the UNet only ever saw the encoder's latents of stars. And the cost of an
# adapter: old prompts stay faithful with it loaded, because it sits only where the text is read, and a prompt
# without "star" gives it text states it was not trained to answer. The sibling's own pictures, half of the training
# set (stars among them, captioned as it saw them), and the empty captions that keep the unconditional
# prediction (which guidance multiplies) in place, hold the rest of the drift down. What it did not learn: the
# adapter saw stars of every colour, and other colours follow less often (`benchmarks/toy_family_history.md`,
# 2026-12-07). And the other side: on the family itself, whose UNet never drew a star, a rank-4 LoRA on the
# attention layers drew none in 200 steps, nor did fine-tuning every weight of the UNet for 1,600 (0% of 16 seeds
# each: `benchmarks/results/personalise-wide48-13k-20261206-183732.json`). A new shape needs a UNet that can draw it.
#
# **Where the adapter sits.** `benchmarks/personalise.py` trains the same 200 steps both ways on this sibling (1 thread
# of a 2-core AMD EPYC, 2026-12-07): on the cross-attention's keys and values, 9,088 numbers, 88% of 16 seeds
# judged stars and 97% of the old prompts (8 prompts x 4 seeds) faithful with it loaded; on every attention
# projection (diffusers' examples), 48,256 numbers, 75% and 84%
# (`benchmarks/results/personalise-20261207-133804.json`, `benchmarks/results/personalise-20261207-133516.json`).
# Without an adapter the sibling draws 97% of those old prompts faithfully: the smaller adapter lost none of them,
# the larger one 4 of 32. Sixteen seeds tell 88% from 75% only roughly (two images); the old prompts' gap was wider
# on a candidate retrain whose whole UNet learned magenta and stars (`benchmarks/toy_family_history.md`,
# 2026-12-07): 53% kept with every attention projection adapted, 94% with the cross-attention's keys and values.
# Those are the smaller bet: five times fewer numbers, acting on the text states alone.
#
# **Save, load, remove.** The adapter is saved as diffusers' LoRA file (`save_lora_weights`, one
# `pytorch_lora_weights.safetensors`, with peft's key names, as `unet.save_lora_adapter` writes them). A fresh
# pipeline loads it with `load_lora_weights`, exactly as it would load a LoRA from the Hub, and
# `unload_lora_weights` removes it: the UNet is then the one we started from, bit for bit.

# %%
if TOY:
    folder = OUT / "star-lora"
    P.save_lora(lora_pipe, folder)
    fresh = load_family()
    fresh.load_lora_weights(
        folder, weight_name=P.LORA_WEIGHT_NAME
    )  # the file's name: diffusers < 0.40 needs it offline
    loaded = P.generate_images(fresh, STAR_PROMPT, SEEDS[:4], STEPS)
    trained = P.generate_images(lora_pipe, STAR_PROMPT, SEEDS[:4], STEPS)  # same batch: same float rounding
    fresh.unload_lora_weights()
    unloaded = {c: P.generate_images(fresh, c.caption(), SEEDS, STEPS) for c in OLD}
    size, unet_bytes = P.lora_size(folder), 4 * counts["unet"]
    print(f"adapter file {size / 1e3:.0f} kB vs the UNet's {unet_bytes / 1e6:.1f} MB in float32 "
          f"({size / unet_bytes:.1%})")  # fmt: skip
    print(f"loaded vs trained: max abs diff {np.abs(loaded - trained).max():.1e}; unloaded vs never "
          f"adapted: {max(np.abs(unloaded[c] - old_plain[c]).max() for c in OLD):.1e}")  # fmt: skip
    assert np.abs(loaded - trained).max() < 1e-4
    assert max(np.abs(unloaded[c] - old_plain[c]).max() for c in OLD) == 0.0

# %% [markdown]
# ## 5. On a GPU, with Stable Diffusion v1-4
#
# The same two methods, at real scale. These are the recipes of diffusers' own training scripts; the figures are
# theirs, not measured here.
#
# | | textual inversion | LoRA |
# |---|---|---|
# | script | `examples/textual_inversion/textual_inversion.py` | `examples/text_to_image/train_text_to_image_lora.py` (or `examples/dreambooth/train_dreambooth_lora.py`) |
# | images | 3-5 of your object or style | a captioned dataset (the Pokémon example: 833 images); DreamBooth-LoRA: 5-10 |
# | steps | 3,000 at batch 1 (x 4 accumulation), lr 5e-4 (x batch) | 15,000 at batch 1 (x 4), lr 1e-4 |
# | memory, time | "~1 hour on one V100" | 11 GB (RTX 2080 Ti), about 5 hours |
# | file | one row of 768 numbers: ~3 kB | ~3 MB (3.29 MB, rank 4), about 1/1000 of the UNet |
#
# Sources: the README of diffusers' textual inversion example (cat-toy recipe); "Using LoRA for Efficient Stable
# Diffusion Fine-Tuning", Cuenca and Paul, Hugging Face blog, 2023. Loading is the same call as above:
# `pipe.load_textual_inversion("sd-concepts-library/cat-toy")`, `pipe.load_lora_weights("sayakpaul/sd-model-finetuned-lora-t4")`.
#
# The toy settings are not the real model's: the toy text encoder's rows have 32 numbers, its UNet 1/500 of
# v1-4's parameters (3.8 M against 860 M), and its images are 64 px (8x8 latents against v1-4's 64x64).

# %% [markdown]
# ## Summary
#
# - Both methods minimise Stable Diffusion's own loss, $\lVert \epsilon - \epsilon_\theta(x_t, t, c) \rVert^2$; they
#   differ in which numbers may move.
# - Textual inversion trains one row of the token table. Nothing else changes, so every other prompt gives the very
#   same images; the word is a file of a few hundred bytes, loaded with `load_textual_inversion`. Here `<magenta>`
#   draws magenta circles: it found a word for something the frozen model could already draw.
# - LoRA trains $B A$ beside chosen layers, saved apart (a few tens of kB here; about 1/1000 of v1-4's UNet for
#   diffusers' recipe: 3.29 MB), loaded with `load_lora_weights` and removed with `unload_lora_weights` to the exact
#   original. On the cross-attention's keys and values only, old prompts stay faithful with it loaded. Here "star",
#   a word the sibling read as one of its known shapes, comes to mean the stars it could draw but not name.
# - Neither goes past what the frozen parts can draw: the decoder must paint it (the ceiling), and the UNet must have
#   drawn it. The concept sibling drew magenta shapes and stars under captions that left them unnamed; the family,
#   which never drew them, learns neither. v1-4 has drawn nearly everything, which is why the same cells teach it
#   real concepts (section 5).

# %% [markdown]
# ## Exercises
#
# Each exercise is followed by its solution (a cell tagged `solution`, folded on the rendered site): answer first,
# then run it. Every solution checks itself with an `assert` on a computed value, in seconds on a CPU.
#
# **1. How many numbers does textual inversion train?** For the toy family and for SD v1-4 (its text encoder is
# CLIP ViT-L/14's, width 768: `configs/` has its config). Predict, then read the configs.

# %% tags=["solution"]
import json

from helpers.paths import CONFIGS_DIR

v14 = json.loads((CONFIGS_DIR / "sd-v1-4" / "text_encoder" / "config.json").read_text())
print(f"toy: {pipe.text_encoder.config.hidden_size} numbers per token; v1-4: {v14['hidden_size']}")
assert v14["hidden_size"] == 768
assert pipe.text_encoder.config.hidden_size == pipe.text_encoder.get_input_embeddings().weight.shape[1]

# %% [markdown]
# **2. Count LoRA's parameters by hand.** Each adapted linear layer of shape $d_{out} \times d_{in}$ gets
# $r (d_{in} + d_{out})$ numbers. Sum that over the UNet's `to_q`, `to_k`, `to_v`, `to_out.0` layers and compare
# with the adapter's size.

# %% tags=["solution"]
unet = load_family().unet  # a fresh UNet: count first, then add the adapter
by_hand = 0
for name, module in unet.named_modules():
    if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                      "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")):  # fmt: skip
        by_hand += RANK * (module.in_features + module.out_features)
n_adapter = P.add_lora(unet, rank=RANK)
print(f"by hand: {by_hand:,}; the adapter: {n_adapter:,}")
assert by_hand == n_adapter

# %% [markdown]
# **3. Turn the adapter down.** diffusers scales a loaded LoRA with `pipe.set_adapters(name, weight)`. What does
# weight 0 give for the star prompt? Predict from $W' = W + w \frac{\alpha}{r} B A$, then check.

# %% tags=["solution"]
if TOY:  # on a GPU, train an adapter first (section 5) or load one from the Hub into `folder`
    fresh = load_family()
    plain = P.generate_images(fresh, STAR_PROMPT, SEEDS[:4], STEPS)
    fresh.load_lora_weights(folder, weight_name=P.LORA_WEIGHT_NAME, adapter_name="star")
    fresh.set_adapters("star", 0.0)
    off = P.generate_images(fresh, STAR_PROMPT, SEEDS[:4], STEPS)
    print(f"weight 0 vs no adapter: max abs diff {np.abs(off - plain).max():.1e}")
    assert np.abs(off - plain).max() < 1e-5  # w = 0: W' = W
