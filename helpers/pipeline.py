"""Load a Stable Diffusion pipeline and generate images with it: the blog's fp16 inference, made to work.

The blog (2022) wrote::

    pipe = StableDiffusionPipeline.from_pretrained(model_id, torch_dtype=torch.float16, revision="fp16", use_auth_token=True)
    for i in range(sample_num):
        with autocast("cuda"):
            lst.append(pipe(prompt, guidance_scale=7.5)["sample"][0])

Today: `revision="fp16"` became `variant="fp16"`, `use_auth_token` became `token` (or a saved login),
`["sample"]` became `.images`, and `autocast` is slower than pure fp16 and can give black images.
We also make one batched call for all `n_images` with one `torch.Generator` per image, so image `i`
is reproducible alone from seed `seed + i`.

The same `load_pipeline(model)` call takes a Hub id (Colab, GPU) or a local folder (CI, CPU, offline).
"""

from __future__ import annotations

import gc
import json
import math
import operator
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device import pick_device
from .hub import hub_call
from .paths import MODELS_DIR, REPO_ROOT
from .saving import public_name

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
LICENSE_URL = "https://huggingface.co/CompVis/stable-diffusion-v1-4"
TOY_MODEL_DIR = MODELS_DIR / "toy-sd"  # the trained offline family, when present

MAX_IMAGES = 64  # one batched call; beyond this use scripts/generate_many.py
MAX_STEPS = 1000  # the schedule has 1000 training timesteps
MIN_SIZE, MAX_SIZE = 8, 2048  # pixels; SD v1 was trained at 512
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; keep seed + n within int64
MAX_GUIDANCE = 100.0  # beyond ~30 images burn out; far beyond, fp16 overflows to inf
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Default samplers depend on the model: what was measured where, and what the literature supports where we could not.
# A toy family records its own default in its training_summary.json (`family_sampler`): the committed one, Euler
# ancestral at 30 steps (`training.V2_DEFAULT_SAMPLER`, measured with the strict judge). A toy folder that records
# none (the first 32 px family, the tiny random test model) gets the fastest setting measured within 2 points of
# PNDM-50's prompt-faithfulness on the first family (PNDM at 50 steps is SD v1's and the blog's default):
# benchmarks/schedulers_quality.py found DDIM at 10 steps 94.8% faithful vs PNDM-50's 90.0%, with 5.1x fewer UNet
# calls (benchmarks/README.md, 3). `DEFAULT_SCHEDULER`/`DEFAULT_STEPS` name that pick.
DEFAULT_SCHEDULER = "ddim"
DEFAULT_STEPS = 10
# Any other model (SD v1-4 and its relatives): not measured here (no GPU, no weights). DPM-Solver++ 2M, the
# second-order multistep solver of Lu et al. 2022 (DPM-Solver++, https://arxiv.org/abs/2211.01095, made for guided
# sampling); diffusers' docs on `DPMSolverMultistepScheduler`: "DPMSolver sampling with only 20 steps can generate
# high-quality samples" and solver_order=2 "for guided sampling"
# (https://huggingface.co/docs/diffusers/api/schedulers/multistep_dpm_solver). We take 25 steps, a margin over the
# docs' 20 because it is unmeasured on v1-4 here; the pipeline's own PNDM at 50 steps (diffusers' default) is
# `scheduler="pndm", num_inference_steps=50`.
REAL_MODEL_SCHEDULER = "dpmpp_2m"
REAL_MODEL_STEPS = 25
TOY_UNET_MAX_PARAMS = 100_000_000  # the offline models' UNets have ~1-4 M parameters; SD v1's has 859.5 M

# SD v1-4 on CPU: one UNet step at 64x64 latents, batch 2 (= one guided step), fp32, measured by
# benchmarks/unet_cpu.py: 6.47 s on a quiet 2-core AMD EPYC VM (benchmarks/results/unet_cpu-20261201-081905.json),
# 46.0 s on a 2-core Xeon VM under heavy load (unet_cpu-20261125-033051.json). tests/test_pipeline.py reads both.
CPU_UNET_STEP_S = {"quiet 2-core AMD EPYC VM": 6.47, "heavily loaded 2-core Xeon VM": 46.0}

BLOG_PROMPT = "Kermit the Frog on the Iron Throne"  # the blog's prompt, for real models
TOY_PROMPT = "a red circle on a blue background"  # the toy family only knows coloured shapes on plain backgrounds

