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
# # 02 · Inside the pipeline: tokens, embeddings, latents, the loop, attention
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-step-by-step/sd-step-by-step/blob/main/notebooks/02_inside_the_pipeline.ipynb)
#
# In notebook 01 you called `pipe(...)` and got pictures. Now we open it and run each part by hand, on the same
# model, and check at every step that we computed what the pipeline computes.
#
# **What you will be able to do**
# - tokenize a prompt as Stable Diffusion does (ids, padding to 77, what truncation cuts) and read the 77 x D text
#   embeddings, including the empty prompt's that guidance uses;
# - encode an image to latents with the VAE, look at the latent channels, decode them, and say where the scaling
#   factor (SD's 0.18215, the toy family's 0.5616) comes from;
# - make one UNet call and one scheduler step, then write the whole denoising loop yourself and get `pipe(...)`'s
#   output for the same seeds, also with a sampler that draws fresh noise at every step;
# - watch the model's guess of the final image ($\hat x_0$) sharpen step by step, and draw where each word of the
#   prompt looks (cross-attention maps).
#
# **Needs**: no GPU (about 25 s with the offline toy family, measured under nbval on a busy shared 2-core machine). On a GPU the same cells open the real
# Stable Diffusion v1-4. Notebook 03 then explains the theory behind each part.

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
import matplotlib.pyplot as plt
import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from helpers import inside
from helpers.diffusion import LATENT_SCALING_FACTOR, classifier_free_guidance, predict_x0
from helpers.pipeline import choose_model, default_sampler, is_toy_family, load_pipeline
from helpers.plotting import show_images

SEED = 0
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
# ## 1. The parts, and the facts we read from them
#
# A `StableDiffusionPipeline` is five models in a box: `tokenizer`, `text_encoder` (CLIP's text tower), `unet`,
# `vae` and `scheduler` (plus a safety checker on the real model). Everything below reads the numbers that matter
# from the loaded model, so the same cells hold for the real v1-4 (512 px images, 64x64x4 latents) and the toy family
# (64 px images, 8x8x4 latents). The toy family's VAE has SD v1's geometry: it shrinks each side 8 times, into 4
# channels; only the image is 8 times smaller per side.
#
# `default_sampler` says which sampler the model runs with and where that choice comes from (printed below). On the
# toy family we run its sampler, Euler ancestral, at 10 of its default 30 steps: nothing below depends on the number
# of steps, and 10 keep the notebook quick (README: 96.7% of the family's images are prompt-faithful at 10 steps,
# 98.5% at 30).

# %%
pipe = load_pipeline(MODEL)
pipe.set_progress_bar_config(disable=True)
device, dtype = pipe.device, pipe.unet.dtype
EXACT = dtype == torch.float32  # fp16/bf16 round differently from run to run of other kernels: looser checks
sampler = default_sampler(pipe)
STEPS = min(sampler.num_inference_steps, 10) if is_toy_family(pipe) else sampler.num_inference_steps
f = pipe.vae_scale_factor  # how much the VAE shrinks each side
C = pipe.unet.config.in_channels  # latent channels
h = w = pipe.unet.config.sample_size  # latent side the UNet was trained on
H = W = h * f  # image side
D = pipe.text_encoder.config.hidden_size  # width of one token embedding
print({name: type(part).__name__ for name, part in pipe.components.items() if part is not None})
print(f"image {H}x{W}x3 -> latents {h}x{w}x{C} (VAE downsamples {f}x); token embeddings are {D}-wide")
print(f"scaling_factor {pipe.vae.config.scaling_factor:.5f}; sampler {type(pipe.scheduler).__name__}, {STEPS} steps "
      f"(default {sampler.num_inference_steps})")  # fmt: skip
print(f"  ({sampler.source})")
assert f == 2 ** (len(pipe.vae.config.block_out_channels) - 1)  # one halving per VAE down block but the last
assert C == pipe.vae.config.latent_channels and pipe.unet.config.cross_attention_dim == D
if is_toy_family(pipe):  # Self-check: SD v1's latent geometry (8x down, 4 channels) at 64 px
    assert (f, C, H, h) == (8, 4, 64, 8) and abs(pipe.vae.config.scaling_factor - 0.5616) < 1e-4

# %% [markdown]
# ## 2. The tokenizer: text -> 77 ids
#
# CLIP reads exactly 77 tokens: `<|startoftext|>`, the prompt cut into byte-pair pieces (`</w>` marks the end of a
# word), `<|endoftext|>`, then padding up to 77 (CLIP's pad token is `<|endoftext|>` again). A longer prompt is cut:
# CLIP never sees the rest. Change `prompt` and rerun.

