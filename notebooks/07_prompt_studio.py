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
# # 07 · The prompt studio: a small app made of widgets
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sd-step-by-step/sd-step-by-step/blob/main/notebooks/07_prompt_studio.ipynb)
#
# The blog imports `ipywidgets` and never uses it. Here we use it: a prompt studio where you change the prompt,
# the seed, the steps, the guidance and the scheduler, press **Generate**, watch the progress bar, **Stop** a run
# that goes the wrong way, rank the results with CLIP and **Save** the ones you like with all their settings.
#
# **What you will be able to do**
# - use the studio, and make any image in it again from its label;
# - build an ipywidgets app: widgets hold values, `observe` and `on_click` call your functions;
# - have diffusers call *you* after every denoising step (`callback_on_step_end`), for a progress bar and a Stop
#   button;
# - say why the run happens in a background thread, and how the app survives impatient clicks and bad inputs.
#
# **Needs**: nothing special. With a GPU (Colab: *Runtime > Change runtime type > GPU*) the studio runs the real
# Stable Diffusion v1-4; without one, the whole notebook runs on CPU with the offline model (about 16 s of CPU time under nbval on a shared 2-core machine).
# Works with ipywidgets 7 (Colab) and 8 (Jupyter, VS Code); `voila notebooks/07_prompt_studio.ipynb` serves
# it as a web app.

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
import ipywidgets as widgets
import numpy as np
from IPython.display import display

from helpers.clip_ranking import choose_clip
from helpers.pipeline import choose_model, default_sampler, generate, load_pipeline, scheduler_name, suggested_prompt
from helpers.plotting import show_images
from helpers.saving import public_name, read_metadata
from helpers.studio import PromptStudio, clip_ranker

SEED = 0
MODEL, WHY = choose_model()  # set SD_MODEL, or pass a Hub id / folder, to choose another
pipe = load_pipeline(MODEL)
STEPS = default_sampler(pipe).num_inference_steps  # per model: 30 (Euler ancestral) on the toy family (notebook 01, section 6)
PROMPT, PROMPT_WHY = suggested_prompt(pipe)
print("model:", MODEL)
print("why:  ", WHY)
print("prompt:", repr(PROMPT), f"({PROMPT_WHY})")

# %% [markdown]
# ## 1. The studio
#
# Type a prompt and press **Generate**. Each image $i$ of a run starts from noise seeded with `seed + i`, so its
# label (seed, steps, guidance $s$, scheduler, size) is all you need to make it again. **random** draws a new
# seed; **Stop** ends a run early (you get the half-denoised images); **Rank with CLIP** puts the images that
# best match the prompt first; **Save** writes the gallery to a new folder under `outputs/`, never overwriting.

# %%
studio = PromptStudio(pipe, num_inference_steps=STEPS, n_images=4, seed=SEED)
studio

# %% [markdown]
# ## 2. Driving the studio from code
#
# Every control is a Python object: setting `.value` is what typing does, and `button.click()` is what a mouse
# click does. So we can test the app without a browser, as its tests do. `wait()` blocks until the run is over.

# %%
prompt = PROMPT
studio.prompt.value = prompt
studio.n_images.value = 4
studio.generate_button.click()
assert studio.wait(timeout=300)
first = list(studio.items)
show_images([it["image"] for it in first], [f"seed {it['record']['seed']}" for it in first], suptitle=prompt)

# %%
# Self-check: the gallery filled, the progress bar reached its end, and the labels say how to remake each image.
assert len(studio.gallery.children) == 4 and [it["record"]["seed"] for it in first] == list(range(SEED, SEED + 4))
assert studio.progress.value == studio.progress.max > 0 and not studio.generate_button.disabled
again = generate(pipe, prompt, n_images=1, seed=SEED + 2, num_inference_steps=STEPS, show_progress=False)
diff = np.abs(np.asarray(again.images[0], float) - np.asarray(first[2]["image"], float)).max()
print(studio.progress.description, f"({scheduler_name(pipe)}) | image 2 remade from its label: max abs diff", diff)
assert diff <= 2

# %% [markdown]
# ## 3. How it is built: values, events, callbacks
#
# An ipywidgets app is three ideas. **Widgets hold values**: a slider's `.value` is a *trait*, a typed attribute
# that the browser and the kernel keep in sync. **Events call functions**: `widget.observe(fn, names="value")`
# calls `fn(change)` whenever the value changes (`change["old"]`, `change["new"]`), and `button.on_click(fn)` calls
# `fn(button)` on every click.

# %%
steps = widgets.IntSlider(value=20, min=1, max=50, description="Steps")
shown = widgets.Label()
steps.observe(lambda change: setattr(shown, "value", f"{change['old']} -> {change['new']}"), names="value")
clicks = []
button = widgets.Button(description="Click me")
button.on_click(lambda b: clicks.append(steps.value))
display(widgets.HBox([steps, shown, button]))
steps.value = 30  # what dragging the slider does
button.click()
assert shown.value == "20 -> 30" and clicks == [30]