# name -> diffusers class name; every one is built from the pipeline's own scheduler config
SCHEDULERS = {
    "pndm": "PNDMScheduler",  # SD v1-4's default (and the blog's)
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}

#: What each memory preset switches on, and what it costs (see `apply_memory_preset`). Not measured here (no GPU):
#: the trade-offs are the ones diffusers' guide describes (https://huggingface.co/docs/diffusers/optimization/memory);
#: benchmarks/gpu_ladder.py measures them on a GPU.
MEMORY_PRESETS = {
    "none": "everything on the GPU, no slicing: fastest, highest peak memory",
    "balanced": "attention slicing + VAE slicing: attention computed in slices and the VAE decoding one image at a "
    "time; lower peak memory for batches, a little slower",
    "low": "balanced + VAE tiling + model CPU offload: each model moves to the GPU only while it runs; for small "
    "GPUs, slower",
    "lowest": "sequential CPU offload: weights stream to the GPU layer by layer; the least GPU memory (diffusers' "
    "guide: under 3 GB for SD), many times slower",
}


class ModelUnavailableError(OSError):
    """The model could not be loaded from the Hub or the cache; the message names the fixes."""


class ModelFilesError(ValueError):
    """A local model folder is missing a file or holds a damaged one; the message names the file and the fix."""


class NotEnoughMemoryError(MemoryError):
    """The device ran out of memory during generation; the memory is released and the message names the fixes."""


def _near(path: Path) -> str:
    """`path` relative to the working directory when both are inside the project, else as given.

    What notebooks print and records keep must not show the absolute path (it holds the user's name)."""
    try:
        rel = os.path.relpath(path, Path.cwd())
        cwd_inside = Path.cwd().resolve().is_relative_to(REPO_ROOT)
    except (OSError, ValueError):
        return str(path)
    return rel if cwd_inside and Path(path).resolve().is_relative_to(REPO_ROOT) else str(path)


# --------------------------------------------------------------------------------------------- models


def offline_model_dir() -> Path:
    """The offline model: the trained toy family if the repo has it, else the tiny random model."""
    if (TOY_MODEL_DIR / "model_index.json").exists():
        return TOY_MODEL_DIR
    from .offline import ensure_tiny_model

    return ensure_tiny_model()


def choose_model(model: str | os.PathLike | None = None) -> tuple[str, str]:
    """Decide which model to run, and say why (no silent fallback: notebooks print the reason).

    Order: the `model` argument -> the `SD_MODEL` environment variable ("offline" means the offline
    model) -> the real `CompVis/stable-diffusion-v1-4` when a CUDA GPU is present -> the offline model.
    """
    if model is not None:
        return str(model), "you passed it explicitly"
    env = os.environ.get("SD_MODEL")
    if env:
        if env.lower() == "offline":
            return _near(offline_model_dir()), "SD_MODEL=offline asks for the offline model"
        return env, "the SD_MODEL environment variable names it"
    if torch.cuda.is_available():
        return DEFAULT_MODEL, "a CUDA GPU is available, so we run the real Stable Diffusion v1-4 from the Hub"
    offline = offline_model_dir()
    kind = "trained toy family" if offline == TOY_MODEL_DIR else "tiny random-weight model (noise, not pictures)"
    return (
        _near(offline),
        f"no GPU here: {cpu_minutes_message()}, so we run the offline {kind} with exactly the same code (set SD_MODEL to override)",
    )


def cpu_minutes_message(steps: int = REAL_MODEL_STEPS) -> str:
    """What one 512 px SD v1-4 image costs on a CPU, from the project's own UNet measurements (not a guess)."""
    (quiet, fast), (loaded, slow) = CPU_UNET_STEP_S.items()
    return (
        f"the real v1-4 needs {steps} guided UNet steps per 512 px image, ~{steps * fast / 60:.0f} min on a {quiet} "
        f"and ~{steps * slow / 60:.0f} min on a {loaded} (fp32; benchmarks/unet_cpu.py: {fast} and {slow} s per step)"
    )


def is_toy_family(model) -> bool:
    """True for the trained offline toy family (a folder path, or a pipeline loaded from it)."""
    name = getattr(model, "name_or_path", model)
    try:
        return Path(str(name)).expanduser().resolve() == TOY_MODEL_DIR.resolve()
    except (OSError, RuntimeError):
        return False


