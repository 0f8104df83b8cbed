"""helpers.pipeline on the tiny offline model: loading, model choice, batched generation, input checks,
black-image diagnosis, schedulers and memory presets. Few steps, tiny images: the whole file runs in seconds."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from helpers import pipeline as pl
from helpers.paths import REPO_ROOT
from helpers.pipeline import (
    DEFAULT_MODEL,
    LICENSE_URL,
    MAX_IMAGES,
    MAX_SEED,
    MEMORY_PRESETS,
    SCHEDULERS,
    GenerationResult,
    ModelUnavailableError,
    apply_memory_preset,
    choose_model,
    dtype_kwarg,
    explain_black_images,
    generate,
    load_pipeline,
    offline_model_dir,
)

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "Kermit the Frog on the Iron Throne"
FAST = {"num_inference_steps": 2, "show_progress": False}
RECORD_KEYS = {
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "model",
    "height",
    "width",
    "index",
}


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture
def unet_batches(tiny_pipe):
    """Batch sizes seen by the UNet during the test."""
    seen: list[int] = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    yield seen
    handle.remove()


@pytest.fixture
def pipe_calls(tiny_pipe, monkeypatch):
    """The keyword arguments of every call to the pipeline itself."""
    calls: list[dict] = []
    original = type(tiny_pipe).__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipe), "__call__", spy)
    return calls


# ------------------------------------------------------------------------------------------ loading


@pytest.fixture
def from_pretrained_kwargs(monkeypatch):
    """Spy on StableDiffusionPipeline.from_pretrained: the kwargs of each call (the real load still runs)."""
    seen: list[dict] = []
    original = StableDiffusionPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(spy))
    return seen


def test_load_from_a_local_folder(tiny_pipe, tiny_model_dir):
    assert isinstance(tiny_pipe, StableDiffusionPipeline)
    assert tiny_pipe.device.type == "cpu" and tiny_pipe.unet.dtype == torch.float32
    assert tiny_pipe.tokenizer.model_max_length == 77 and len(tiny_pipe.tokenizer) == 49408
    assert str(tiny_pipe.name_or_path) == str(tiny_model_dir)


def test_local_folder_in_fp32_loads_plain_files(tiny_model_dir, from_pretrained_kwargs):
    pipe = load_pipeline(tiny_model_dir, dtype=torch.float32)
    assert "variant" not in from_pretrained_kwargs[0]
    assert from_pretrained_kwargs[0][dtype_kwarg()] == torch.float32
    assert pipe.unet.dtype == torch.float32


def test_fp16_on_a_folder_without_fp16_files_casts(tiny_model_dir, from_pretrained_kwargs):
    pipe = load_pipeline(tiny_model_dir, dtype=torch.float16)
    assert "variant" not in from_pretrained_kwargs[0]  # no *.fp16.* files here
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16


@pytest.fixture(scope="module")
def fp16_folder(tiny_pipe, tmp_path_factory):
    """The tiny model saved the way the Hub stores SD v1-4's fp16 branch: only *.fp16.safetensors."""
    folder = tmp_path_factory.mktemp("tiny-fp16")
    half = StableDiffusionPipeline(
        **{k: copy.deepcopy(v) for k, v in tiny_pipe.components.items()}, requires_safety_checker=False
    ).to(torch.float16)
    half.save_pretrained(folder, variant="fp16")
    return folder


