"""The prompt studio: a small ipywidgets app around `generate()` for tweaking prompts.

    studio = PromptStudio(pipe)   # pipe from helpers.pipeline.load_pipeline()
    studio                        # shows the app in a notebook (or in Voila, as a web page)

How it is built (the three ideas notebook 04 tours):
- **widgets hold values**: every control is a widget whose `.value` is a trait; `settings()` reads them all.
- **events call functions**: `button.on_click(fn)` calls `fn(button)` on a click; `widget.observe(fn, "value")`
  calls `fn(change)` when a value changes (we use it to describe the memory preset).
- **the pipeline calls us back**: diffusers calls `callback_on_step_end(pipe, step, timestep, callback_kwargs)`
  after every denoising step; ours moves the progress bar and, after Stop, sets `pipe._interrupt = True`,
  which makes the pipeline skip the remaining steps and decode what it has.

A run happens in a background thread (`threaded=True`, the default) so that the kernel stays free to receive
the Stop click. `wait()` blocks until the run ends, so code (tests, notebook self-checks) can click and then
check; `threaded=False` runs inside the click itself. Only core widgets that exist in ipywidgets 7.7 and 8.
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
    MAX_IMAGES,
    MEMORY_PRESETS,
    SCHEDULERS,
    GenerationResult,
    apply_memory_preset,
    generate,
    scheduler_name,
    suggested_prompt,
    validate_inputs,
)
from .saving import save_images

#: `ranker(images, prompt) -> scores` (one float per image, higher = better match).
Ranker = Callable[[Sequence[Any], str], Sequence[float]]

TOY_CLIP_DIR = MODELS_DIR / "toy-clip"
MAX_SEED_BUTTON = 2**32 - 1  # the "random" button draws seeds a user can still type


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
        self.steps = widgets.IntSlider(value=num_inference_steps, min=1, max=250, description="Steps")
        self.guidance = widgets.FloatSlider(value=7.5, min=0.0, max=20.0, step=0.5, description="Guidance")
        self.scheduler = widgets.Dropdown(options=list(SCHEDULERS), value=scheduler_name(pipe), description="Scheduler")
        self.n_images = widgets.IntSlider(value=n_images, min=1, max=min(16, MAX_IMAGES), description="Images")
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
        self.rank_button.disabled = ranker is None or not self.items

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
        self.last_message = text
        colour = {"info": "#333", "error": "#b00020", "ok": "#1b5e20"}[kind]
        self.message.value = f"<div style='color:{colour};white-space:pre-wrap'>{html.escape(text)}</div>"
        if kind == "error":
            self.last_error = text

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
            settings = self.settings()
            memory = settings.pop("memory")
            try:
                validate_inputs(**settings)  # bad input: say so at once, keep the gallery
            except ValueError as err:
                self._show(f"Not started: {err}", "error")
                return False
            self._running = True
            self._stop_requested = False
            self.runs_started += 1
        self.generate_button.disabled = True
        self.stop_button.disabled = False
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
        except Exception as err:  # any failure becomes a message; the gallery stays
            self.progress.bar_style = "danger"
            self._show(f"The run failed: {type(err).__name__}: {err}", "error")
        else:
            self._finish(result)
        finally:
            with self._lock:
                self._running = False
            self.stop_button.disabled = True
            self.generate_button.disabled = False

    def _finish(self, result: GenerationResult) -> None:
        if result.interrupted:
            for rec in result.records:
                rec["stopped_at"] = f"{self.progress.value}/{self.progress.max}"
        self.history.append(result)
        self.items = [{"image": im, "record": rec, "score": None} for im, rec in zip(result.images, result.records)]
        self._render()
        self.rank_button.disabled = self.ranker is None
        self.save_button.disabled = False
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
    def rank(self) -> list[float] | None:
        """Score the gallery with the ranker and reorder it, best first; returns the scores in the new order."""
        if self.ranker is None:
            self._show("No ranker: pass PromptStudio(pipe, ranker=...) (see helpers.clip_ranking).", "error")
            return None
        if not self.items:
            self._show("Nothing to rank yet: press Generate first.", "error")
            return None
        items = list(self.items)
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
        for item, score in zip(items, scores):
            item["score"] = score
        self.items = sorted(items, key=lambda it: -it["score"])  # stable: ties keep their order
        self._render()
        name = getattr(self.ranker, "__name__", type(self.ranker).__name__)
        self._show(f"Ranked {len(items)} image(s) by {name} score, best first.", "ok")
        return [it["score"] for it in self.items]

    def save(self) -> list[Path] | None:
        """Save the gallery on screen, in its order, to a new folder (never overwriting); returns the paths."""
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
        self._show(f"Saved {len(paths)} image(s) with their settings to {paths[0].parent}", "ok")
        return paths