@dataclass(frozen=True)
class SamplerDefault:
    """The default sampler for one model, and where the choice comes from."""

    scheduler: str
    num_inference_steps: int
    source: str


def family_sampler(model) -> SamplerDefault | None:
    """The default sampler a trained offline family records for itself, or None.

    A family folder (`models/`, or one `scripts/train_toy_family.py --out` wrote) holds `training_summary.json`; the
    second generation's records the sampler measured best for it under `"default_sampler"`. `model` is the pipeline
    folder (`<family>/toy-sd`) or a pipeline loaded from one.
    """
    name = getattr(model, "name_or_path", model)
    if not isinstance(name, (str, Path)) or not str(name):
        return None
    summary = Path(str(name)).expanduser().parent / "training_summary.json"
    try:
        record = json.loads(summary.read_text()).get("default_sampler")
    except (OSError, ValueError):
        return None
    if not record:
        return None
    return SamplerDefault(record["scheduler"], int(record["num_inference_steps"]), record["source"])


def default_sampler(model) -> SamplerDefault:
    """The sampler to use when none is given: measured on the toy family, from the literature for real models.

    `model` is a pipeline (decided by its UNet's size: the offline models are tiny) or a folder / Hub id (the toy
    family's folder, or anything else = a real model). See REAL_MODEL_SCHEDULER for the sources. A trained family
    that records its own measured default (`family_sampler`) gets that one.
    """
    unet = getattr(model, "unet", None)
    toy = is_toy_family(model) or (unet is not None and sum(p.numel() for p in unet.parameters()) < TOY_UNET_MAX_PARAMS)
    if toy:
        own = family_sampler(model)
        if own is not None:
            return own
        return SamplerDefault(
            DEFAULT_SCHEDULER,
            DEFAULT_STEPS,
            "measured on the toy family: as prompt-faithful as PNDM-50 with 5x fewer UNet calls "
            "(benchmarks/schedulers_quality.py, benchmarks/README.md section 3)",
        )
    return SamplerDefault(
        REAL_MODEL_SCHEDULER,
        REAL_MODEL_STEPS,
        "not measured here on v1-4: DPM-Solver++ 2M (Lu et al. 2022, arXiv 2211.01095); diffusers' docs: 20 steps "
        "give high-quality samples, we take 25 for margin",
    )


def suggested_prompt(model) -> tuple[str, str]:
    """(prompt, why): the blog's prompt for a real model; a caption the toy family was trained on for it."""
    if is_toy_family(model):
        return TOY_PROMPT, (
            "the offline toy family only knows coloured circles, squares and triangles on plain backgrounds; "
            f"on a GPU with the real model this is the blog's {BLOG_PROMPT!r}"
        )
    return BLOG_PROMPT, "the blog's prompt"


def _has_fp16_variant(folder: Path) -> bool:
    return any(folder.glob("*/*.fp16.safetensors")) or any(folder.glob("*/*.fp16.bin"))


def _has_plain_weights(folder: Path) -> bool:
    """Weight files without a variant tag ("model.safetensors", not "model.fp16.safetensors")."""
    return any(f.name.count(".") == 1 for ext in ("safetensors", "bin") for f in folder.glob(f"*/*.{ext}"))


def _unavailable(model: str, err: Exception) -> ModelUnavailableError:
    from .hub import HubTimeoutError

    cause = str(err) if isinstance(err, HubTimeoutError) else f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return ModelUnavailableError(
        f"Could not load {model!r} from the Hugging Face Hub or the local cache ({cause}).\nFixes:\n"
        "  1. Log in: `python login.py` (or set HF_TOKEN; on Colab add it under Secrets).\n"
        f"  2. Accept the model license on {LICENSE_URL} with the same account.\n"
        "  3. Check the network (no internet: set HF_HUB_OFFLINE=1 only if the model is already cached).\n"
        "  4. Or run offline: load_pipeline(offline_model_dir()) / SD_MODEL=offline uses the offline model."
    )