# %%
prompt = "a red circle on a blue background"
MEASURED = is_toy_family(pipe) and prompt == "a red circle on a blue background"  # what the text's numbers are about
tok = inside.tokenize(pipe.tokenizer, prompt)
print("pieces:", tok.pieces)
print("ids:   ", tok.input_ids[: tok.n_tokens + 2], "...", f"({len(tok.input_ids)} ids)")
print(f"{tok.n_tokens} real tokens (start and end included), {len(tok.input_ids) - tok.n_tokens} padding")
bos, eos, pad = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id, pipe.tokenizer.pad_token_id
# Self-check: the pipeline's own call gives the same ids; start, end and padding sit where we said.
ids_pipe = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
assert tok.input_ids == ids_pipe and len(ids_pipe) == pipe.tokenizer.model_max_length == 77
assert ids_pipe[0] == bos and ids_pipe[tok.n_tokens - 1] == eos and set(ids_pipe[tok.n_tokens :]) == {pad}
assert sum(tok.attention_mask) == tok.n_tokens and tok.cut == ""

# %%
long_prompt = prompt + ", " + ", ".join(["highly detailed", "sharp focus", "studio lighting"] * 12)
long = inside.tokenize(pipe.tokenizer, long_prompt)
print(f"{long.n_tokens - 2} prompt tokens, CLIP keeps {long.kept}; it never sees: {long.cut[:90]!r}...")
# Self-check: CLIP keeps the first 75 pieces, then <end> at position 76; the rest is cut.
full = pipe.tokenizer(long_prompt).input_ids
assert long.kept == 75 and long.input_ids[1:-1] == full[1:76] and long.input_ids[-1] == eos and long.cut

# %% [markdown]
# ## 3. The text encoder: 77 ids -> 77 x D embeddings
#
# The text encoder turns the ids into one $D$-wide vector per position (768 for v1-4's CLIP ViT-L/14). The UNet
# reads all 77 through cross-attention (section 8). For guidance (notebook 01, section 4) the pipeline also encodes
# the **empty prompt** `""` (or the negative prompt): $\hat\epsilon = \epsilon(x_t, \varnothing) +
# s\,(\epsilon(x_t, c) - \epsilon(x_t, \varnothing))$ needs both.

# %%
with torch.no_grad():
    ids = torch.tensor([tok.input_ids], device=device)  # (1, 77)
    cond = pipe.text_encoder(ids)[0]  # (1, 77, D): the last hidden state
    empty_ids = torch.tensor([inside.tokenize(pipe.tokenizer, "").input_ids], device=device)
    uncond = pipe.text_encoder(empty_ids)[0]  # (1, 77, D): what "no prompt" looks like
    ref_cond, ref_uncond = pipe.encode_prompt(prompt, device, 1, True)
print("prompt embeddings", tuple(cond.shape), "| empty prompt", tuple(uncond.shape))
gap = (cond - uncond).norm(dim=-1)[0].float().cpu()  # (77,)
plt.figure(figsize=(8, 2.2))
plt.bar(range(77), gap)
plt.axvline(tok.n_tokens - 0.5, color="grey", lw=0.8)
plt.title("how far each position's embedding is from the empty prompt's (grey line: end of the prompt)")
plt.xlabel("position")
plt.show()
# Self-check: our embeddings are the pipeline's own; position 0 (<start>) is the same for every prompt, because
# CLIP's causal mask lets a position see only itself and earlier ones.
assert torch.equal(cond, ref_cond) and torch.equal(uncond, ref_uncond)
assert gap[0] < 1e-3 * gap[1 : tok.n_tokens].mean() and cond.shape == (1, 77, D)

# %% [markdown]
# ## 4. The VAE: pixels <-> latents
#
# The UNet never sees pixels. The VAE's encoder $\mathcal E$ turns an $H \times W \times 3$ image into an
# $h \times w \times C$ latent, $f$ times smaller per side; its decoder $\mathcal D$ turns latents back into pixels.
# The latents are multiplied by a **scaling factor** $s$ before the UNet sees them:
#
# $$z = s \cdot \mathcal E(x), \qquad \hat x = \mathcal D(z / s)$$
#
# We encode an image of the kind the model knows (a drawn shape for the toy family, a photo for real models).

# %%
from helpers.shapes_data import draw_for_size, parse_prompt
from helpers.toy_ddpm import load_sample_image