def test_fp16_folder_layout(fp16_folder):
    assert (fp16_folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert (fp16_folder / "text_encoder" / "model.fp16.safetensors").exists()
    assert not (fp16_folder / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_fp16_picks_the_fp16_files(fp16_folder, from_pretrained_kwargs, tiny_pipe):
    pipe = load_pipeline(fp16_folder, dtype=torch.float16)
    assert from_pretrained_kwargs[0]["variant"] == "fp16"
    assert from_pretrained_kwargs[0][dtype_kwarg()] == torch.float16
    assert pipe.unet.dtype == torch.float16
    # the same weights, rounded to fp16
    w16 = pipe.unet.conv_in.weight
    w32 = tiny_pipe.unet.conv_in.weight
    assert torch.equal(w16, w32.half())


def test_fp32_from_a_folder_holding_only_fp16_files(fp16_folder, from_pretrained_kwargs):
    """Like a Hub fp16 branch: the fp16 files are loaded and upcast, not a missing-file error."""
    pipe = load_pipeline(fp16_folder, dtype=torch.float32)
    assert from_pretrained_kwargs[0]["variant"] == "fp16"
    assert pipe.unet.dtype == torch.float32


def test_hub_id_offline_names_every_fix():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: the library never opens a connection in these tests
    with pytest.raises(ModelUnavailableError) as info:
        load_pipeline(DEFAULT_MODEL)
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert "login.py" in msg and LICENSE_URL in msg and "offline" in msg and "SD_MODEL=offline" in msg
    assert DEFAULT_MODEL in msg


def test_hub_id_offline_in_fp16_too():
    with pytest.raises(ModelUnavailableError, match="login.py"):
        load_pipeline(DEFAULT_MODEL, dtype=torch.float16)


class _FakePipe:
    def __init__(self):
        from helpers.offline import sd_scheduler

        self.scheduler = sd_scheduler()

    def to(self, device):
        return self


def test_hub_without_fp16_files_falls_back_with_a_warning(monkeypatch):
    seen = []

    def fake(cls, name, **kwargs):
        seen.append(dict(kwargs))
        if "variant" in kwargs:
            raise ValueError("You are trying to load the model files of the `variant=fp16`, but no such files")
        return _FakePipe()

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(fake))
    with pytest.warns(UserWarning, match="no fp16 weight files"):
        pipe = load_pipeline("someone/sd-model", dtype=torch.float16, token="hf_fake")
    assert isinstance(pipe, _FakePipe)
    assert seen[0]["variant"] == "fp16" and seen[0]["token"] == "hf_fake"
    assert "variant" not in seen[1] and seen[1][dtype_kwarg()] == torch.float16


def test_hub_fallback_that_cannot_download_still_explains(monkeypatch):
    def fake(cls, name, **kwargs):
        if "variant" in kwargs:
            raise ValueError("no such variant=fp16 files")
        raise OSError("not cached locally")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(fake))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelUnavailableError, match="login.py"):
            load_pipeline("someone/sd-model", dtype=torch.float16)


@pytest.mark.parametrize("bad", ["/nonexistent/sd-model", "./no-such-model", "no-such-model", "a/b/c"])
def test_neither_folder_nor_hub_id(bad):
    with pytest.raises(ValueError, match="neither a folder nor a Hub id"):
        load_pipeline(bad)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ValueError, match="save_pretrained"):
        load_pipeline(tmp_path)