def dtype_kwarg() -> str:
    """The name `from_pretrained` takes the dtype under: `dtype` in diffusers 0.42+ (`torch_dtype` is deprecated
    there), `torch_dtype` in older releases such as Colab's 0.39, which do not know `dtype`."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(
    model: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    variant: str | None = "auto",
    safety_checker: bool = True,
    token: str | None = None,
    scheduler: str | None = "auto",
):
    """Load a `StableDiffusionPipeline` from a Hub id or a local folder, on the best device.

    - `model`: Hub id (default: `choose_model()`), or a folder made by `save_pretrained`.
    - `device`/`dtype`: default from `pick_device()` (CUDA/MPS -> fp16, CPU -> fp32 unless bf16 measured faster,
      and then only for a full-size UNet: `DeviceChoice.for_unet`). `pipe.device_choice` says what runs and why.
    - `variant`: "auto" loads the `fp16` weight files when running in fp16 and they exist (half the download).
    - `safety_checker=False` drops the checker (you then get no NSFW filtering: use responsibly).
    - `token`: only if you must; `python login.py` stores it so you never paste it in a notebook.
    - `scheduler`: "auto" (default) picks `default_sampler(pipe)`: DDIM for the toy family (measured fastest at
      equal quality there), DPM-Solver++ 2M for real models (diffusers' docs, Lu et al. 2022), each built from the
      model's own config (same noise schedule); a name picks that one; None keeps the model's own (SD v1-4: PNDM).
    """
    model_str = _check_load_arguments(model, device, dtype, variant, safety_checker, token, scheduler)
    from diffusers import StableDiffusionPipeline

    choice = pick_device(device)
    # A measured CPU setup is for the full-size UNet: load exact fp32, then apply it if this UNet is big enough.
    adapt = dtype is None and choice.measured
    dtype = torch.float32 if adapt else (dtype or choice.dtype)
    path = Path(model_str).expanduser()
    kwargs: dict[str, Any] = {dtype_kwarg(): dtype}
    if not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if path.is_dir():
        check_model_folder(path)  # a missing or damaged file: one error naming it, before loading anything
        want_fp16 = variant == "fp16" or (variant == "auto" and dtype == torch.float16)
        if variant == "fp16" and not _has_fp16_variant(path):
            raise ValueError(
                f"variant='fp16' was asked for, but {public_name(path)} has no *.fp16.safetensors files. Use "
                "variant='auto' (loads what is there and casts to `dtype`), or save with "
                "pipe.save_pretrained(dir, variant='fp16')."
            )
        if want_fp16 and _has_fp16_variant(path):
            kwargs["variant"] = "fp16"
        elif variant not in ("auto", None, "fp16"):
            kwargs["variant"] = variant
        elif variant == "auto" and _has_fp16_variant(path) and not _has_plain_weights(path):
            kwargs["variant"] = "fp16"  # the folder holds only fp16 files: load them, cast to `dtype`
        try:
            pipe = StableDiffusionPipeline.from_pretrained(path, **kwargs)
        except Exception as err:  # a damage check_model_folder could not see (e.g. a tensor of the wrong shape)
            raise ModelFilesError(_damaged_message(path, None, err)) from err
    elif _looks_like_hub_id(model_str) and not path.exists():
        if variant == "fp16" or (variant == "auto" and dtype == torch.float16):
            kwargs["variant"] = "fp16"  # the modern form of the blog's revision="fp16"
        elif variant not in ("auto", None):
            kwargs["variant"] = variant
        if token:
            kwargs["token"] = token
        what = f"loading {model_str!r}"
        try:
            try:
                pipe = hub_call(StableDiffusionPipeline.from_pretrained, model_str, what=what, **kwargs)
            except ValueError as err:
                if "variant" not in str(err) or "variant" not in kwargs:
                    raise
                warnings.warn(
                    f"{model_str} has no fp16 weight files; loading the fp32 files and casting to {dtype}.",
                    stacklevel=2,
                )
                kwargs.pop("variant")
                pipe = hub_call(StableDiffusionPipeline.from_pretrained, model_str, what=what, **kwargs)
        except (OSError, TimeoutError) as err:  # HubTimeoutError is a TimeoutError, which is an OSError
            raise _unavailable(model_str, err) from err
    else:
        raise ValueError(
            f"{model_str!r} is neither a folder nor a Hub id like 'CompVis/stable-diffusion-v1-4'. "
            "Check the path, or pass a Hub id."
        )
    pipe = pipe.to(choice.device)
    if adapt:
        choice = choice.for_unet(sum(p.numel() for p in pipe.unet.parameters()))
    elif dtype != choice.dtype:
        reason = f"{str(dtype).replace('torch.', '')} requested"
        choice = replace(choice, dtype=dtype, channels_last=False, measured=False, reason=reason)
    if choice.device == "cpu" and (choice.dtype != dtype or choice.channels_last):
        from .cpu_speed import apply_cpu_setup

        pipe = apply_cpu_setup(pipe, choice)  # bf16 and/or channels_last where measured faster on this CPU
    pipe.device_choice = choice  # what runs, and why: notebooks print it
    if scheduler == "auto":
        scheduler = default_sampler(pipe).scheduler
    if scheduler is not None:
        pipe.scheduler = make_scheduler(pipe, scheduler)
    return pipe


def _looks_like_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and all(model.split("/"))


def _check_load_arguments(model, device, dtype, variant, safety_checker, token, scheduler) -> str:
    """Every argument of `load_pipeline` checked before anything is loaded; returns the model to load."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a Hub id or a folder path, got {type(model).__name__}.")
    if model is not None and not str(model).strip():
        raise ValueError(
            "model is empty: pass a Hub id such as 'CompVis/stable-diffusion-v1-4', a folder made by "
            "save_pretrained, or None to let choose_model() decide."
        )
    if device not in (None, "cuda", "mps", "cpu"):
        raise ValueError(f"Unknown device {device!r}: use 'cuda', 'mps', 'cpu' or None (auto).")
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        raise ValueError(
            f"dtype must be a torch dtype, not the string {dtype!r}: pass dtype=torch.{name} "
            "(torch.float16, torch.float32 or torch.bfloat16), or None for the device's best."
        )
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be torch.float16, torch.float32, torch.bfloat16 or None, got {dtype!r}.")
    if variant is not None and not isinstance(variant, str):
        raise ValueError(f"variant must be 'auto', 'fp16', another variant name or None, got {variant!r}.")
    if not isinstance(safety_checker, bool):
        raise ValueError(f"safety_checker must be True or False, got {safety_checker!r}.")
    if token is not None and not isinstance(token, str):
        raise ValueError("token must be a string or None (better: run `python login.py` once and pass nothing).")
    if scheduler not in (None, "auto"):
        _check_scheduler(scheduler)
    model_str, _ = choose_model(model)
    return model_str