if is_toy_family(pipe):
    x = inside.to_model_range([draw_for_size(parse_prompt(prompt), np.random.default_rng(SEED), size=H)])  # (1, 3, H, W)
else:
    x = load_sample_image(H)[None]  # (1, 3, H, W) in [-1, 1]: matplotlib's photo of Grace Hopper
z = inside.encode_images(pipe, x)  # (1, C, h, w)
x_hat = inside.decode_latents(pipe, z)  # (1, H, W, 3) in [0, 1]
x01 = (x[0].permute(1, 2, 0).numpy() + 1) / 2  # the original, (H, W, 3) in [0, 1]
print(f"image {tuple(x.shape)} -> latents {tuple(z.shape)}: {x[0].numel() / z[0].numel():.0f}x fewer numbers")
show_images(
    [x01, *[inside.to_unit(z[0, c]) for c in range(C)], x_hat[0]],
    ["image", *[f"latent channel {c}" for c in range(C)], "decoded"],
    ncols=C + 2,
    size=2.0,
)
err, blank = np.mean((x_hat[0] - x01) ** 2), np.mean((x01.mean((0, 1)) - x01) ** 2)
print(f"reconstruction MSE {err:.4f} (a flat image of the mean colour: {blank:.4f})")
# Self-check: the shapes follow the model's facts, and decoding gives the image back far better than a flat guess.
assert z.shape == (1, C, h, w) and x_hat.shape == (1, H, W, 3) and err < 0.25 * blank

# %% [markdown]
# The latent channels look like a rough, recoloured copy of the image: the VAE compresses, it does not encrypt.
#
# **Where the scaling factor comes from.** The UNet is trained to remove $\mathcal N(0, I)$ noise, so its inputs
# should have roughly unit variance. Latent diffusion measures the standard deviation of the VAE's latents on
# training images and sets $s = 1/\mathrm{std}$ (`scale_by_std` in CompVis' latent-diffusion code): for SD's VAE
# that gave 0.18215. The toy family's 0.5616 was measured the same way, on the 12,150 images its UNet was trained on
# (shapes drawn upright). We measure it again on the images we have here: 64 freshly drawn training images for the
# toy family, or the one photo (and its mirror image) for a real model, a rough estimate.

# %%
from helpers.shapes_data import make_dataset_v2

if is_toy_family(pipe):
    images = inside.to_model_range(make_dataset_v2(64, seed=SEED, size=H, rotate=False).images)  # (64, 3, H, W)
else:
    images = torch.cat([x, x.flip(-1)])  # the photo and its mirror image
raw = inside.encode_images(pipe, images, generator=torch.Generator(device).manual_seed(SEED))
raw = raw / pipe.vae.config.scaling_factor  # unscaled posterior samples, E(x)
measured = inside.scaling_factor_from_latents(raw)
s = pipe.vae.config.scaling_factor
print(f"this model's scaling_factor {s:.4f}; 1/std measured on {len(images)} images here {measured:.4f}")
print(f"SD v1's, for reference: {LATENT_SCALING_FACTOR} (1/std of its VAE's latents, measured by its authors)")
print(f"std of the scaled latents the UNet sees: {(raw * s).float().std():.3f} (the goal: about 1)")
# Self-check: scaled latents have roughly unit spread (within a factor 2 on so few images); on the toy family's own
# training images the rule gives back its config's factor (measured 0.5627 on these 64 vs 0.5616 on 12,150).
assert 0.5 < (raw * s).float().std() < 2
if is_toy_family(pipe):
    assert abs(measured / s - 1) < 0.03

# %% [markdown]
# ## 5. One UNet call, one scheduler step
#
# The UNet takes noisy latents $x_t$, the timestep $t$ and the 77 x D text embeddings, and predicts the noise
# $\hat\epsilon$ in $x_t$. With guidance it runs on a doubled batch, [empty prompt, prompt], in **one** call.
# From $\hat\epsilon$ follows the model's guess of the clean latents (invert $x_t = \sqrt{\bar\alpha_t} x_0 +
# \sqrt{1-\bar\alpha_t}\,\epsilon$):
#
# $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}}$$
#
# and the scheduler's `step` moves $x_t$ a little towards it, to $x_{t'}$ at the next timestep.
#
# **Each sampler keeps the latents in its own scale.** DDIM and DPM-Solver keep $x_t$ itself. Euler-type samplers,
# like the toy family's Euler ancestral, keep $x_t / \sqrt{\bar\alpha_t} = x_0 + \sigma_t\,\epsilon$ with noise level
# $\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$ (the formulation of Karras et al. 2022, arXiv 2206.00364): their
# starting noise is multiplied by `init_noise_sigma` ($\sqrt{\sigma_{max}^2 + 1}$ here), and `scale_model_input` divides
# by $\sqrt{\sigma_t^2 + 1}$, which hands the UNet the $x_t$ it was trained on. (For DDIM both are 1 and change
# nothing.) So $\hat x_0$ comes from the UNet's input. A sampler that draws noise inside `step` gets the generator
# too, as `pipe(...)` does (diffusers' `prepare_extra_step_kwargs`).

