"""The prompt studio driven through its widgets, without a browser: set `.value`, call `button.click()`.

Runs on the offline model (trained toy family if present, else the tiny random model) with few steps.
"""

from __future__ import annotations

import random
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import helpers  # noqa: F401  (quiet library logs before diffusers is imported)
from helpers.pipeline import generate, load_pipeline, make_scheduler, offline_model_dir
from helpers.saving import read_manifest, read_metadata
from helpers.studio import MAX_SEED_BUTTON, TOY_CLIP_DIR, PromptStudio, clip_ranker, default_ranker

STEPS, N = 3, 2
WAIT = 120  # seconds: generous bound for a shared 2-core CPU; a hang fails instead of blocking CI


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from threads; on a busy CPU they spin-wait for seconds
    yield load_pipeline(offline_model_dir())
    torch.set_num_threads(threads)


@pytest.fixture
def studio(pipe, tmp_path):
    s = PromptStudio(pipe, ranker=None, save_root=tmp_path, num_inference_steps=STEPS, n_images=N, seed=7)
    s.prompt.value = "a red circle on a blue background"
    s.scheduler.value = "ddim"  # DDIM runs exactly num_inference_steps steps
    yield s
    s.stop()
    assert s.wait(WAIT)


def run(studio) -> None:
    studio.generate_button.click()
    assert studio.wait(WAIT), "the run did not finish"


@contextmanager
def paused_run(studio):
    """Click Generate and hold the run after its first step, so the test can click things during a run."""
    started, go = threading.Event(), threading.Event()

    def hook(pipe, step, timestep):
        if step == 0:
            started.set()
            go.wait(WAIT)

    studio.step_hooks.append(hook)
    studio.generate_button.click()
    try:
        assert started.wait(WAIT), "the run never reached its first step"
        yield
    finally:
        go.set()
        assert studio.wait(WAIT)
        studio.step_hooks.remove(hook)


def labels(studio) -> list[str]:
    return [card.children[1].value for card in studio.gallery.children]


def test_generate_fills_gallery_progress_reaches_max(studio, pipe):
    assert studio.gallery.children == () and studio.save_button.disabled
    run(studio)
    assert len(studio.gallery.children) == N and len(studio.history) == 1
    for i, card in enumerate(studio.gallery.children):
        image, label = card.children
        assert image.value[:8] == b"\x89PNG\r\n\x1a\n"  # shown as PNG bytes
        assert f"seed {7 + i}</b>" in label.value and f"{STEPS} steps" in label.value and "ddim" in label.value
    assert studio.progress.max == STEPS and studio.progress.value == studio.progress.max
    assert not studio.generate_button.disabled and studio.stop_button.disabled and not studio.save_button.disabled
    assert "Done" in studio.message.value and studio.last_error is None
    # The studio adds nothing of its own: the same settings through generate() give the same pixels.
    direct = generate(pipe, "a red circle on a blue background", n_images=N, seed=7, num_inference_steps=STEPS,
                      scheduler="ddim", show_progress=False)  # fmt: skip
    for mine, ref in zip(studio.items, direct.images):
        assert np.abs(np.asarray(mine["image"], float) - np.asarray(ref, float)).max() <= 2


def test_pndm_progress_counts_its_extra_step(studio):
    studio.scheduler.value = "pndm"  # SD's PNDM (PLMS) repeats one timestep at the start: steps + 1 callbacks
    run(studio)
    scheduler = make_scheduler(studio.pipe, "pndm")
    scheduler.set_timesteps(STEPS)
    assert studio.progress.max == len(scheduler.timesteps) > STEPS
    assert studio.progress.value == studio.progress.max


def test_stop_ends_early(studio):
    studio.steps.value = 6
    with paused_run(studio):
        assert studio.running and studio.generate_button.disabled and not studio.stop_button.disabled
        studio.stop_button.click()
    result = studio.history[-1]
    assert result.interrupted
    assert studio.progress.value == 1 < studio.progress.max == 6
    assert len(studio.gallery.children) == N and all("stopped at step 1/6" in x for x in labels(studio))
    assert "Stopped early" in studio.message.value and not studio.generate_button.disabled


def test_second_click_during_run_does_not_start_another(studio):
    with paused_run(studio):
        studio.generate_button.click()  # ipywidgets fires handlers even on a disabled button
        studio.generate_button.click()
        assert studio.runs_started == 1 and "already going" in studio.message.value
    assert studio.runs_started == 1 and len(studio.history) == 1