#: What a StableDiffusionPipeline folder needs, beyond model_index.json: component -> files (one of each tuple).
_WEIGHTS = ("diffusion_pytorch_model", "model")


def _damaged_message(folder: Path, file: Path | None, err: BaseException | str) -> str:
    where = Path(file).relative_to(folder).as_posix() if file is not None else "a file in it"
    why = err if isinstance(err, str) else f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    fix = (
        "restore it with `git checkout -- models/` (the offline family is committed in the repo)"
        if Path(folder).resolve().is_relative_to(MODELS_DIR.resolve())
        else "copy or download the model folder again (pipe.save_pretrained(folder) writes a complete one)"
    )
    return f"The model folder {public_name(folder)} is damaged: {where} {why}. Fix: {fix}, or pass another model."


def check_model_folder(folder: Path | str) -> None:
    """Raise `ModelFilesError` naming the first missing or damaged file of a `save_pretrained` folder.

    Cheap: reads model_index.json, each config, and the header of each safetensors file (not the tensors)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelFilesError(_damaged_message(folder, index, "is missing (pass a folder made by save_pretrained)"))
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelFilesError(_damaged_message(folder, index, err)) from None
    for name, spec in components.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue  # metadata, or a component saved as None (e.g. no safety checker)
        sub = folder / name
        if not sub.is_dir():
            raise ModelFilesError(_damaged_message(folder, sub, "is missing (model_index.json lists it)"))
        configs = [p for p in sub.glob("*.json")]
        for cfg in configs:
            try:
                json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                raise ModelFilesError(_damaged_message(folder, cfg, err)) from None
        if (sub / "config.json").is_file():  # a model (not a tokenizer or scheduler): it needs weights
            weights = [
                p for p in sub.iterdir() if p.name.split(".")[0] in _WEIGHTS and p.suffix in (".safetensors", ".bin")
            ]
            if not weights:
                raise ModelFilesError(
                    _damaged_message(folder, sub / "diffusion_pytorch_model.safetensors", "is missing (no weights)")
                )
            for w in weights:
                if w.suffix != ".safetensors":
                    continue
                try:
                    with safe_open(str(w), framework="pt") as f:
                        f.keys()
                except Exception as err:  # SafetensorError for a bad header or a truncated file
                    raise ModelFilesError(_damaged_message(folder, w, err)) from None


def make_scheduler(pipe, name: str):
    """A scheduler of another kind built from the pipeline's own config (same betas, same timesteps)."""
    import diffusers

    key = _check_scheduler(name)
    return getattr(diffusers, SCHEDULERS[key]).from_config(pipe.scheduler.config)