# %%
import inspect


def step_kwargs(scheduler, generator):
    """What pipe(...) passes to scheduler.step besides (eps, t, latents): the generator, if the sampler takes one."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # a fresh copy: schedulers keep state
scheduler.set_timesteps(STEPS, device=device)
t = scheduler.timesteps[0]
x_t = randn_tensor((1, C, h, w), generator=torch.Generator().manual_seed(SEED), device=device, dtype=dtype)
x_t = x_t * scheduler.init_noise_sigma  # (1, C, h, w), in the sampler's scale
with torch.no_grad():
    x_in = scheduler.scale_model_input(torch.cat([x_t] * 2), t)  # (2, C, h, w): [empty prompt, prompt], the UNet's x_t
    eps_uncond, eps_text = pipe.unet(x_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
eps = classifier_free_guidance(eps_uncond, eps_text, 7.5)  # (1, C, h, w)
alpha_bar = scheduler.alphas_cumprod[int(t)].to(device)
x0_hat = predict_x0(x_in[:1], eps, alpha_bar)  # from the x_t the UNet saw
out = scheduler.step(eps, t, x_t, **step_kwargs(scheduler, torch.Generator().manual_seed(SEED)))
x_next = out.prev_sample
print(f"timesteps: {[int(t) for t in scheduler.timesteps]}")
print(f"t = {int(t)}: x_t {tuple(x_t.shape)} -> eps {tuple(eps.shape)} -> x_t' {tuple(x_next.shape)}")
print(f"init_noise_sigma {float(scheduler.init_noise_sigma):.2f}: std of the sampler's latents {x_t.std():.2f}, "
      f"of the UNet's input {x_in.std():.2f}")  # fmt: skip
# Self-check: our x0_hat is what diffusers' DDIM step computes as `pred_original_sample` from the UNet's x_t, and
# what the sampler's own step reports, where it reports one (Euler ancestral does).
close = lambda a, b: (a - b).abs().max() <= (1e-5 if EXACT else 1e-2) * max(1.0, b.abs().max().item())
ddim = DDIMScheduler.from_config(pipe.scheduler.config)
ddim.set_timesteps(STEPS, device=device)
assert close(x0_hat, ddim.step(eps, int(t), x_in[:1]).pred_original_sample)
assert getattr(out, "pred_original_sample", None) is None or close(x0_hat, out.pred_original_sample)
assert scheduler.config.prediction_type == "epsilon"  # the UNet predicts noise (v1-4 and the toy family do)

# %% [markdown]
# ## 6. The whole loop, written out
#
# That is the whole algorithm: repeat section 5 over every timestep, then decode. Here it is for a batch of 16
# seeds at once, one `torch.Generator` per image like `pipe(...)` takes them. We keep $\hat x_0$ at every step for
# section 7. (On a GPU with the real model this is the notebook's slowest cell: 16 images at 512 px.)
#
# Euler ancestral is an *ancestral* sampler: like DDPM (notebook 03, section 4) every step adds fresh noise.
# `pipe(...)` draws it from the same per-image generators as the starting latents, so our loop passes them to
# `step` as well; without them the noise would come from PyTorch's global generator and the images would differ.

# %%
N = 16  # seeds SEED, ..., SEED + 15
guidance_scale = 7.5
generators = [torch.Generator().manual_seed(SEED + i) for i in range(N)]
scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
scheduler.set_timesteps(STEPS, device=device)
embeds = torch.cat([uncond.expand(N, -1, -1), cond.expand(N, -1, -1)])  # (2N, 77, D): [empty x N, prompt x N]
latents = randn_tensor((N, C, h, w), generator=generators, device=device, dtype=dtype) * scheduler.init_noise_sigma
x0_hats = []  # the model's guess of the final latents, after each step
with torch.no_grad():
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)  # (2N, C, h, w)
        eps_uncond, eps_text = pipe.unet(x_in, t, encoder_hidden_states=embeds).sample.chunk(2)
        eps = classifier_free_guidance(eps_uncond, eps_text, guidance_scale)  # (N, C, h, w)
        x0_hats.append(predict_x0(x_in[:N], eps, scheduler.alphas_cumprod[int(t)].to(device)))
        latents = scheduler.step(eps, t, latents, **step_kwargs(scheduler, generators)).prev_sample  # x_t -> x_t'
images = inside.decode_latents(pipe, latents)  # (N, H, W, 3) in [0, 1]
show_images(list(images[:8]), [f"seed {SEED + i}" for i in range(8)], ncols=8, size=1.6, suptitle=prompt)

# %% [markdown]
# **Self-check**: `pipe(...)` with the same prompt, seeds, steps and guidance ends on the same latents. We compare
# latents (`output_type="latent"`), before the safety checker, which may blank an image on the real model.

# %%
generators = [torch.Generator().manual_seed(SEED + i) for i in range(N)]
ref = pipe(prompt, num_images_per_prompt=N, generator=generators, num_inference_steps=STEPS,
           guidance_scale=guidance_scale, output_type="latent").images  # fmt: skip
diff = (latents - ref).abs().max().item()
print(f"our loop vs pipe(...): max abs diff of the final latents {diff:.1e} over {N} images")
assert diff < (1e-4 if EXACT else 2e-2)

# %% [markdown]
# ## 7. The model's guess of the final image, step by step
#
# At every step the UNet's noise estimate implies a clean image $\hat x_0$ (section 5). Decoding it shows what the
# model "has in mind": a rough, blurry guess at the first step, when $x_t$ is mostly noise, which ends on the final
# image as $t$ falls. With an ancestral sampler it does not get there smoothly: every step adds fresh noise, and the
# model revises its guess. On the toy family the guess wanders: in the strip seed 0's guess starts as an orange
# blob, turns into a white shape, is almost black after step 6, and is the red disc only from step 8.

# %%
idx = np.unique(np.linspace(0, len(x0_hats) - 1, 6).round().astype(int))
strip = inside.decode_latents(pipe, torch.cat([x0_hats[i][:1] for i in idx]))  # seed SEED only
titles = [f"x̂0 after step {i + 1}\n(t = {int(scheduler.timesteps[i])})" for i in idx]
show_images([*strip, images[0]], [*titles, "final image"], ncols=len(idx) + 1, size=1.8)

# %% [markdown]
# **Self-check** over all 16 seeds, at 5 points along the loop: the decoded $\hat x_0$ ends on the final image (mean
# absolute pixel difference), but with the toy family's ancestral sampler not by getting closer at every step:
# measured at 10 steps, its distance from the final image is 0.178, 0.111, 0.167, 0.020, 0.000 (steps 1, 3, 5, 8,
# 10), and the number of seeds whose guess is red goes 2, 4, 2, 16, 16. With a deterministic sampler (a real
# model's DPM-Solver++) the check also asks for a closer guess at every point. And the strip's colours, as the text
# above reads them.

# %%
from helpers.strict_judge import inspect as judge_inspect

ANCESTRAL = "Ancestral" in type(scheduler).__name__  # draws fresh noise in every step
check = np.unique(np.linspace(0, len(x0_hats) - 1, 5).round().astype(int))
guesses = {i: inside.decode_latents(pipe, x0_hats[i]) for i in check}  # step index -> (N, H, W, 3) in [0, 1]
distance = [float(np.abs(guesses[i] - images).mean()) for i in check]
colour = lambda im: judge_inspect((255 * im).round().astype(np.uint8), kinds=("circle",)).colour  # the strict judge's name for the shape's colour
red = [sum(colour(im) == "red" for im in guesses[i]) for i in check] if MEASURED else []
for k, i in enumerate(check):
    print(f"after step {i + 1:3d} (t = {int(scheduler.timesteps[i]):3d}): mean |decode(x̂0) - final| = {distance[k]:.4f}"
          + (f"; red guesses {red[k]:2d} of {N}" if red else ""))  # fmt: skip
assert distance[-1] < 0.5 * distance[0] and distance[-2] < min(distance[:-2]), distance  # it ends on the image
if not ANCESTRAL:
    assert all(a > b for a, b in zip(distance, distance[1:])), distance  # closer at every point
if MEASURED:
    assert distance[-1] < 0.01  # ends on the final image (measured 0.0000 after the last step)
if ANCESTRAL and MEASURED:  # the detours (margins for other machines' rounding)
    strip_colours = [colour(im) for im in strip]
    print("the strip's guesses:", strip_colours, "| final:", colour(images[0]))
    assert max(b - a for a, b in zip(distance, distance[1:])) > 0.02  # a detour: farther at step 5 than at step 3
    assert red[0] <= 2 and red[-2] >= 14 and red[-1] >= 14  # measured 2 red at step 1; 16 from step 8
    assert "red" not in strip_colours[:4] and strip_colours[4:] == ["red", "red"] and idx[3] == 5  # idx 5 = step 6
    assert strip_colours[-1] == colour(images[0]) == "red"

# %% [markdown]
# ## 8. Where each word looks: cross-attention maps
#
# The prompt reaches the UNet only through **cross-attention**. At every resolution, each latent pixel asks
# (query $Q$, from the pixel) which of the 77 tokens matter (keys $K$, from the embeddings), with weights
#
# $$A = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right), \qquad \text{out} = A V$$
#
# one row of probabilities over the tokens per pixel. `inside.CrossAttentionRecorder` is diffusers' plain
# `AttnProcessor` with these two lines written out, so it can keep $A$; `pipe.unet.set_attn_processor` installs it
# in every cross-attention layer. Averaged over heads, steps and layers, $A$ for one token is a map over the image.

# %%
kw = dict(num_inference_steps=STEPS, guidance_scale=guidance_scale, output_type="latent")
with inside.record_cross_attention(pipe) as store:
    recorded = pipe(prompt, generator=torch.Generator().manual_seed(SEED), **kw).images
maps = store.token_maps((h, w))[0].cpu()  # (77, h, w)
words = prompt.split()
show_images(
    [images[0], *[inside.to_unit(maps[inside.token_index(pipe.tokenizer, prompt, word)]) for word in words]],
    ["image (seed 0)", *words],
    ncols=len(words) + 1,
    size=1.7,
)
print(f"{len(store.sums)} cross-attention layers recorded, {max(store.calls.values())} calls each")

# %% [markdown]
# **Self-check**: the recorded weights are probabilities (each pixel's row sums to 1 over the 77 tokens), and
# recording changes nothing: the same latents as diffusers' plain `AttnProcessor`, bit for bit, and as the default
# processor (PyTorch's fused attention kernel, which rounds differently) up to float error.

# %%
with inside.plain_cross_attention(pipe):
    plain = pipe(prompt, generator=torch.Generator().manual_seed(SEED), **kw).images
default = pipe(prompt, generator=torch.Generator().manual_seed(SEED), **kw).images
print(f"rows sum to 1 within {store.max_row_error:.1e}")
print(f"recording vs plain AttnProcessor: {(recorded - plain).abs().max():.1e}; vs default: {(recorded - default).abs().max():.1e}")  # fmt: skip
assert store.max_row_error < (1e-5 if EXACT else 1e-2)
assert torch.equal(recorded, plain) and (recorded - default).abs().max() < (1e-3 if EXACT else 5e-2)
assert maps.shape == (77, h, w) and all(type(p).__name__ != "CrossAttentionRecorder" for p in pipe.unet.attn_processors.values())  # fmt: skip

# %% [markdown]
# **What the maps show.** On the toy family they trace the shape, but not as one might guess: "red" and "circle"
# put *less* weight on the shape than around it (a dark disc in their maps), while "on" is brightest there.
# Measured below as the correlation of each word's map with the shape's mask, on the shown seed and over 16 seeds:
# about -0.8 for "red" and "circle", +0.8 for "on". The UNet is free to carry the prompt through any token (CLIP's
# causal mask lets every later token see "red circle" too), so a map says where a token's weight goes, not what the
# word means. On the real v1-4 the maps of nouns do tend to cover their objects (Tang et al. 2022, DAAM, arXiv
# 2210.04885); we have not measured that here. The maps are an average over all layers and steps: a hint, not a
# segmentation.

# %%
from helpers.judge import shape_mask


def mask_correlation(token_maps, images, i):
    """Per image: correlation of token `i`'s map (h, w) with the shape's mask, averaged down to the latent grid."""
    masks = [torch.from_numpy(shape_mask((255 * im).round().astype(np.uint8))[0]) for im in images]  # (H, W) each
    masks = torch.nn.functional.avg_pool2d(torch.stack(masks)[:, None], f)[:, 0]  # (n, h, w)
    return [float(np.corrcoef(m.flatten(), k.flatten())[0, 1]) for m, k in zip(token_maps[:, i], masks)]


if MEASURED:  # shape masks need the toy family's plain backgrounds
    with inside.record_cross_attention(pipe) as store16:
        latents16 = pipe(prompt, num_images_per_prompt=N, generator=[torch.Generator().manual_seed(SEED + i) for i in range(N)], **kw).images  # fmt: skip
    images16, maps16 = inside.decode_latents(pipe, latents16), store16.token_maps((h, w)).cpu()  # (N, H, W, 3), (N, 77, h, w)
    index = {word: inside.token_index(pipe.tokenizer, prompt, word) for word in ("red", "circle", "on")}
    corr = {word: mask_correlation(maps16, images16, i) for word, i in index.items()}
    shown = {word: mask_correlation(maps[None], images[:1], i)[0] for word, i in index.items()}
    for word in corr:
        print(f"{word!r:9}: correlation with the shape's mask: shown seed {shown[word]:+.2f}; 16 seeds mean {np.mean(corr[word]):+.2f}, range {min(corr[word]):+.2f} to {max(corr[word]):+.2f}")  # fmt: skip
    # Self-check: the sentences above (margins for other machines' rounding)
    assert shown["red"] < -0.4 and shown["circle"] < -0.4 and shown["on"] > 0.4  # the figure
    assert max(corr["red"] + corr["circle"]) < -0.3 and min(corr["on"]) > 0.3  # every one of the 16 seeds
    assert np.mean(corr["red"] + corr["circle"]) < -0.6 and np.mean(corr["on"]) > 0.6  # about -0.8 and +0.8

# %% [markdown]
# ## Try it
#
# Change `prompt` in section 2 (the toy family knows 3 shapes, 6 colours, 5 backgrounds; a real model knows much
# more) and rerun the notebook: tokens, the loop, the $\hat x_0$ strip and the maps all follow. (Section 8's numbers
# were measured on "a red circle on a blue background"; its check runs for that prompt only.)

# %% [markdown]
# ## Summary
#
# - The tokenizer makes exactly 77 ids: start, the prompt's pieces, end, padding; anything past 75 pieces is cut.
# - The text encoder turns them into 77 x D embeddings; guidance also needs the empty prompt's.
# - The VAE maps an $H \times W \times 3$ image to $h \times w \times C$ latents ($f$ times smaller per side) and back;
#   the scaling factor $s = 1/\mathrm{std}$ of the latents gives the UNet unit-variance inputs (SD: 0.18215; the toy
#   family, 64x64x3 <-> 8x8x4 like SD's 512 px <-> 64x64x4: 0.5616).
# - One step = one UNet call on [empty, prompt], guidance, one scheduler step; the loop is ~10 lines and reproduces
#   `pipe(...)` for the same seeds, if it uses the generators as the pipeline does (an ancestral sampler such as
#   Euler ancestral draws fresh noise in every step).
# - $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$ is the model's running guess; it
#   converges on the final image as $t$ falls.
# - Cross-attention $\mathrm{softmax}(QK^\top/\sqrt d)$ is where words meet pixels; recording it shows where each
#   token's weight goes, which on the toy family is not where the word's meaning is ("red" avoids the red shape).

# %% [markdown]
# ## Exercises
#
# Each exercise is followed by its solution (a cell tagged `solution`, folded on the rendered site): answer first,
# then run it. Every solution checks itself with an `assert` on a computed value, in seconds on a CPU.
#
# **1. Predict, then check.** How many tokens does "a photorealistic portrait of an astronaut" take, start and end
# included? Which words split into several pieces?

# %% tags=["solution"]
text = "a photorealistic portrait of an astronaut"
t1 = inside.tokenize(pipe.tokenizer, text)
per_word = {word: pipe.tokenizer.tokenize(word) for word in text.split()}
print(f"{t1.n_tokens} tokens: {t1.pieces}")
print("split into several pieces:", {w: p for w, p in per_word.items() if len(p) > 1})
# CLIP's BPE works word by word: the prompt's pieces are the words' pieces, plus <start> and <end>
assert t1.pieces == [p for pieces in per_word.values() for p in pieces]
assert t1.n_tokens == len(t1.pieces) + 2 == len(pipe.tokenizer(text).input_ids)

# %% [markdown]
# **2. Change one number.** Add Gaussian noise of std 0.1 to the *scaled* latents `z` of section 4 and decode. Then
# add the same noise to the *unscaled* latents `z / s` (the VAE's own space) and decode. Predict which damages the
# image more for this model's $s$ (printed in section 1), and why.

# %% tags=["solution"]
s = pipe.vae.config.scaling_factor
noise = 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(SEED)).to(z.device, z.dtype)
on_scaled = inside.decode_latents(pipe, z + noise)  # the decoder divides by s first: noise of std 0.1 / s
on_unscaled = inside.decode_latents(pipe, (z / s + noise) * s)  # noise of std 0.1 where the decoder works
err = {name: float(np.mean((im[0] - x_hat[0]) ** 2)) for name, im in [("scaled", on_scaled), ("unscaled", on_unscaled)]}
print(f"s = {s:.4f}; MSE vs the clean decode: {err}")
assert (err["scaled"] > err["unscaled"]) == (s < 1)  # noise on scaled latents is amplified by 1/s when s < 1


# %% [markdown]
# **3. Write the function.** Write `my_loop(pipe, n, guidance_scale, steps)`: section 6's loop as a function of
# the prompt embeddings `cond` and `uncond` from section 3, which for `guidance_scale <= 1` runs the UNet on the
# prompt alone (no empty-prompt half). Check it against `pipe(..., guidance_scale=1.0, output_type="latent")`.


# %% tags=["solution"]
def my_loop(pipe, n, guidance_scale, steps, seed=SEED):
    """Section 6's loop; the empty-prompt half only when guidance is on (as diffusers does)."""
    guided = guidance_scale > 1
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # a fresh one: multistep samplers keep state
    scheduler.set_timesteps(steps, device=device)
    embeds = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)]) if guided else cond.expand(n, -1, -1)
    latents = randn_tensor((n, C, h, w), generator=generators, device=device, dtype=dtype) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)  # (2n or n, C, h, w)
            eps = pipe.unet(x_in, t, encoder_hidden_states=embeds).sample
            if guided:
                eps = classifier_free_guidance(*eps.chunk(2), guidance_scale)  # (n, C, h, w)
            latents = scheduler.step(eps, t, latents, **step_kwargs(scheduler, generators)).prev_sample
    return latents