# %% [markdown]
# The studio's Generate button is wired the same way: `generate_button.on_click(lambda _: studio.start())`.
#
# **The pipeline calls back.** A Stable Diffusion run is a loop over timesteps $t_N > \dots > t_1$; after each
# step diffusers calls `callback_on_step_end(pipe, step, timestep, callback_kwargs)`, where `callback_kwargs`
# holds the current latents $x_t$, and uses what the function returns. Setting `pipe._interrupt = True` makes the
# pipeline skip the remaining steps and decode the latents it has. The studio's callback moves the progress bar
# and checks whether Stop was pressed; here is the bare mechanism:

# %%
seen = []


def on_step(pipe, step, timestep, callback_kwargs):
    seen.append((step, int(timestep), tuple(callback_kwargs["latents"].shape)))
    if step == 2:
        pipe._interrupt = True  # "Stop": no more denoising steps
    return callback_kwargs  # must be returned (a callback may also change the latents)


result = generate(
    pipe, prompt, seed=SEED, num_inference_steps=STEPS, scheduler="ddim", callback_on_step_end=on_step, show_progress=False
)
print("step, timestep, latents shape:", seen)
assert result.interrupted and [s for s, _, _ in seen] == [0, 1, 2]

# %% [markdown]
# **Why a thread.** The kernel handles one message at a time, and a click in the browser is a message. If the
# click on Generate ran the whole generation, the click on Stop would wait in line until the run was over.
# So `start()` checks the inputs, disables Generate, and starts the run in a background thread; the kernel is
# free to receive Stop, which only sets a flag that the step callback reads. Below, a *step hook* (an extra
# function the studio calls after each step) clicks Stop at step 1, as an impatient user would.

# %%
studio.steps.value = STEPS
studio.scheduler.value = "ddim"  # DDIM runs exactly `steps` steps, so the bar's end is STEPS
studio.step_hooks.append(lambda pipe, step, timestep: step == 1 and studio.stop_button.click())
studio.generate_button.click()
assert studio.wait(timeout=300)
studio.step_hooks.clear()
print(studio.last_message)
assert studio.history[-1].interrupted and studio.progress.value == 2 < studio.progress.max == STEPS

# %% [markdown]
# **Surviving impatience and mistakes.** A second click on Generate during a run must not start a second run
# (ipywidgets even calls `on_click` handlers of a disabled button when code clicks it), so `start()` checks and
# sets a "running" flag under a `threading.Lock`. A bad input (a height that is not a multiple of 8, an empty
# prompt) is caught by `validate_inputs` *before* any work, shown as a message, and the gallery stays as it was.

# %%
runs_before, gallery_before = studio.runs_started, studio.gallery.children
studio.step_hooks.append(lambda pipe, step, timestep: step == 0 and studio.generate_button.click())  # double click
studio.generate_button.click()
assert studio.wait(timeout=300)
studio.step_hooks.clear()
assert studio.runs_started == runs_before + 1  # one run, not two

studio.height.value = 100  # not a multiple of 8
studio.generate_button.click()
print(studio.last_error)
assert "multiple of 8" in studio.message.value and studio.runs_started == runs_before + 1
studio.height.value = pipe.unet.config.sample_size * pipe.vae_scale_factor

# %% [markdown]
# ## 4. Rank and save
#
# **Rank with CLIP** scores each image against the prompt with CLIP (notebook 06: the cosine similarity of the
# image and text embeddings times CLIP's temperature, $\text{score} = 100 \cos(E_I(x), E_T(p))$ for OpenAI's CLIP)
# and reorders the gallery, best first. The studio takes any function `ranker(images, prompt) -> scores`;
# `clip_ranker(model)` makes one from `helpers.clip_ranking`. By itself the studio picks the blog's CLIP for the
# real model and the mini CLIP trained on shapes for the offline family; with no trained CLIP here we plug in
# the tiny random-weight one: the code path is exact, but then the scores mean nothing.

# %%
if studio.ranker is None:
    clip_model, why = choose_clip(MODEL)
    print("CLIP:", clip_model, "|", why)
    studio.ranker = clip_ranker(clip_model)
studio.generate_button.click()
assert studio.wait(timeout=300)
studio.rank_button.click()
scores = [it["score"] for it in studio.items]
print(studio.ranker.__name__, "scores, best first:", [round(s, 3) for s in scores])
assert scores == sorted(scores, reverse=True) and "score" in studio.gallery.children[0].children[1].value

# %% [markdown]
# **Save** writes the gallery, in its current order, through `helpers.saving.save_images`: a new folder per click,
# every PNG carrying its settings (and its score), plus a `manifest.json`.

# %%
studio.save_button.click()
folder = studio.saved_dirs[-1]
saved = sorted(folder.glob("*.png"))
print(f"{len(saved)} images in {public_name(folder)}")
assert [read_metadata(p)["seed"] for p in saved] == sorted(it["record"]["seed"] for it in studio.items)
assert read_metadata(saved[0])["prompt"] == prompt