def scheduler_name(pipe) -> str:
    """Our short name for the pipeline's current scheduler ("pndm", "ddim", ...)."""
    cls = type(pipe.scheduler).__name__
    return next((k for k, v in SCHEDULERS.items() if v == cls), cls)


# ---------------------------------------------------------------------------------------- input checks


def _check_scheduler(name) -> str:
    if not isinstance(name, str) or name.lower() not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}.")
    return name.lower()


def _as_int(value) -> int | None:
    """`value` as an exact Python int if it is integer-like (int, numpy integer, anything with __index__), else None.

    `operator.index` never rounds and never wraps: np.int64(2**63 - 1) + 1 would wrap, its index does not."""
    if isinstance(value, (bool, np.bool_)):
        return None  # True is an int to Python, never a seed or a count to a user
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_float(value) -> float | None:
    """`value` as a float if it is a real number that fits one, else None."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        number = float(value)  # Python/numpy numbers, Fraction, Decimal; 10**400 raises OverflowError
    except (TypeError, ValueError, OverflowError):
        return None
    return number


def validate_inputs(
    prompt,
    n_images: int = 1,
    seed: int = 0,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = DEFAULT_STEPS,
    negative_prompt=None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Raise `ValueError` (saying what to do) for any bad input, before any model work.

    Returns the values as exact plain Python types (ints stay exact: a seed near 2**63 is not rounded).
    `num_inference_steps=None` stays None: "the model's default" (`default_sampler`), decided once the model is loaded.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}: pass one text prompt.")
    if not prompt.strip():
        raise ValueError("prompt is empty: describe the image, e.g. 'Kermit the Frog on the Iron Throne'.")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError("negative_prompt must be a string or None.")
    n = _as_int(n_images)
    if n is None or not 1 <= n <= MAX_IMAGES:
        raise ValueError(
            f"n_images must be a whole number from 1 to {MAX_IMAGES}, got {n_images!r}; "
            "for more images use scripts/generate_many.py or call generate() again with another seed."
        )
    steps = None if num_inference_steps is None else _as_int(num_inference_steps)
    if num_inference_steps is not None and (steps is None or not 1 <= steps <= MAX_STEPS):
        raise ValueError(
            f"num_inference_steps must be a whole number from 1 to {MAX_STEPS}, got {num_inference_steps!r} "
            "(typical: 20-50)."
        )
    guidance = _as_float(guidance_scale)
    if guidance is None:
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r} (typical: 7.5).")
    if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(
            f"guidance_scale must be from 0 to {MAX_GUIDANCE:g}, got {guidance_scale!r}: use 1.0 for no guidance, "
            "7.5 typically."
        )
    first_seed = _as_int(seed)
    if first_seed is None or not 0 <= first_seed or first_seed + n - 1 > MAX_SEED:
        raise ValueError(
            f"seed must be a whole number from 0 to {MAX_SEED - n + 1} (images use seed, seed+1, ...), got {seed!r}."
        )
    sizes = {}
    for name, value in (("height", height), ("width", width)):
        if value is None:
            sizes[name] = None
            continue
        size = _as_int(value)
        if size is None or size % 8 or not MIN_SIZE <= size <= MAX_SIZE:
            near = size if size is not None else (_as_float(value) or 512)
            near = max(MIN_SIZE, min(MAX_SIZE, int(near) // 8 * 8)) if math.isfinite(near) else 512
            raise ValueError(
                f"{name} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE} pixels, got {value!r} "
                f"(the VAE shrinks images 8x; try {near})."
            )
        sizes[name] = size
    if scheduler is not None:
        scheduler = _check_scheduler(scheduler)
    return {
        "prompt": prompt,
        "n_images": n,
        "seed": first_seed,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "negative_prompt": negative_prompt,
        "height": sizes["height"],
        "width": sizes["width"],
        "scheduler": scheduler,
    }


def truncation_message(tokenizer, prompt: str, what: str = "prompt") -> str | None:
    """If the prompt is longer than CLIP's 77 tokens, say where the cut falls (the rest is ignored)."""
    max_len = tokenizer.model_max_length  # 77 = <start> + 75 tokens + <end>
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
    if len(ids) <= max_len:
        return None
    kept = tokenizer.decode(ids[1 : max_len - 1])
    dropped = tokenizer.decode(ids[max_len - 1 : -1])
    return (
        f"The {what} is {len(ids) - 2} tokens but CLIP reads only {max_len - 2}: it is cut after "
        f"'...{kept[-40:]}' and this part is ignored: '{dropped}'. Shorten it or move key words first."
    )