def test_second_click_in_unthreaded_mode(pipe, tmp_path):
    studio = PromptStudio(pipe, ranker=None, save_root=tmp_path, threaded=False, num_inference_steps=STEPS, n_images=1)
    studio.step_hooks.append(lambda *_: studio.generate_button.click())  # a click arriving mid-run
    studio.generate_button.click()  # returns only when the run is over
    assert studio.runs_started == 1 and len(studio.history) == 1 and len(studio.gallery.children) == 1


def test_bad_input_shows_error_and_keeps_gallery(studio):
    run(studio)
    shown, items = studio.gallery.children, list(studio.items)
    for widget, bad, words in [
        (studio.height, 100, "multiple of 8"),
        (studio.prompt, "   ", "prompt is empty"),
        (studio.seed, -1, "seed must be"),
    ]:
        good = widget.value
        widget.value = bad
        studio.generate_button.click()
        assert studio.wait(WAIT)
        assert words in studio.message.value and "Not started" in studio.last_error
        assert studio.gallery.children is shown and studio.items == items and studio.runs_started == 1
        assert not studio.generate_button.disabled
        widget.value = good


def test_failure_during_run_keeps_gallery(studio):
    run(studio)
    shown = studio.gallery.children

    def boom(pipe, step, timestep):
        raise RuntimeError("a simulated failure")

    studio.step_hooks.append(boom)
    run(studio)
    assert "The run failed: RuntimeError: a simulated failure" in studio.last_error
    assert studio.gallery.children is shown and len(studio.history) == 1
    assert not studio.generate_button.disabled and not studio.running
    studio.step_hooks.remove(boom)
    run(studio)  # the app recovers
    assert len(studio.history) == 2 and "Done" in studio.message.value


def test_memory_preset_is_applied(studio, pipe):
    studio.memory.value = "balanced"
    assert "attention slicing" in studio.memory_help.value
    run(studio)
    assert pipe.vae.use_slicing
    studio.memory.value = "none"
    run(studio)
    assert not pipe.vae.use_slicing


def test_random_seed_button(studio):
    expected = random.Random(3)
    studio.rng = random.Random(3)
    for _ in range(3):
        studio.random_button.click()
        assert studio.seed.value == expected.randint(0, MAX_SEED_BUTTON)


def test_save_writes_the_gallery_without_overwriting(studio, tmp_path):
    run(studio)
    studio.save_button.click()
    studio.save_button.click()
    first, second = studio.saved_dirs
    assert first != second and first.parent == second.parent == tmp_path
    assert second.name in studio.message.value and str(second.parent) not in studio.message.value
    for folder in (first, second):
        pngs = sorted(folder.glob("*.png"))
        assert [read_metadata(p)["seed"] for p in pngs] == [7, 8]
        assert len(read_manifest(folder)["images"]) == N


def brightness(images, prompt):
    """A stand-in ranker with a checkable answer: brighter is better."""
    return [float(np.asarray(im, float).mean()) for im in images]


def test_rank_reorders_gallery_and_shows_scores(studio, tmp_path):
    assert studio.rank() is None and "No ranker" in studio.last_error
    studio.ranker = brightness
    assert studio.rank_button.disabled and studio.rank_button.description == "Rank with CLIP"  # nothing to rank yet
    studio.n_images.value = 4
    run(studio)
    assert not studio.rank_button.disabled
    before = [it["record"]["seed"] for it in studio.items]
    values = dict(zip(before, brightness([it["image"] for it in studio.items], "")))
    studio.rank_button.click()
    after = [it["record"]["seed"] for it in studio.items]
    assert after == sorted(before, key=lambda seed: -values[seed]) and sorted(after) == before
    for seed, label in zip(after, labels(studio)):
        assert f"seed {seed}</b>" in label and f"score {values[seed]:.3f}" in label
    assert "by brightness score" in studio.message.value
    paths = studio.save()  # saved in the ranked order, with the scores
    meta = [read_metadata(p) for p in paths]
    assert [m["seed"] for m in meta] == after and [m["clip_rank"] for m in meta] == [0, 1, 2, 3]


def test_clip_ranker_orders_like_clip_ranking(studio, monkeypatch):
    clip_ranking = pytest.importorskip("helpers.clip_ranking", reason="helpers.clip_ranking is not here yet")
    folder = clip_ranking.offline_clip_dir()  # the trained toy CLIP, else a tiny random one: same code path
    studio.ranker = clip_ranker(folder)
    studio.n_images.value = 3
    run(studio)
    images = [it["image"] for it in studio.items]
    scores = studio.rank()
    expected = clip_ranking.rank(
        images, studio.prompt.value, clip_ranking.load_clip(folder, backend="torch"), method="torch"
    )
    assert [it["image"] for it in studio.items] == [images[i] for i in expected.order]
    assert np.allclose(scores, expected.sorted_scores, atol=1e-4)
    # Which CLIP the studio picks by itself: none without a trained one (random scores mean nothing).
    monkeypatch.delenv("CLIP_MODEL", raising=False)
    hub = default_ranker("CompVis/stable-diffusion-v1-4")  # lazy: nothing is downloaded here
    assert hub is not None and "clip-vit-base-patch32" in hub.__name__
    local = default_ranker(str(offline_model_dir()))
    assert (local is not None) == (TOY_CLIP_DIR / "config.json").exists()


