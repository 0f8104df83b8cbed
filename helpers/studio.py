"""The prompt studio: a small ipywidgets app around `generate()` for tweaking prompts.

    studio = PromptStudio(pipe)   # pipe from helpers.pipeline.load_pipeline()
    studio                        # shows the app in a notebook (or in Voila, as a web page)

How it is built (the three ideas notebook 07 tours):
- **widgets hold values**: every control is a widget whose `.value` is a trait; `settings()` reads them all.
- **events call functions**: `button.on_click(fn)` calls `fn(button)` on a click; `widget.observe(fn, "value")`
  calls `fn(change)` when a value changes (we use it to describe the memory preset).
- **the pipeline calls us back**: diffusers calls `callback_on_step_end(pipe, step, timestep, callback_kwargs)`
  after every denoising step; ours moves the progress bar and, after Stop, sets `pipe._interrupt = True`,
  which makes the pipeline skip the remaining steps and decode what it has.

A run happens in a background thread (`threaded=True`, the default) so that the kernel stays free to receive
the Stop click. `wait()` blocks until the run ends, so code (tests, notebook self-checks) can click and then
check; `threaded=False` runs inside the click itself. Only core widgets that exist in ipywidgets 7.7 and 8.

One action at a time: while a run goes, Rank and Save are disabled (and refuse if clicked anyway); while a
ranking goes, Generate and Save wait their turn. Numbers are typed into text boxes, not sliders: a slider would
silently clamp 300 steps to its maximum and run anyway; a text box keeps what you typed and Generate refuses it
with a message. Every action replaces the message, so an old error never lingers.
"""

from __future__ import annotations

import html
import io
import os
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from .paths import MODELS_DIR
from .pipeline import (
    DEFAULT_STEPS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MEMORY_PRESETS,
    SCHEDULERS,
    GenerationResult,
    NotEnoughMemoryError,
    apply_memory_preset,
    generate,
    out_of_memory_message,
    scheduler_name,
    suggested_prompt,
    validate_inputs,
)
from .saving import public_name, save_images

#: `ranker(images, prompt) -> scores` (one float per image, higher = better match).
Ranker = Callable[[Sequence[Any], str], Sequence[float]]

TOY_CLIP_DIR = MODELS_DIR / "toy-clip"
MAX_SEED_BUTTON = 2**32 - 1  # the "random" button draws seeds a user can still type
STUDIO_MAX_IMAGES = min(16, MAX_IMAGES)  # a gallery, not a batch job: more belongs in scripts/generate_many.py
STUDIO_MAX_STEPS = 250
#: the studio's names for the out-of-memory fixes
STUDIO_OOM_FIXES = {
    "images": "Images",
    "size": "Height and Width 512, or less",
    "preset": "the Memory menu: balanced, then low, then lowest",
    "fp16": "reload with load_pipeline(..., dtype=torch.float16) on a GPU",
}