def test_load_with_a_scheduler(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir, scheduler="ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="Unknown scheduler"):
        load_pipeline(tiny_model_dir, scheduler="karras")


def test_default_scheduler_and_steps_are_the_measured_pick(tiny_model_dir):
    """The defaults are what benchmarks/schedulers_quality.py picked (its latest committed full run)."""
    import json

    runs = sorted((pl.REPO_ROOT / "benchmarks" / "results").glob("schedulers_quality-*.json"))
    full = [json.loads(p.read_text()) for p in runs]
    full = [d for d in full if not d["smoke"]]
    assert full, "no committed full run of benchmarks/schedulers_quality.py"
    assert full[-1]["recommended"] == {"scheduler": pl.DEFAULT_SCHEDULER, "num_inference_steps": pl.DEFAULT_STEPS}
    pick = next(r for r in full[-1]["rows"] if (r["scheduler"], r["steps"]) == (pl.DEFAULT_SCHEDULER, pl.DEFAULT_STEPS))
    base = full[-1]["rows"][0]
    assert (base["scheduler"], base["steps"]) == ("pndm", 50) and pick["faithful"] >= base["faithful"] - 2
    # load_pipeline switches to it, built from the model's own config (same noise schedule); None keeps the model's
    pipe = load_pipeline(tiny_model_dir)
    assert pl.scheduler_name(pipe) == pl.DEFAULT_SCHEDULER
    own = load_pipeline(tiny_model_dir, scheduler=None)
    assert type(own.scheduler).__name__ == "PNDMScheduler"
    assert torch.equal(pipe.scheduler.alphas_cumprod, own.scheduler.alphas_cumprod)
    # the committed family records its own default, and saved that scheduler as the pipeline's
    family = pl.family_sampler(pl.TOY_MODEL_DIR)
    assert pl.scheduler_name(StableDiffusionPipeline.from_pretrained(pl.TOY_MODEL_DIR)) == family.scheduler
    import inspect

    assert inspect.signature(generate).parameters["num_inference_steps"].default is None  # the model's default
    assert pl.default_sampler(pipe).num_inference_steps == pl.DEFAULT_STEPS
    assert generate(pipe, "a red circle", show_progress=False).records[0]["num_inference_steps"] == pl.DEFAULT_STEPS


def test_defaults_depend_on_the_model(tiny_model_dir):
    """The committed toy family uses the sampler it records (Euler ancestral 30, measured with the strict judge); other
    toy-sized models keep the measured DDIM-10; real models get DPM-Solver++ 2M at 25 steps (diffusers' docs)."""
    from types import SimpleNamespace

    from helpers.training import V2_DEFAULT_SAMPLER

    toy = pl.default_sampler(pl.TOY_MODEL_DIR)
    assert (toy.scheduler, toy.num_inference_steps) == ("euler_a", 30)
    assert (toy.scheduler, toy.num_inference_steps) == tuple(
        V2_DEFAULT_SAMPLER[k] for k in ("scheduler", "num_inference_steps")
    )
    assert (pl.DEFAULT_SCHEDULER, pl.DEFAULT_STEPS) == ("ddim", 10)
    real = pl.default_sampler(DEFAULT_MODEL)
    assert (real.scheduler, real.num_inference_steps) == (pl.REAL_MODEL_SCHEDULER, pl.REAL_MODEL_STEPS)
    assert (real.scheduler, real.num_inference_steps) == ("dpmpp_2m", 25) and "2211.01095" in real.source
    big_unet = SimpleNamespace(parameters=lambda: [torch.empty(1).expand(pl.TOY_UNET_MAX_PARAMS)])
    assert pl.default_sampler(SimpleNamespace(unet=big_unet, name_or_path="my/sd-model")).scheduler == "dpmpp_2m"
    assert pl.default_sampler(load_pipeline(tiny_model_dir, scheduler=None)).scheduler == "ddim"  # tiny UNet


def test_cpu_minutes_come_from_the_committed_unet_benchmarks():
    """choose_model's CPU estimate is UNet step time (batch 2 = one guided step) x steps, from benchmarks/results."""
    import json

    results = pl.REPO_ROOT / "benchmarks" / "results"
    measured = {}
    for name in ("unet_cpu-20261201-081905.json", "unet_cpu-20261125-033051.json"):
        data = json.loads((results / name).read_text())
        row = next(r for r in data["rows"] if r["key"] == "fp32")
        assert data["args"]["latent"] == 64 and not data["smoke"]
        measured[data["machine"]["cpu_model"]] = row["s_per_step"]
    quiet, loaded = pl.CPU_UNET_STEP_S.values()
    assert abs(quiet - measured["AMD EPYC"]) < 0.01 and abs(loaded - measured["Intel(R) Xeon(R) Processor"]) < 0.1
    msg = pl.cpu_minutes_message()
    assert f"~{25 * quiet / 60:.0f} min" in msg and f"~{25 * loaded / 60:.0f} min" in msg and "25 guided" in msg


def test_suggested_prompt_fits_the_model(tiny_model_dir):
    assert pl.suggested_prompt(pl.TOY_MODEL_DIR)[0] == pl.TOY_PROMPT
    assert pl.suggested_prompt(str(pl.TOY_MODEL_DIR) + "/")[0] == pl.TOY_PROMPT
    assert pl.suggested_prompt(DEFAULT_MODEL)[0] == pl.BLOG_PROMPT == "Kermit the Frog on the Iron Throne"
    assert pl.suggested_prompt(tiny_model_dir)[0] == pl.BLOG_PROMPT


def test_load_without_safety_checker(tiny_model_dir, from_pretrained_kwargs):
    load_pipeline(tiny_model_dir, safety_checker=False)
    assert from_pretrained_kwargs[0]["safety_checker"] is None
    assert from_pretrained_kwargs[0]["requires_safety_checker"] is False


# ------------------------------------------------------------------------------------------ choose_model


@pytest.fixture
def no_model_env(monkeypatch):
    monkeypatch.delenv("SD_MODEL", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_choose_argument_wins(no_model_env, monkeypatch, tmp_path):
    monkeypatch.setenv("SD_MODEL", "offline")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_model("org/model") == ("org/model", "you passed it explicitly")
    assert choose_model(tmp_path)[0] == str(tmp_path)


def test_choose_env(no_model_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SD_MODEL", "runwayml/stable-diffusion-v1-5")
    model, why = choose_model()
    assert model == "runwayml/stable-diffusion-v1-5" and "SD_MODEL" in why
    for value in ("offline", "OFFLINE"):
        monkeypatch.setenv("SD_MODEL", value)
        model, why = choose_model()
        assert Path(model).resolve() == offline_model_dir().resolve() and "SD_MODEL=offline" in why
        assert not Path(model).is_absolute()  # printed by notebooks: never the absolute path


def test_choose_real_model_on_a_gpu(no_model_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model, why = choose_model()
    assert model == DEFAULT_MODEL == "CompVis/stable-diffusion-v1-4"
    assert "CUDA GPU" in why


def test_choose_offline_without_gpu(no_model_env):
    model, why = choose_model()
    assert Path(model).resolve() == offline_model_dir().resolve() and not Path(model).is_absolute()
    assert "no GPU" in why and "SD_MODEL" in why and "offline" in why
    assert "20 min" not in why and pl.cpu_minutes_message() in why  # measured figures, not a guess


def test_offline_model_is_loadable_by_default(no_model_env, from_pretrained_kwargs):
    pipe = load_pipeline()
    assert Path(pipe.name_or_path).resolve() == offline_model_dir().resolve()


# ------------------------------------------------------------------------------------------ generate


def test_one_batched_call_for_n_images(tiny_pipe, unet_batches, pipe_calls):
    result = generate(tiny_pipe, PROMPT, n_images=3, seed=10, **FAST)
    assert isinstance(result, GenerationResult) and len(result) == 3
    assert len(pipe_calls) == 1
    assert pipe_calls[0]["num_images_per_prompt"] == 3
    gens = pipe_calls[0]["generator"]
    assert isinstance(gens, list) and len(gens) == 3
    assert unet_batches and set(unet_batches) == {6}  # 3 images x (conditional + unconditional)
    assert all(im.size == (64, 64) and im.mode == "RGB" for im in result.images)
    assert result.nsfw == [False] * 3 and result.nan == [False] * 3
    assert result.messages == [] and result.interrupted is False


def test_records_are_complete(tiny_pipe, tiny_model_dir):
    result = generate(
        tiny_pipe, PROMPT, n_images=2, seed=5, guidance_scale=6.0, negative_prompt="blurry", height=48, width=32, **FAST
    )
    assert len(result.records) == 2
    for i, rec in enumerate(result.records):
        assert RECORD_KEYS <= set(rec)
        assert rec["prompt"] == PROMPT and rec["negative_prompt"] == "blurry"
        assert rec["seed"] == 5 + i and rec["index"] == i
        assert rec["num_inference_steps"] == 2 and rec["guidance_scale"] == 6.0
        assert rec["scheduler"] == "pndm"
        assert rec["model"] == tiny_model_dir.resolve().relative_to(REPO_ROOT.resolve()).as_posix()  # no home dir
        assert (rec["height"], rec["width"]) == (48, 32)
    assert result.images[0].size == (32, 48)  # PIL: (width, height)


def test_numpy_integers_become_plain_ints(tiny_pipe):
    rec = generate(tiny_pipe, PROMPT, seed=np.int64(3), n_images=np.int32(1), num_inference_steps=np.int64(1))
    rec = rec.records[0]
    assert type(rec["seed"]) is int and type(rec["num_inference_steps"]) is int


def test_image_i_regenerates_alone(tiny_pipe):
    batch = generate(tiny_pipe, PROMPT, n_images=3, seed=10, **FAST)
    for i in (0, 2):
        alone = generate(tiny_pipe, PROMPT, n_images=1, seed=10 + i, **FAST)
        assert alone.records[0]["seed"] == batch.records[i]["seed"]
        diff = np.abs(pixels(alone.images[0]) - pixels(batch.images[i])).max()
        assert diff <= 2, f"image {i} differs by {diff}/255 when regenerated alone"


def test_same_seed_same_images_other_seed_other_images(tiny_pipe):
    a = generate(tiny_pipe, PROMPT, n_images=2, seed=0, **FAST)
    b = generate(tiny_pipe, PROMPT, n_images=2, seed=0, **FAST)
    c = generate(tiny_pipe, PROMPT, n_images=1, seed=1000, **FAST)
    for x, y in zip(a.images, b.images):
        assert np.array_equal(pixels(x), pixels(y))
    assert not np.array_equal(pixels(a.images[0]), pixels(a.images[1]))  # seed 0 vs seed 1 in one batch
    assert np.abs(pixels(a.images[0]) - pixels(c.images[0])).max() > 10


def test_negative_prompt_changes_the_image(tiny_pipe):
    plain = generate(tiny_pipe, PROMPT, seed=3, **FAST)
    negative = generate(tiny_pipe, PROMPT, seed=3, negative_prompt="blurry, low quality", **FAST)
    assert np.abs(pixels(plain.images[0]) - pixels(negative.images[0])).max() > 0
    assert negative.records[0]["negative_prompt"] == "blurry, low quality"
    assert plain.records[0]["negative_prompt"] == ""


def test_long_prompt_warns_where_the_cut_falls(tiny_pipe):
    prompt = " ".join(["red"] * 70 + ["blue"] * 20)  # 90 tokens: 75 fit, 15 "blue" are dropped
    with pytest.warns(UserWarning, match="CLIP reads only 75") as caught:
        result = generate(tiny_pipe, prompt, num_inference_steps=1, show_progress=False)
    msg = next(str(w.message) for w in caught if "CLIP reads only" in str(w.message))
    assert "is 90 tokens" in msg
    assert "red blue blue blue blue blue'" in msg  # the kept part ends with the first 5 "blue"
    assert "ignored: '" + " ".join(["blue"] * 15) + "'" in msg
    assert msg in result.messages


def test_long_negative_prompt_warns_too(tiny_pipe):
    with pytest.warns(UserWarning, match="negative prompt is 100 tokens"):
        generate(tiny_pipe, PROMPT, negative_prompt="ugly " * 100, num_inference_steps=1, show_progress=False)


def test_75_tokens_fit_without_a_warning(tiny_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = generate(tiny_pipe, " ".join(["red"] * 75), num_inference_steps=1, show_progress=False)
    assert result.messages == []


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs_and_is_restored(tiny_pipe, name):
    original = tiny_pipe.scheduler
    result = generate(tiny_pipe, PROMPT, scheduler=name, height=32, width=32, **FAST)
    assert result.records[0]["scheduler"] == name
    assert np.isfinite(pixels(result.images[0])).all() and result.nan == [False]
    assert tiny_pipe.scheduler is original
    assert tiny_pipe.config.scheduler[1] == "PNDMScheduler"  # the pipeline's config is restored too


def test_scheduler_is_restored_after_an_error(tiny_pipe):
    original = tiny_pipe.scheduler

    def boom(pipe, step, t, kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        generate(tiny_pipe, PROMPT, scheduler="ddim", callback_on_step_end=boom, **FAST)
    assert tiny_pipe.scheduler is original


def test_scheduler_names_are_case_insensitive(tiny_pipe):
    assert generate(tiny_pipe, PROMPT, scheduler="DDIM", num_inference_steps=1).records[0]["scheduler"] == "ddim"


def test_callback_interrupt_stops_early(tiny_pipe, unet_batches):
    def stop_after_first(pipe, step, t, kwargs):
        pipe._interrupt = True
        return kwargs

    result = generate(tiny_pipe, PROMPT, num_inference_steps=3, callback_on_step_end=stop_after_first)
    assert result.interrupted is True
    assert len(unet_batches) == 1  # PNDM would have run 4 UNet steps for 3 inference steps
    assert len(result.images) == 1
    assert generate(tiny_pipe, PROMPT, **FAST).interrupted is False  # the next call starts afresh


# ------------------------------------------------------------------------------------------ black images


class FlagEvenImages(torch.nn.Module):
    """Stands in for StableDiffusionSafetyChecker: same call, flags images 0, 2, ... and blanks them."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))  # so the pipeline can find a device and dtype
        self.clip_shapes: list[tuple] = []

    @property
    def device(self) -> torch.device:  # the pipeline asks its modules for .device/.dtype, like ModelMixin's
        return self.scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    def forward(self, clip_input, images):
        self.clip_shapes.append(tuple(clip_input.shape))
        flags = [i % 2 == 0 for i in range(len(images))]
        images = images.clone()
        for i, flagged in enumerate(flags):
            if flagged:
                images[i] = 0
        return images, flags


def test_safety_checker_black_images_are_explained(fresh_tiny_pipe):
    from transformers import CLIPImageProcessor

    checker = FlagEvenImages()
    fresh_tiny_pipe.safety_checker = checker
    fresh_tiny_pipe.feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    with pytest.warns(UserWarning, match="safety checker"):
        result = generate(fresh_tiny_pipe, PROMPT, n_images=3, seed=7, **FAST)
    assert checker.clip_shapes == [(3, 3, 32, 32)]
    assert result.nsfw == [True, False, True]
    assert result.nan == [False] * 3
    assert pixels(result.images[0]).max() == 0 and pixels(result.images[2]).max() == 0
    assert pixels(result.images[1]).max() > 0
    flagged = [m for m in result.messages if "safety checker" in m]
    assert len(flagged) == 2
    assert "Image 0 (seed 7)" in flagged[0] and "Image 2 (seed 9)" in flagged[1]
    assert "another seed" in flagged[0] and "not a bug" in flagged[0]


@pytest.fixture
def nan_decoder(fresh_tiny_pipe):
    """The VAE decoder overflows: every output value is NaN (what fp16 does on some GPUs)."""
    handle = fresh_tiny_pipe.vae.decoder.register_forward_hook(lambda m, args, out: out * float("nan"))
    yield fresh_tiny_pipe
    handle.remove()


def test_nan_images_are_explained(nan_decoder):
    with pytest.warns(UserWarning, match="NaN"):
        result = generate(nan_decoder, PROMPT, n_images=2, seed=4, **FAST)
    assert result.nan == [True, True] and result.nsfw == [False, False]
    assert all(pixels(im).max() == 0 for im in result.images)  # shown black, not garbage
    assert len(result.messages) == 2
    assert "Image 1 (seed 5) contains NaN" in result.messages[1]
    assert "overflowed" in result.messages[0]


def test_nan_in_fp16_names_the_fp32_fix():
    records = [{"index": 0, "seed": 0}]
    (msg,) = explain_black_images([False], [True], records, torch.float16)
    assert "NaN" in msg and "dtype=torch.float32" in msg and "pipe.vae.to(torch.float32)" in msg
    (msg32,) = explain_black_images([False], [True], records, torch.float32)
    assert "guidance_scale" in msg32
    assert explain_black_images([False], [False], records, torch.float16) == []
    assert len(explain_black_images([True], [True], records, torch.float16)) == 2


# ------------------------------------------------------------------------------------------ bad inputs


class Untouchable:
    """A pipeline that fails the test if generate() does anything with it."""

    def __getattr__(self, name):
        raise AssertionError(f"generate() used pipe.{name} before checking its inputs")

    def __call__(self, *args, **kwargs):
        raise AssertionError("generate() ran the model before checking its inputs")


BAD_INPUTS = [
    ({"prompt": ""}, "prompt is empty: describe"),
    ({"prompt": "   \n"}, "prompt is empty"),
    ({"prompt": None}, "prompt must be a string"),
    ({"prompt": 42}, "prompt must be a string"),
    ({"prompt": ["a", "b"]}, "pass one text prompt"),
    ({"negative_prompt": 3}, "negative_prompt must be a string"),
    ({"n_images": 0}, "n_images must be a whole number from 1 to 64"),
    ({"n_images": -2}, "n_images must be"),
    ({"n_images": MAX_IMAGES + 1}, "generate_many.py|another seed"),
    ({"n_images": True}, "n_images must be"),
    ({"n_images": 2.0}, "n_images must be"),
    ({"n_images": "4"}, "n_images must be"),
    ({"num_inference_steps": 0}, r"num_inference_steps must be a whole number .*typical: 20-50"),
    ({"num_inference_steps": -1}, "num_inference_steps"),
    ({"num_inference_steps": 20.0}, "num_inference_steps"),
    ({"num_inference_steps": "50"}, "num_inference_steps"),
    ({"num_inference_steps": 1001}, "num_inference_steps"),
    ({"height": 65}, r"height must be a multiple of 8 .* try 64"),
    ({"width": 100}, r"width must be a multiple of 8 .* try 96"),
    ({"height": 0}, "height must be a multiple of 8"),
    ({"width": 4}, "width must be a multiple of 8"),
    ({"height": 4096}, r"between 8 and 2048 .* try 2048"),
    ({"width": 512.0}, r"width must be .* try 512"),
    ({"height": "512"}, "height must be"),
    ({"guidance_scale": float("nan")}, r"guidance_scale must be from 0 to 100.*7\.5"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be from 0 to 100"),
    ({"guidance_scale": -float("inf")}, "guidance_scale must be from 0"),
    ({"guidance_scale": -1.0}, "guidance_scale must be from 0 to 100"),
    ({"guidance_scale": 1e308}, "guidance_scale must be from 0 to 100"),
    ({"guidance_scale": 10**400}, "guidance_scale must be a number"),
    ({"guidance_scale": np.float64(1e300)}, "guidance_scale must be from 0 to 100"),
    ({"n_images": np.bool_(True)}, "n_images must be"),
    ({"seed": np.uint64(2**64 - 1)}, "seed must be a whole number"),
    ({"seed": np.int64(MAX_SEED), "n_images": np.int64(2)}, r"images use seed, seed\+1"),
    ({"seed": 10**30}, "seed must be a whole number"),
    ({"height": np.int64(2**63 - 8)}, r"height must be .* try 2048"),
    ({"width": float("nan")}, r"width must be .* try 512"),
    ({"guidance_scale": "7.5"}, "guidance_scale must be a number"),
    ({"guidance_scale": None}, "guidance_scale must be a number"),
    ({"guidance_scale": True}, "guidance_scale must be a number"),
    ({"seed": -1}, "seed must be a whole number from 0"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": "0"}, "seed must be a whole number"),
    ({"seed": None}, "seed must be a whole number"),
    ({"seed": True}, "seed must be a whole number"),
    ({"seed": MAX_SEED + 1}, "seed must be a whole number"),
    ({"seed": MAX_SEED, "n_images": 2}, r"images use seed, seed\+1"),
    ({"scheduler": "karras"}, "Unknown scheduler 'karras': choose one of pndm, ddim"),
    ({"scheduler": ""}, "Unknown scheduler"),
    ({"scheduler": 3}, "Unknown scheduler"),
]


@pytest.mark.parametrize(
    "bad,match", BAD_INPUTS, ids=[",".join(f"{k}={v!r}" for k, v in b.items()) for b, _ in BAD_INPUTS]
)
def test_bad_input_raises_before_any_model_work(bad, match):
    kwargs = {"prompt": PROMPT, **bad}
    prompt = kwargs.pop("prompt")
    with pytest.raises(ValueError, match=match):
        generate(Untouchable(), prompt, **kwargs)


def test_largest_seed_is_accepted():
    pl.validate_inputs(PROMPT, n_images=2, seed=MAX_SEED - 1)
    pl.validate_inputs(PROMPT, n_images=MAX_IMAGES, seed=0, height=8, width=2048, guidance_scale=0)
    pl.validate_inputs(PROMPT, seed=np.int64(5), guidance_scale=np.float32(7.5), num_inference_steps=np.int32(3))


def test_integer_like_values_are_taken_exactly(tiny_pipe):
    """operator.index, never float or C arithmetic: a numpy seed near 2**63 is neither wrapped nor rounded."""

    class Seed:  # any integer-like type: __index__ is the contract
        def __index__(self):
            return MAX_SEED - 1

    checked = pl.validate_inputs(PROMPT, n_images=np.int8(2), seed=np.int64(MAX_SEED - 1), height=np.uint16(64))
    assert checked["seed"] == MAX_SEED - 1 and type(checked["seed"]) is int and checked["height"] == 64
    assert pl.validate_inputs(PROMPT, seed=Seed())["seed"] == MAX_SEED - 1
    with pytest.raises(ValueError, match="seed must be"):  # np.int64 arithmetic would wrap to a negative number
        pl.validate_inputs(PROMPT, n_images=np.int64(3), seed=np.int64(MAX_SEED - 1))
    result = generate(tiny_pipe, PROMPT, n_images=np.int64(2), seed=np.int64(MAX_SEED - 1), height=64, width=64, **FAST)
    assert [r["seed"] for r in result.records] == [MAX_SEED - 1, MAX_SEED]


def test_seed_errors_say_the_range():
    with pytest.raises(ValueError) as info:
        pl.validate_inputs(PROMPT, seed=-1)
    assert str(MAX_SEED) in str(info.value)


# ------------------------------------------------------------------------------------------ memory presets


@pytest.mark.parametrize("preset", list(MEMORY_PRESETS))
def test_memory_presets_on_cpu(fresh_tiny_pipe, preset, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    done = apply_memory_preset(fresh_tiny_pipe, preset)
    vae = fresh_tiny_pipe.vae
    if preset == "none":
        assert done == ["all memory savers off"]
        assert not vae.use_slicing and not vae.use_tiling
    if preset in ("balanced", "low"):
        assert "attention slicing" in done and vae.use_slicing
    if preset in ("low", "lowest"):
        assert vae.use_tiling and "CPU offload skipped (needs a CUDA GPU)" in done
    result = generate(fresh_tiny_pipe, PROMPT, n_images=2, num_inference_steps=1, show_progress=False)
    assert len(result.images) == 2 and result.nan == [False, False]


def test_presets_undo_each_other(fresh_tiny_pipe):
    apply_memory_preset(fresh_tiny_pipe, "low")
    apply_memory_preset(fresh_tiny_pipe, "none")
    assert not fresh_tiny_pipe.vae.use_slicing and not fresh_tiny_pipe.vae.use_tiling


@pytest.mark.parametrize(
    "preset,method", [("low", "enable_model_cpu_offload"), ("lowest", "enable_sequential_cpu_offload")]
)
def test_offload_presets_on_a_gpu(fresh_tiny_pipe, monkeypatch, preset, method):
    called = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fresh_tiny_pipe, method, lambda *a, **k: called.append(method), raising=False)
    done = apply_memory_preset(fresh_tiny_pipe, preset)
    assert called == [method]
    assert any("CPU offload" in d and "skipped" not in d for d in done)


def test_unknown_preset():
    with pytest.raises(ValueError, match="choose one of none, balanced, low, lowest"):
        apply_memory_preset(Untouchable(), "tiny")


def test_explicit_fp16_variant_on_a_folder_without_fp16_files_says_so(tiny_model_dir):
    with pytest.raises(ValueError, match="no \\*.fp16.safetensors files.*variant='auto'"):
        load_pipeline(tiny_model_dir, device="cpu", dtype=torch.float32, variant="fp16")


# ------------------------------------------------------------------------------------------ out of memory


def test_out_of_memory_is_caught_released_and_explained(fresh_tiny_pipe, monkeypatch):
    released = []
    monkeypatch.setattr(pl, "release_memory", lambda: released.append(True))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(fresh_tiny_pipe.unet, "forward", oom)
    original = fresh_tiny_pipe.scheduler
    with pytest.raises(pl.NotEnoughMemoryError) as info:
        generate(fresh_tiny_pipe, PROMPT, n_images=8, height=64, width=64, scheduler="euler", **FAST)
    msg = str(info.value)
    assert released == [True] and fresh_tiny_pipe.scheduler is original
    assert "Out of memory on cpu making 8 image(s) of 64x64" in msg
    order = [msg.index(s) for s in ("1. fewer images at once (n_images=4)", "2. a smaller size", "3. a memory preset",
                                    "4. fp16")]  # fmt: skip
    assert order == sorted(order)
    assert info.value.__cause__ is None and info.value.__context__ is None  # the failed run's tensors are unreachable


def test_mps_style_out_of_memory_runtime_error_is_caught_too(fresh_tiny_pipe, monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)")

    monkeypatch.setattr(fresh_tiny_pipe.unet, "forward", oom)
    with pytest.raises(pl.NotEnoughMemoryError, match="Fixes, in order"):
        generate(fresh_tiny_pipe, PROMPT, height=64, width=64, **FAST)


def test_other_runtime_errors_pass_through(fresh_tiny_pipe, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(fresh_tiny_pipe.unet, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        generate(fresh_tiny_pipe, PROMPT, height=64, width=64, **FAST)


# ------------------------------------------------------------------------------------------ load_pipeline checks


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if load_pipeline loads anything."""

    def forbidden(*args, **kwargs):
        raise AssertionError("load_pipeline loaded a model before checking its arguments")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", forbidden)


BAD_LOAD = [
    ({"dtype": "float16"}, r"dtype must be a torch dtype, not the string 'float16': pass dtype=torch.float16"),
    ({"dtype": "torch.bfloat16"}, r"pass dtype=torch.bfloat16"),
    ({"dtype": torch.int8}, "dtype must be torch.float16"),
    ({"scheduler": "karras"}, "Unknown scheduler 'karras'"),
    ({"device": "gpu"}, "Unknown device 'gpu'"),
    ({"safety_checker": "no"}, "safety_checker must be True or False"),
    ({"variant": 16}, "variant must be"),
    ({"token": 123}, "token must be a string"),
    ({"model": ""}, "model is empty: pass a Hub id"),
    ({"model": "  "}, "model is empty"),
    ({"model": 3}, "model must be a Hub id or a folder path"),
]


@pytest.mark.parametrize("bad,match", BAD_LOAD, ids=[",".join(f"{k}={v!r}" for k, v in b.items()) for b, _ in BAD_LOAD])
def test_load_pipeline_checks_every_argument_before_loading(tiny_model_dir, no_loading, bad, match):
    kwargs = {"model": tiny_model_dir, **bad}
    with pytest.raises(ValueError, match=match):
        load_pipeline(**kwargs)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_model_dir, tmp_path / "my-model"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = [
    ("unet/diffusion_pytorch_model.safetensors", _truncate, "unet/diffusion_pytorch_model.safetensors"),
    ("vae/diffusion_pytorch_model.safetensors", lambda p: p.write_bytes(b"\x00" * 10), "vae/diffusion_pytorch_model"),
    ("unet/diffusion_pytorch_model.safetensors", Path.unlink, "unet/diffusion_pytorch_model.safetensors is missing"),
    ("text_encoder/config.json", lambda p: p.write_text("{not json"), "text_encoder/config.json"),
    ("model_index.json", lambda p: p.write_text("[}"), "model_index.json"),
    ("tokenizer", lambda p: __import__("shutil").rmtree(p), "tokenizer is missing"),
]


@pytest.mark.parametrize("file,damage,named", DAMAGE, ids=["truncated", "garbage", "missing", "bad-config",
                                                           "bad-index", "no-tokenizer"])  # fmt: skip
def test_damaged_model_folder_names_the_file_and_the_fix(model_copy, no_loading, file, damage, named):
    target = model_copy / file
    if not target.exists() and file.endswith(".safetensors"):
        pytest.skip(f"{file} is stored under another name in this model")
    damage(target)
    with pytest.raises(pl.ModelFilesError) as info:
        load_pipeline(model_copy, device="cpu")
    msg = str(info.value)
    assert "The model folder my-model is damaged" in msg and named in msg and "Fix:" in msg
    assert str(model_copy.parent) not in msg  # the folder's name, not its absolute path


def test_models_are_recorded_without_absolute_paths(tiny_pipe):
    from helpers.saving import public_name

    assert public_name("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
    assert (
        public_name(offline_model_dir()) in ("models/toy-sd", offline_model_dir().name)
        or not Path(public_name(offline_model_dir())).is_absolute()
    )
    record = generate(tiny_pipe, PROMPT, height=64, width=64, **FAST).records[0]
    assert not Path(record["model"]).is_absolute() and str(Path.home()) not in record["model"]


def test_load_uses_no_deprecated_dtype_argument(tiny_model_dir):
    """diffusers 0.42 deprecates `torch_dtype`; load_pipeline passes the name the installed diffusers wants."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pipeline(tiny_model_dir, device="cpu", dtype=torch.float32)
    assert not [w for w in caught if "torch_dtype" in str(w.message)], [str(w.message) for w in caught]


def test_prompts_the_toy_family_cannot_know_are_named():
    """ "Kermit the Frog on the Iron Throne" on the toy family must not silently return blobs."""
    from helpers.paths import MODELS_DIR

    pipe = load_pipeline(MODELS_DIR / "toy-sd", device="cpu", dtype=torch.float32)
    result = generate(pipe, "Kermit the Frog on the Iron Throne", num_inference_steps=2, show_progress=False)
    (msg,) = [m for m in result.messages if "never saw" in m]
    for word in ("kermit", "frog", "iron", "throne"):
        assert f"'{word}'" in msg
    assert "Try 'a " in msg  # a caption it knows
    known = generate(pipe, "a red circle on a blue background", num_inference_steps=2, show_progress=False)
    assert not [m for m in known.messages if "never saw" in m]