# ------------------------------------------------------------------------------------------ hardening


def test_out_of_memory_names_the_studio_fixes_and_recovers(studio):
    run(studio)
    shown = studio.gallery.children

    def oom(pipe, step, timestep):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    studio.step_hooks.append(oom)
    try:
        run(studio)
    finally:
        studio.step_hooks.remove(oom)
    msg = studio.last_error
    assert msg.startswith("The run failed: Out of memory") and "OutOfMemoryError" not in msg
    steps = [msg.index(f) for f in ("1. fewer images at once (Images=1)", "2. a smaller size (Height and Width",
                                    "3. a memory preset (the Memory menu", "4. fp16")]  # fmt: skip
    assert steps == sorted(steps)
    assert studio.gallery.children is shown and not studio.running and not studio.generate_button.disabled
    run(studio)
    assert "Done" in studio.message.value and studio.last_error is None


def test_rank_and_save_wait_for_the_run(studio):
    studio.ranker = brightness
    run(studio)
    assert not studio.rank_button.disabled and not studio.save_button.disabled
    with paused_run(studio):
        assert studio.rank_button.disabled and studio.save_button.disabled  # one action at a time
        assert studio.rank() is None and "Not ranking: a run is going" in studio.last_error
        assert studio.save() is None and "Not saving: a run is going" in studio.last_error
        assert studio.saved_dirs == []
    assert not studio.rank_button.disabled and not studio.save_button.disabled
    assert [it["score"] for it in studio.items] == [None] * N  # the new run's gallery, unranked


def test_generate_waits_for_a_slow_ranking(studio):
    """A ranking in progress (a slow CLIP) keeps Generate from replacing the gallery under it."""
    run(studio)
    clicked = {}

    def slow_ranker(images, prompt):
        clicked["started"] = studio.start()  # Generate clicked while the ranker works
        clicked["generate_disabled"] = studio.generate_button.disabled
        return brightness(images, prompt)

    studio.ranker = slow_ranker
    ranked = [it["image"] for it in studio.items]
    assert studio.rank() is not None
    assert clicked == {"started": False, "generate_disabled": True}
    assert studio.runs_started == 1 and sorted(map(id, (it["image"] for it in studio.items))) == sorted(map(id, ranked))
    assert "Ranked" in studio.message.value and studio.last_error is None  # the latest action's message


@pytest.mark.parametrize(
    "widget,bad,words",
    [
        ("steps", 300, "Steps must be from 1 to 250, got 300"),
        ("steps", 0, "Steps must be from 1 to 250, got 0"),
        ("n_images", 20, "Images must be from 1 to 16 here, got 20"),
        ("n_images", 0, "Images must be from 1 to 16"),
        ("guidance", 150.0, "Guidance must be from 0 to 100, got 150"),
        ("guidance", -1.0, "Guidance must be from 0 to 100, got -1"),
    ],
)
def test_out_of_range_values_are_refused_not_clamped(studio, widget, bad, words):
    getattr(studio, widget).value = bad
    assert getattr(studio, widget).value == bad  # kept as typed: nothing clamps it silently
    studio.generate_button.click()
    assert studio.wait(WAIT)
    assert studio.runs_started == 0 and f"Not started: {words}" in studio.last_error


def test_messages_follow_the_latest_action(studio):
    studio.seed.value = -1
    studio.generate_button.click()
    assert "seed must be" in studio.last_error
    studio.seed.value = 7
    run(studio)
    assert studio.last_error is None and "Done" in studio.message.value and "seed must be" not in studio.message.value
    studio.save()
    assert studio.last_error is None and "Saved" in studio.message.value


def test_a_prompt_the_toy_family_cannot_know_is_named_in_the_message_line(studio):
    studio.prompt.value = "Kermit the Frog on the Iron Throne"
    run(studio)
    assert "never saw 'kermit', 'frog', 'iron', 'throne'" in studio.last_message
    assert "Try 'a " in studio.last_message
    studio.prompt.value = "a red circle on a blue background"
    run(studio)
    assert "never saw" not in studio.last_message  # the next run's message replaces it