def png_bytes(image) -> bytes:
    """PIL image -> PNG bytes (what `widgets.Image` shows)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def clip_ranker(model_or_dir: str | os.PathLike) -> Ranker:
    """A ranker that scores with `helpers.clip_ranking` (torch backend). CLIP loads on the first ranking."""
    from . import clip_ranking

    loaded: dict[str, Any] = {}

    def ranker(images, prompt):
        if "clip" not in loaded:
            loaded["clip"] = clip_ranking.load_clip(model_or_dir, backend="torch")
        return clip_ranking.rank(images, prompt, clip=loaded["clip"], method="torch").scores

    ranker.__name__ = f"CLIP ({Path(str(model_or_dir)).name})"
    return ranker


def default_ranker(sd_model: str | os.PathLike | None = None) -> Ranker | None:
    """The CLIP ranker that fits `sd_model`, or None when there is no meaningful one.

    `CLIP_MODEL` in the environment wins; images of a Hub model are scored by the blog's CLIP (ViT-B/32, from the
    Hub on first use); images of a local model by the mini CLIP trained on the same shapes (models/toy-clip),
    if present. A random-weight CLIP would give meaningless scores, so without toy-clip there is no default.
    """
    try:
        from . import clip_ranking
    except ImportError:
        return None
    if os.environ.get("CLIP_MODEL"):
        return clip_ranker(os.environ["CLIP_MODEL"])
    if sd_model and not Path(str(sd_model)).expanduser().is_dir():
        return clip_ranker(clip_ranking.DEFAULT_CLIP)
    if (TOY_CLIP_DIR / "config.json").exists():
        return clip_ranker(TOY_CLIP_DIR)
    return None


def describe(record: dict, score: float | None = None) -> str:
    """One gallery label: the seed and the settings that regenerate this image."""
    prompt = record["prompt"] if len(record["prompt"]) <= 48 else record["prompt"][:47] + "…"
    lines = [
        f"<b>seed {record['seed']}</b> · {record['num_inference_steps']} steps · cfg {record['guidance_scale']:g}",
        f"{record['scheduler']} · {record['width']}×{record['height']}",
        f"<i>{html.escape(prompt)}</i>",
    ]
    if record.get("negative_prompt"):
        lines.append(f"not: {html.escape(record['negative_prompt'][:40])}")
    if record.get("stopped_at"):
        lines.append(f"stopped at step {record['stopped_at']}")
    if score is not None:
        lines.append(f"<b>score {score:.3f}</b>")
    return "<div style='font-size:11px;line-height:1.3'>" + "<br>".join(lines) + "</div>"


class PromptStudio:
    """The app: controls, Generate/Stop, a progress bar, a gallery, Rank with CLIP and Save.

    - `pipe`: a StableDiffusionPipeline (from `load_pipeline`).
    - `ranker`: `ranker(images, prompt) -> scores`; "auto" picks a CLIP for this model (`default_ranker`);
      None disables ranking until you set `studio.ranker`.
    - `save_root`: where Save makes its new run folders (default `outputs/`).
    - `threaded`: run generation in a background thread (so Stop can be clicked); `wait()` waits for it.
    - `rng`: the random source of the "random" seed button (pass `random.Random(0)` to make it repeatable).
    """

    def __init__(
        self,
        pipe,
        ranker: Ranker | str | None = "auto",
        save_root: Path | str | None = None,
        threaded: bool = True,
        prompt: str | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        n_images: int = 4,
        seed: int = 0,
        rng: random.Random | None = None,
        thumb_px: int = 160,
    ):
        self.pipe = pipe
        self._ranker: Ranker | None = None
        self.save_root = save_root
        self.threaded = threaded
        self.rng = rng or random.Random()
        self.thumb_px = thumb_px

        self.history: list[GenerationResult] = []  # every finished run, newest last (nothing is lost)
        self.items: list[dict] = []  # the gallery on screen: {"image", "record", "score"}, in display order
        self.saved_dirs: list[Path] = []
        self.runs_started = 0
        self.last_message = ""  # the message on screen, as plain text
        self.last_error: str | None = None
        self.step_hooks: list[Callable] = []  # extra `hook(pipe, step, timestep)` calls after each step
        self._lock = threading.Lock()
        self._running = False
        self._busy: str | None = None  # "ranking" or "saving" while one of those runs (one action at a time)
        self._generation = 0  # bumped by every finished run: a ranking of an older gallery is discarded
        self._stop_requested = False
        self._thread: threading.Thread | None = None
        self._applied_preset: str | None = None

        size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's native size
        wide = {"description_width": "initial"}
        prompt = prompt if prompt is not None else suggested_prompt(pipe)[0]  # one the model knows
        self.prompt = widgets.Textarea(value=prompt, description="Prompt", layout=widgets.Layout(width="98%"))
        self.negative_prompt = widgets.Textarea(
            value="", description="Negative", placeholder="what to steer away from (optional)",
            layout=widgets.Layout(width="98%", height="3em"),
        )  # fmt: skip
        self.seed = widgets.IntText(value=seed, description="Seed", layout=widgets.Layout(width="180px"))
        self.random_button = widgets.Button(description="random", layout=widgets.Layout(width="80px"))
        box = widgets.Layout(width="160px")
        self.steps = widgets.IntText(value=num_inference_steps, description="Steps", layout=box)  # never clamps
        self.guidance = widgets.FloatText(value=7.5, step=0.5, description="Guidance", layout=box)
        self.scheduler = widgets.Dropdown(options=list(SCHEDULERS), value=scheduler_name(pipe), description="Scheduler")
        self.n_images = widgets.IntText(value=n_images, description="Images", layout=box)
        self.height = widgets.IntText(value=size, description="Height", layout=widgets.Layout(width="160px"))
        self.width = widgets.IntText(value=size, description="Width", layout=widgets.Layout(width="160px"))
        self.memory = widgets.Dropdown(options=list(MEMORY_PRESETS), value="none", description="Memory", style=wide)
        self.memory_help = widgets.HTML()
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", disabled=True)
        self.rank_button = widgets.Button(description="Rank with CLIP", disabled=True)
        self.save_button = widgets.Button(description="Save", button_style="success", disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=num_inference_steps, description="Steps 0/0")
        self.message = widgets.HTML()
        self.gallery = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="row wrap"))

        # Events: a click calls its handler with the button; a value change calls `observe`'s with a `change` dict.
        self.generate_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.random_button.on_click(lambda _: self.randomize_seed())
        self.rank_button.on_click(lambda _: self.rank())
        self.save_button.on_click(lambda _: self.save())
        self.memory.observe(self._describe_memory, names="value")
        self._describe_memory({"new": self.memory.value})

        for widget, name in [
            (self.prompt, "prompt"), (self.negative_prompt, "negative"), (self.seed, "seed"), (self.steps, "steps"),
            (self.generate_button, "generate"), (self.stop_button, "stop"), (self.rank_button, "rank"),
            (self.save_button, "save"), (self.progress, "progress"), (self.message, "message"),
            (self.gallery, "gallery"),
        ]:  # fmt: skip
            widget.add_class(f"sd-{name}")  # CSS classes: how the browser test finds the controls
        self.app = widgets.VBox(
            [
                widgets.HTML("<h3 style='margin:4px 0'>Prompt studio</h3>"),
                self.prompt,
                self.negative_prompt,
                widgets.HBox([self.seed, self.random_button, self.n_images, self.height, self.width]),
                widgets.HBox([self.steps, self.guidance, self.scheduler]),
                widgets.HBox([self.memory, self.memory_help]),
                widgets.HBox([self.generate_button, self.stop_button, self.rank_button, self.save_button]),
                self.progress,
                self.message,
                self.gallery,
            ]
        )
        self.app.add_class("sd-studio")
        self.ranker = default_ranker(getattr(pipe, "name_or_path", None)) if ranker == "auto" else ranker

    @property
    def ranker(self) -> Ranker | None:
        return self._ranker

    @ranker.setter
    def ranker(self, ranker: Ranker | None) -> None:
        """Plug in (or remove) a ranker at any time; the Rank button follows."""
        self._ranker = ranker
        self.rank_button.description = "Rank with CLIP" if ranker is not None else "Rank (no CLIP model)"
        self.rank_button.disabled = ranker is None or not self.items or self._running or self._busy is not None

    def _ipython_display_(self):  # works in ipywidgets 7 and 8
        from IPython.display import display

        display(self.app)

    # ------------------------------------------------------------------------------------------ reading
    @property
    def running(self) -> bool:
        return self._running

    def settings(self) -> dict[str, Any]:
        """The widgets' values as `generate()` keyword arguments (plus the memory preset)."""
        return {
            "prompt": self.prompt.value,
            "negative_prompt": self.negative_prompt.value or None,
            "seed": self.seed.value,
            "num_inference_steps": self.steps.value,
            "guidance_scale": self.guidance.value,
            "scheduler": self.scheduler.value,
            "n_images": self.n_images.value,
            "height": self.height.value,
            "width": self.width.value,
            "memory": self.memory.value,
        }

    def _show(self, text: str, kind: str = "info") -> None:
        """Replace the message (and the error state): what is on screen is always about the latest action."""
        self.last_message = text
        colour = {"info": "#333", "error": "#b00020", "ok": "#1b5e20"}[kind]
        self.message.value = f"<div style='color:{colour};white-space:pre-wrap'>{html.escape(text)}</div>"
        self.last_error = text if kind == "error" else None

    def _check_studio_limits(self, settings: dict) -> None:
        """The studio's own ranges (tighter than generate()'s); a value outside is refused, never clamped."""
        n, steps, cfg = settings["n_images"], settings["num_inference_steps"], settings["guidance_scale"]
        if isinstance(n, int) and not 1 <= n <= STUDIO_MAX_IMAGES:
            raise ValueError(
                f"Images must be from 1 to {STUDIO_MAX_IMAGES} here, got {n}; for more use scripts/generate_many.py."
            )
        if isinstance(steps, int) and not 1 <= steps <= STUDIO_MAX_STEPS:
            raise ValueError(f"Steps must be from 1 to {STUDIO_MAX_STEPS}, got {steps} (typical: 20-50).")
        if isinstance(cfg, (int, float)) and not 0 <= cfg <= MAX_GUIDANCE:
            raise ValueError(f"Guidance must be from 0 to {MAX_GUIDANCE:g}, got {cfg:g} (typical: 7.5).")

    def _set_buttons(self) -> None:
        """Enable exactly the actions that may start now."""
        idle = not self._running and self._busy is None
        self.generate_button.disabled = not idle
        self.stop_button.disabled = not self._running
        self.rank_button.disabled = not idle or self.ranker is None or not self.items
        self.save_button.disabled = not idle or not self.items

    def _describe_memory(self, change) -> None:
        self.memory_help.value = f"<span style='font-size:11px'>{html.escape(MEMORY_PRESETS[change['new']])}</span>"

    def randomize_seed(self) -> int:
        self.seed.value = self.rng.randint(0, MAX_SEED_BUTTON)
        return self.seed.value

    # ---------------------------------------------------------------------------------------- running
    def start(self) -> bool:
        """Generate's click handler: check inputs, then run (in a thread if `threaded`). False if not started."""
        with self._lock:  # check-and-set in one step: two quick clicks cannot both start a run
            if self._running:
                self._show("A run is already going: wait for it, or press Stop.")
                return False
            if self._busy is not None:
                self._show(f"Not started: {self._busy} is going; Generate again when it is done.", "error")
                return False
            settings = self.settings()
            memory = settings.pop("memory")
            try:
                self._check_studio_limits(settings)
                validate_inputs(**settings)  # bad input: say so at once, keep the gallery
            except ValueError as err:
                self._show(f"Not started: {err}", "error")
                return False
            self._running = True
            self._stop_requested = False
            self.runs_started += 1
        self._set_buttons()  # Rank and Save wait for the run: one action at a time
        self.progress.value = 0
        self.progress.max = settings["num_inference_steps"]  # corrected on the first step (PNDM adds one)
        self.progress.bar_style = ""
        self._show(f"Generating {settings['n_images']} image(s)…")
        if self.threaded:
            self._thread = threading.Thread(target=self._run, args=(settings, memory), daemon=True)
            self._thread.start()
        else:
            self._run(settings, memory)
        return True

    def stop(self) -> None:
        """Stop's click handler: the step callback sees the flag and interrupts the pipeline."""
        if self._running:
            self._stop_requested = True
            self._show("Stopping after this step…")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run (if any) ends; True if nothing is running afterwards."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self._running

    def _on_step(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """diffusers' `callback_on_step_end`: called after each denoising step; must return `callback_kwargs`."""
        total = getattr(pipe, "num_timesteps", None) or len(pipe.scheduler.timesteps)
        if self.progress.max != total:
            self.progress.max = total
        self.progress.value = step + 1
        self.progress.description = f"Steps {step + 1}/{total}"
        for hook in list(self.step_hooks):
            hook(pipe, step, timestep)
        if self._stop_requested:
            pipe._interrupt = True  # the pipeline skips the remaining steps, then decodes the latents it has
        return callback_kwargs

    def _run(self, settings: dict, memory: str) -> None:
        try:
            if memory != self._applied_preset:
                done = apply_memory_preset(self.pipe, memory)
                self._applied_preset = memory
                self._show(f"Memory preset {memory!r}: {', '.join(done)}. Generating…")
            result = generate(self.pipe, **settings, callback_on_step_end=self._on_step, show_progress=False)
        except NotEnoughMemoryError:
            self.progress.bar_style = "danger"
            dtype = str(self.pipe.unet.dtype).replace("torch.", "")
            size = (settings["height"], settings["width"])
            msg = out_of_memory_message(settings["n_images"], *size, dtype, str(self.pipe.device), STUDIO_OOM_FIXES)
            self._show(f"The run failed: {msg}", "error")
        except Exception as err:  # any failure becomes a message; the gallery stays
            self.progress.bar_style = "danger"
            self._show(f"The run failed: {type(err).__name__}: {err}", "error")
        else:
            self._finish(result)
        finally:
            with self._lock:
                self._running = False
            self._set_buttons()

    def _finish(self, result: GenerationResult) -> None:
        if result.interrupted:
            for rec in result.records:
                rec["stopped_at"] = f"{self.progress.value}/{self.progress.max}"
        self.history.append(result)
        self.items = [{"image": im, "record": rec, "score": None} for im, rec in zip(result.images, result.records)]
        self._generation += 1
        self._render()
        self.progress.bar_style = "warning" if result.interrupted else "success"
        what = f"Stopped early at step {self.progress.value}/{self.progress.max}" if result.interrupted else "Done"
        notes = "".join(f"\n{m}" for m in result.messages)
        self._show(f"{what}: {len(result)} image(s) in {result.seconds:.1f} s (run {len(self.history)}).{notes}", "ok")

    def _render(self) -> None:
        cards = []
        for item in self.items:
            image = widgets.Image(value=png_bytes(item["image"]), format="png", width=str(self.thumb_px))
            image.add_class("sd-image")
            label = widgets.HTML(describe(item["record"], item["score"]))
            cards.append(
                widgets.VBox([image, label], layout=widgets.Layout(margin="4px", width=f"{self.thumb_px + 8}px"))
            )
        self.gallery.children = tuple(cards)

    # ------------------------------------------------------------------------------------ rank and save
    def _begin(self, action: str) -> bool:
        """Claim the studio for `action` ("ranking", "saving"); False (with a message) while anything else goes."""
        with self._lock:
            if self._running or self._busy is not None:
                what = "a run" if self._running else self._busy
                self._show(f"Not {action}: {what} is going; wait for it to finish (or press Stop).", "error")
                return False
            self._busy = action
        self._set_buttons()
        return True

    def _end(self) -> None:
        with self._lock:
            self._busy = None
        self._set_buttons()

    def rank(self) -> list[float] | None:
        """Score the gallery with the ranker and reorder it, best first; returns the scores in the new order."""
        if not self._begin("ranking"):
            return None
        try:
            return self._rank()
        finally:
            self._end()

    def _rank(self) -> list[float] | None:
        if self.ranker is None:
            self._show("No ranker: pass PromptStudio(pipe, ranker=...) (see helpers.clip_ranking).", "error")
            return None
        if not self.items:
            self._show("Nothing to rank yet: press Generate first.", "error")
            return None
        items, generation = list(self.items), self._generation
        prompt = items[0]["record"]["prompt"]
        self._show(f"Ranking {len(items)} image(s)…")
        try:
            scores = self.ranker([it["image"] for it in items], prompt)
            scores = [float(s) for s in getattr(scores, "scores", scores)]
            if len(scores) != len(items):
                raise ValueError(f"the ranker returned {len(scores)} scores for {len(items)} images")
        except Exception as err:
            self._show(f"Ranking failed: {type(err).__name__}: {err}", "error")
            return None
        if generation != self._generation:  # a new run finished meanwhile: never put the old gallery back
            self._show("Ranking discarded: a newer run replaced the gallery; press Rank again.", "error")
            return None
        for item, score in zip(items, scores):
            item["score"] = score
        self.items = sorted(items, key=lambda it: -it["score"])  # stable: ties keep their order
        self._render()
        name = getattr(self.ranker, "__name__", type(self.ranker).__name__)
        self._show(f"Ranked {len(items)} image(s) by {name} score, best first.", "ok")
        return [it["score"] for it in self.items]

    def save(self) -> list[Path] | None:
        """Save the gallery on screen, in its order, to a new folder (never overwriting); returns the paths."""
        if not self._begin("saving"):
            return None
        try:
            return self._save()
        finally:
            self._end()

    def _save(self) -> list[Path] | None:
        items = list(self.items)
        if not items:
            self._show("Nothing to save yet: press Generate first.", "error")
            return None
        records = []
        for rank, item in enumerate(items):
            rec = dict(item["record"])
            if item["score"] is not None:
                rec.update(clip_score=item["score"], clip_rank=rank)
            records.append(rec)
        try:
            paths = save_images([it["image"] for it in items], records, root=self.save_root)
        except Exception as err:
            self._show(f"Saving failed: {type(err).__name__}: {err}", "error")
            return None
        self.saved_dirs.append(paths[0].parent)
        self._show(f"Saved {len(paths)} image(s) with their settings to {public_name(paths[0].parent)}", "ok")
        return paths