# -------------------------------------------------------------------------------------------- generate


@dataclass
class GenerationResult:
    images: list  # PIL images
    records: list[dict]  # one per image: everything needed to regenerate it
    nsfw: list[bool] = field(default_factory=list)  # blanked by the safety checker
    nan: list[bool] = field(default_factory=list)  # held NaNs (fp16 overflow)
    messages: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.images)


def _to_pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray((np.nan_to_num(arr, nan=0.0).clip(0, 1) * 255).round().astype(np.uint8))


def explain_black_images(nsfw: list[bool], nan: list[bool], records: list[dict], dtype: torch.dtype) -> list[str]:
    """Messages for images that came out black, with the reason and the fix."""
    out = []
    for flagged, has_nan, rec in zip(nsfw, nan, records):
        tag = f"Image {rec['index']} (seed {rec['seed']})"
        if flagged:
            out.append(
                f"{tag} is black because the safety checker flagged it as possibly NSFW and blanked it. "
                "Try another seed or reword the prompt; this is not a bug."
            )
        if has_nan:
            fix = (
                "reload in fp32 (load_pipeline(..., dtype=torch.float32)), or keep fp16 and run the VAE in fp32 "
                "(pipe.vae.to(torch.float32))"
                if dtype == torch.float16
                else "lower guidance_scale or use another scheduler"
            )
            out.append(
                f"{tag} contains NaN values (shown black): the numbers overflowed ({dtype}), usually in the VAE "
                f"decode in fp16 on older GPUs. Fix: {fix}."
            )
    return out