def pipe_latents(n, guidance_scale, steps, seed=SEED):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return pipe(prompt, num_images_per_prompt=n, generator=generators, num_inference_steps=steps,
                guidance_scale=guidance_scale, output_type="latent").images  # fmt: skip


diff = (my_loop(pipe, 2, 1.0, STEPS) - pipe_latents(2, 1.0, STEPS)).abs().max().item()
print(f"no guidance: our loop vs pipe(...): max abs diff {diff:.1e}")
assert diff < (1e-4 if EXACT else 2e-2)

# %% [markdown]
# **4. Swap one part.** Set `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`. Does `my_loop`
# still match `pipe(...)`, now with guidance 7.5? Predict, then check (and put the old scheduler back).

# %% tags=["solution"]
old_scheduler = pipe.scheduler
pipe.scheduler = DDIMScheduler.from_config(old_scheduler.config)
try:
    diff = (my_loop(pipe, 2, 7.5, STEPS) - pipe_latents(2, 7.5, STEPS)).abs().max().item()
finally:
    pipe.scheduler = old_scheduler
print(f"DDIM, guidance 7.5: our loop vs pipe(...): max abs diff {diff:.1e}")
# yes: the loop asks the scheduler for everything sampler-specific (init_noise_sigma, scale_model_input, step)
assert diff < (1e-4 if EXACT else 2e-2)

# %% [markdown]
# **More to think about.** Where does the `<|endoftext|>` at the end of the prompt get its weight? Plot its map
# beside the image and predict, from section 8, whether it looks like the map of "circle".

# %% tags=["solution"]
end_map = maps[tok.n_tokens - 1]  # the end token sits after the whole prompt: (causal mask) it sees every word
show_images([images[0], inside.to_unit(end_map)], ["image (seed 0)", "<|endoftext|>"], ncols=2, size=1.7)
assert end_map.shape == (h, w) and end_map.min() >= 0
if MEASURED:  # on the toy family: bright on the shape, the mirror image of "circle"'s map
    end_corr = mask_correlation(maps16, images16, tok.n_tokens - 1)
    print(f"<|endoftext|> map vs the shape's mask: mean correlation {np.mean(end_corr):+.2f} over {N} seeds")
    assert np.mean(end_corr) > 0.4 and mask_correlation(maps[None], images[:1], tok.n_tokens - 1)[0] > 0.3