# %% [markdown]
# ## Try it
#
# Scroll up to the studio: change the prompt, try guidance 1 vs 12 and another scheduler (on the toy family `pndm` at
# 20 steps misses most seeds: notebook 01, section 6), press Generate, press Stop half-way, then Rank and Save. `studio.history` keeps every run you made, stopped ones included.

# %%
print(f"{len(studio.history)} runs so far; the last one: {studio.history[-1].records[0]}")  # the browser test waits for this line

# %% [markdown]
# ## Summary
#
# - The studio is ordinary widgets (`Textarea`, `IntSlider`, `Dropdown`, `Button`, `IntProgress`, `Image`) wired
#   with `on_click` and `observe`; setting `.value` and calling `.click()` drives it from code, which is how it is tested.
# - diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs)` runs after every step: it drives the
#   progress bar, and `pipe._interrupt = True` stops early.
# - Runs go in a background thread so Stop can be heard; a lock keeps double clicks to one run; inputs are checked
#   before any work and errors become messages while the last good gallery stays.
# - Every image's label is its recipe; Save keeps the recipe inside each PNG and never overwrites.

# %% [markdown]
# ## Exercises
#
# Each exercise is followed by its solution (a cell tagged `solution`, folded on the rendered site): answer first,
# then run it. Every solution checks itself with an `assert` on a computed value, in seconds on a CPU. They leave
# the studio above alone (it may be running in its thread while you work): they build their own widgets and
# their own pipeline.
#
# **1. Copy a seed.** Give each image a small button "use seed N" that puts its seed into a Seed box. (An `HTML`
# label cannot be clicked: use a `Button` under each image and `on_click`.) Build the cards for the first run's
# images (`first`), click each button from code, and check the box.

# %% tags=["solution"]
seed_box = widgets.IntText(value=-1, description="Seed")
buttons = []
for item in first:
    b = widgets.Button(description=f"use seed {item['record']['seed']}")
    b.on_click(lambda _, s=item["record"]["seed"]: setattr(seed_box, "value", s))  # the default argument freezes s
    buttons.append(b)
display(widgets.HBox([seed_box, *buttons]))
got = []
for b in buttons:
    b.click()
    got.append(seed_box.value)
print("seed box after each click:", got)
assert got == [item["record"]["seed"] for item in first]

# %% [markdown]
# **2. Watch an image form.** Write a `callback_on_step_end` that keeps `callback_kwargs["latents"][0, 0]` (the first
# latent channel) every 3 steps, and show the frames with `show_images`. Predict how many frames you get for
# `STEPS` steps. Why is looking at latents cheap, and decoding them with the VAE at every step not?

# %% tags=["solution"]
own = load_pipeline(MODEL)  # its own pipeline: the studio's may be busy in its thread
frames = []


def keep_latents(pipe, step, timestep, callback_kwargs):
    if step % 3 == 0:
        frames.append(callback_kwargs["latents"][0, 0].float().cpu().clone())  # (h, w)
    return callback_kwargs


generate(
    own,
    PROMPT,
    seed=SEED,
    num_inference_steps=STEPS,
    scheduler="ddim",
    callback_on_step_end=keep_latents,
    show_progress=False,
)
show_images(
    [((f - f.min()) / (f.max() - f.min())).numpy() for f in frames], [f"step {3 * i}" for i in range(len(frames))]
)
image_values = (frames[0].shape[0] * own.vae_scale_factor) ** 2 * 3
latent_values = frames[0].numel() * own.unet.config.in_channels
print(f"{len(frames)} frames; one image is {image_values / latent_values:g}x more numbers than its latents")
assert len(frames) == len(range(0, STEPS, 3))  # DDIM runs exactly STEPS steps, numbered 0..STEPS-1
assert image_values / latent_values == own.vae_scale_factor**2 * 3 / own.unet.config.in_channels
del own

# %% [markdown]
# **3. Write a ranker.** Write `colour_ranker(images, prompt)` that prefers colourful images (far from grey) and
# returns one score per image, as the studio's `ranker` must. Check it on a grey and a red image, then on the
# first run's images: does it agree with CLIP's order (section 4)? (To use it: `studio.ranker = colour_ranker`.)

# %% tags=["solution"]
from PIL import Image


def colour_ranker(images, prompt):
    """The spread across R, G, B of each pixel, averaged: 0 for any grey image."""
    return [float(np.asarray(im.convert("RGB"), float).std(axis=2).mean()) for im in images]


grey, red = Image.new("RGB", (64, 64), (128, 128, 128)), Image.new("RGB", (64, 64), (255, 0, 0))
g_score, r_score = colour_ranker([grey, red], "anything")
colour_scores = colour_ranker([it["image"] for it in first], PROMPT)
print(f"grey {g_score:.1f}, red {r_score:.1f}; first run, most colourful first: seeds",
      [first[i]["record"]["seed"] for i in np.argsort(colour_scores)[::-1]])  # fmt: skip
assert g_score == 0 and r_score > 100 and len(colour_scores) == len(first)