def generate(
    pipe,
    prompt: str,
    n_images: int = 1,
    seed: int = 0,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | None = None,
    callback_on_step_end: Callable | None = None,
    show_progress: bool = True,
) -> GenerationResult:
    """Generate `n_images` for one prompt in ONE batched call; image i uses seed `seed + i`.

    Regenerate image i alone with `generate(pipe, prompt, n_images=1, seed=seed + i, ...)`.
    A `scheduler` name swaps the scheduler for this call only. `num_inference_steps=None` is the model's default
    (`default_sampler(pipe)`: 10 for the toy family, 25 for real models).
    """
    # exact plain ints and floats: numpy integers pass, and records stay JSON-exact (a seed reads back as a number)
    checked = validate_inputs(
        prompt, n_images, seed, guidance_scale, num_inference_steps, negative_prompt, height, width, scheduler
    )
    n_images, seed, num_inference_steps = checked["n_images"], checked["seed"], checked["num_inference_steps"]
    if num_inference_steps is None:  # checked first: a bad input fails before the model is touched
        num_inference_steps = default_sampler(pipe).num_inference_steps
    guidance_scale, height, width = checked["guidance_scale"], checked["height"], checked["width"]
    messages = [m for m in (truncation_message(pipe.tokenizer, prompt),) if m]
    if negative_prompt:
        msg = truncation_message(pipe.tokenizer, negative_prompt, "negative prompt")
        messages += [msg] if msg else []
    for m in messages:
        warnings.warn(m, stacklevel=2)
    if is_toy_family(pipe):  # words its training captions never used: say so, and suggest a caption it knows
        from .toy_vocab import vocabulary_message

        unknown = vocabulary_message(prompt)
        messages += [unknown] if unknown else []

    original = pipe.scheduler
    if scheduler is not None:
        pipe.scheduler = make_scheduler(pipe, scheduler)
    sched_name = scheduler_name(pipe)
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    # One CPU generator per image: the same seed gives the same starting noise on CPU, CUDA or MPS.
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n_images)]
    pipe.set_progress_bar_config(disable=not show_progress, leave=False)
    t0 = time.perf_counter()
    out_of_memory = False
    try:
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            num_images_per_prompt=n_images,
            generator=generators,
            guidance_scale=float(guidance_scale),
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            output_type="np",  # floats, so NaNs survive for diagnosis
            callback_on_step_end=callback_on_step_end,
        )
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        out_of_memory = True  # raise outside this block: the traceback, and the tensors its frames hold, go first
    finally:
        pipe.scheduler = original
    if out_of_memory:
        release_memory()
        dtype = str(pipe.unet.dtype).replace("torch.", "")
        raise NotEnoughMemoryError(out_of_memory_message(n_images, height, width, dtype, str(pipe.device)))
    seconds = time.perf_counter() - t0
    arrays = np.asarray(out.images)  # (n, H, W, 3) in [0, 1]
    nan = [bool(np.isnan(a).any()) for a in arrays]
    nsfw = [bool(x) for x in (out.nsfw_content_detected or [False] * n_images)]
    model = public_name(getattr(pipe, "name_or_path", "") or type(pipe).__name__)  # Hub id or project path
    records = [
        {
            "prompt": prompt,
            "negative_prompt": negative_prompt or "",
            "seed": seed + i,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": float(guidance_scale),
            "scheduler": sched_name,
            "model": model,
            "height": height,
            "width": width,
            "index": i,
            "dtype": str(pipe.unet.dtype).replace("torch.", ""),
            "device": str(pipe.device),
        }
        for i in range(n_images)
    ]
    black = explain_black_images(nsfw, nan, records, pipe.unet.dtype)
    for m in black:
        warnings.warn(m, stacklevel=2)
    return GenerationResult(
        images=[_to_pil(a) for a in arrays],
        records=records,
        nsfw=nsfw,
        nan=nan,
        messages=messages + black,
        interrupted=bool(getattr(pipe, "_interrupt", False)),
        seconds=seconds,
    )


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError other backends (MPS, CPU allocator) raise for the same."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def release_memory() -> None:
    """Give the memory of a failed run back: drop unreachable tensors, then CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if hasattr(torch, "mps") and hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def out_of_memory_message(
    n_images: int, height: int, width: int, dtype: str, device: str, how: dict | None = None
) -> str:
    """What ran out and the fixes, cheapest first. `how` renames the knobs (generate_many's flags)."""
    how = {
        "images": "n_images",
        "size": "height=512, width=512 (SD v1's native size)",
        "preset": "apply_memory_preset(pipe, 'balanced'), then 'low' or 'lowest' (the studio's Memory menu)",
        "fp16": "load_pipeline(..., dtype=torch.float16) on a GPU",
        **(how or {}),
    }
    fewer = max(1, n_images // 2)
    return (
        f"Out of memory on {device} making {n_images} image(s) of {width}x{height} in {dtype}; the memory is "
        f"released and nothing was lost. Fixes, in order: 1. fewer images at once ({how['images']}={fewer}); "
        f"2. a smaller size ({how['size']}); 3. a memory preset ({how['preset']}); 4. fp16 ({how['fp16']})."
    )


# -------------------------------------------------------------------------------------- memory presets


def apply_memory_preset(pipe, preset: str = "balanced") -> list[str]:
    """Switch memory savers on (or all off with "none") in one call; returns what it did.

    See MEMORY_PRESETS for what each costs. CPU offload needs a CUDA GPU (and accelerate); on CPU the
    offload steps are skipped and the returned list says so.
    """
    if preset not in MEMORY_PRESETS:
        raise ValueError(f"Unknown memory preset {preset!r}: choose one of {', '.join(MEMORY_PRESETS)}.")
    done = []
    pipe.disable_attention_slicing()
    pipe.vae.disable_slicing()
    pipe.vae.disable_tiling()
    if preset == "none":
        return ["all memory savers off"]
    if preset in ("balanced", "low"):
        pipe.enable_attention_slicing("auto")
        pipe.vae.enable_slicing()
        done += ["attention slicing", "VAE slicing"]
    if preset in ("low", "lowest"):
        pipe.vae.enable_tiling()
        done.append("VAE tiling")
    if preset in ("low", "lowest"):
        if not torch.cuda.is_available():
            done.append("CPU offload skipped (needs a CUDA GPU)")
        elif preset == "low":
            pipe.enable_model_cpu_offload()
            done.append("model CPU offload")
        else:
            pipe.enable_sequential_cpu_offload()
            done.append("sequential CPU offload")
    return done
