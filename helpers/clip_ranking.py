"""Rank images by how well they match a prompt with CLIP: the blog's Flax + `jax.pmap` recipe, made right.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) embeds an image and a text into the same
space; its score for a pair is the cosine of the two embeddings times a learned temperature:

    logits_per_image = logit_scale * cos(image_embeds, text_embeds),   logit_scale = exp(t) (100 for ViT-B/32)

The blog (after Boris Dayma's DALL-E Mini) scored images with `jax.pmap` but

1. built the text as `prompt * jax.device_count()`: for a string that repeats the *characters*
   ("a cata cat"), not the prompt;
2. never padded the batch: `shard` fails unless the image count divides by the device count;
3. read `logits[0]`, the scores of device 0 only: on 2 devices half the images were never ranked.

`rank(images, prompt, clip=..., method=...)` fixes all three and offers four ways to compute the same scores:

- `"pmap"`: `jax.pmap` with replicated params, the batch padded to a multiple of the local device count,
  the padding dropped and the scores gathered from every device (the blog's recipe, right);
- `"sharded"`: `jax.jit` over a device `Mesh` with `NamedSharding` (the modern way: pmap is in maintenance
  mode; `jax.shard_map` is the other modern spelling);
- `"single"`: `jax.jit` on one device;
- `"torch"`: the PyTorch `CLIPModel` (transformers 5 has no Flax models at all).

Nothing here imports jax (or transformers' CLIP, which imports jax) at module import: a notebook must be
able to call `set_host_device_count(4)` before jax starts, because the device count is fixed then.
"""

from __future__ import annotations

import os

# JAX grabs 75% of a GPU's memory when it starts; torch (the pipeline, the torch twin) needs it too.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .paths import CACHE_DIR, CONFIGS_DIR, MODELS_DIR  # noqa: E402

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # the blog's CLIP (ViT-B/32, 151M parameters)
TOY_CLIP_DIR = MODELS_DIR / "toy-clip"  # mini CLIP trained on coloured shapes, when present
MINI_CLIP_DIR = CACHE_DIR / "mini-clip-random"  # tiny random CLIP built here (tests, fallback)
VIT_B32_CONFIGS = CONFIGS_DIR / "clip-vit-base-patch32"  # public config.json + preprocessor_config.json
METHODS = ("pmap", "sharded", "single", "torch")
BACKENDS = ("flax", "torch")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_CHUNK = 64  # images per step (all devices together): bounds memory for any number of images
TEXT_MAX_LENGTH = 77  # CLIP's context: <start> + 75 tokens + <end>
_HOST_COUNT_FLAG = "--xla_force_host_platform_device_count"


class ClipUnavailableError(OSError):
    """CLIP could not be loaded from the Hub or the cache; the message names the fixes."""


# ------------------------------------------------------------------------------------------- devices


def set_host_device_count(n: int) -> str:
    """Ask XLA for `n` CPU devices (pmap on a laptop); must run before jax's first computation.

    Sets `XLA_FLAGS=--xla_force_host_platform_device_count=n` (keeping other flags). On a GPU/TPU machine
    jax still computes on the accelerators; the flag only splits the CPU. Returns the new XLA_FLAGS.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}.")
    if "jax" in sys.modules:
        try:
            from jax._src.xla_bridge import backends_are_initialized

            started = backends_are_initialized()
        except ImportError:  # a jax without this private helper: assume it has started
            started = True
        if started:
            import jax

            have = len(jax.local_devices(backend="cpu"))
            if have != n:
                raise RuntimeError(
                    f"jax has already started with {have} CPU device(s); the count is fixed then. "
                    f"Restart the kernel (or Python) and call set_host_device_count({n}) before using jax."
                )
            return os.environ.get("XLA_FLAGS", "")
    flags = re.sub(rf"{_HOST_COUNT_FLAG}=\d+", "", os.environ.get("XLA_FLAGS", "")).split()
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{_HOST_COUNT_FLAG}={n}"])
    return os.environ["XLA_FLAGS"]


# -------------------------------------------------------------------------------------------- models


@dataclass
class Clip:
    """A loaded CLIP: the model, its params (Flax; None for torch), the processor, and where it came from."""

    model: Any
    params: Any
    processor: Any
    backend: str  # "flax" or "torch"
    dtype: str  # "float32", "float16" or "bfloat16"
    source: str  # Hub id or folder
    device: str = "cpu"  # torch only; jax places arrays itself
    _cache: dict = field(default_factory=dict, repr=False)  # compiled functions and placed params

    def __repr__(self) -> str:
        return f"Clip({self.backend}, {self.dtype}, {self.source!r}, image size {self.image_size} px)"

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)


def _dtype_name(dtype) -> str:
    if dtype is None:
        return "float32"
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    name = str(name).replace("torch.", "").replace("jnp.", "")
    name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or the jnp/torch dtype), got {dtype!r}.")
    return name


def offline_clip_dir() -> Path:
    """The offline CLIP: the trained toy CLIP if the repo has it, else the tiny random one (built on first use)."""
    if _has_weights(TOY_CLIP_DIR):
        return TOY_CLIP_DIR
    return ensure_mini_clip()


def choose_clip(sd_model: str | os.PathLike | None = None) -> tuple[str, str]:
    """Which CLIP should score images of `sd_model`, and why (the notebook prints the reason).

    `CLIP_MODEL` in the environment wins. Images from a local (offline) pipeline are scored by the offline
    CLIP, which saw the same kind of images; images from a Hub model by OpenAI's ViT-B/32, like the blog.
    """
    env = os.environ.get("CLIP_MODEL")
    if env:
        return env, "the CLIP_MODEL environment variable names it"
    if sd_model is not None and Path(sd_model).expanduser().is_dir():
        folder = offline_clip_dir()
        if folder == TOY_CLIP_DIR:
            return str(folder), (
                "the images come from an offline pipeline, so we score them with the mini CLIP trained on the "
                "same captioned coloured shapes (models/toy-clip)"
            )
        return str(folder), (
            "the images come from an offline pipeline and the trained mini CLIP (models/toy-clip) is not here, "
            "so we run a tiny CLIP with RANDOM weights: the code path is exact, the scores mean nothing"
        )
    return DEFAULT_CLIP, f"the images come from a Hub model, so we use the blog's CLIP ({DEFAULT_CLIP})"


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(
        (folder / f).exists() for f in ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")
    )


def _unavailable(model: str, err: Exception) -> ClipUnavailableError:
    return ClipUnavailableError(
        f"Could not load CLIP {model!r} from the Hugging Face Hub or the local cache ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200] if str(err) else ''}).\nFixes:\n"
        "  1. Check the network (Colab and Gradient have it; CLIP needs no login or license).\n"
        "  2. Downloaded it before? Set HF_HUB_OFFLINE=1 to use the cached copy.\n"
        "  3. Pass a local folder made by save_pretrained instead, e.g. load_clip('models/toy-clip').\n"
        "  4. Or run offline: load_clip(offline_clip_dir()) (or set CLIP_MODEL to a folder)."
    )


def _load_processor(src: str):
    from transformers import CLIPProcessor

    return CLIPProcessor.from_pretrained(src, use_fast=False)  # the fast one needs torchvision


def load_clip(model_or_dir: str | os.PathLike = DEFAULT_CLIP, backend: str = "flax", dtype=None) -> Clip:
    """Load CLIP (model + params + processor) from a Hub id or a folder: the same call either way.

    - `backend="flax"`: `FlaxCLIPModel.from_pretrained(..., _do_init=False)` returns the module and its params
      separately (no 7-8 s random init); `dtype` sets the compute dtype and the params are cast to it.
    - `backend="torch"`: `CLIPModel`, on the GPU when there is one (keep fp32 on CPU: fp16 there is slow).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    dtype = _dtype_name(dtype)
    src = str(model_or_dir)
    path = Path(src).expanduser()
    if path.is_dir():
        if not _has_weights(path):
            raise ValueError(
                f"{path} is a folder but holds no CLIP weights (config.json + flax_model.msgpack or "
                "model.safetensors): pass a folder made by save_pretrained, e.g. with save_clip_folder()."
            )
        src = str(path)
    elif src.startswith((".", "/", "~")) or path.exists() or src.count("/") != 1:
        raise ValueError(
            f"{src!r} is neither a folder nor a Hub id like {DEFAULT_CLIP!r}: check the path, or pass a Hub id."
        )
    try:
        processor = _load_processor(src)
        if backend == "flax":
            model, params = _load_flax(src, path.is_dir(), dtype)
            return Clip(model, params, processor, "flax", dtype, src)
        model, device = _load_torch(src, path.is_dir(), dtype)
        return Clip(model, None, processor, "torch", dtype, src, device)
    except OSError as err:
        if path.is_dir():
            raise
        raise _unavailable(src, err) from err


def _load_flax(src: str, local: bool, dtype: str):
    import jax.numpy as jnp
    from transformers import CLIPConfig, FlaxCLIPModel

    jdtype = getattr(jnp, dtype)
    if local and not (Path(src) / "flax_model.msgpack").exists():
        # torch weights only: from_pt=True cannot go with _do_init=False (transformers 4.57); convert ourselves
        from transformers import CLIPModel

        params = clips_from_torch_model(CLIPModel.from_pretrained(src), None, ["flax"])["flax"].params
        model = FlaxCLIPModel(CLIPConfig.from_pretrained(src), dtype=jdtype, _do_init=False)
    else:
        model, params = FlaxCLIPModel.from_pretrained(src, dtype=jdtype, _do_init=False)
    if dtype == "float16":
        params = model.to_fp16(params)
    elif dtype == "bfloat16":
        params = model.to_bf16(params)
    return model, params


def _load_torch(src: str, local: bool, dtype: str):
    import torch
    from transformers import CLIPConfig, CLIPModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = getattr(torch, dtype)
    folder = Path(src)
    if local and not any((folder / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
        # Flax weights only: CLIPModel.from_pretrained(from_flax=True) breaks in 4.57; this loader works
        from transformers import FlaxCLIPModel
        from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

        model = CLIPModel(CLIPConfig.from_pretrained(src))
        _, params = FlaxCLIPModel.from_pretrained(src, _do_init=False)
        model = load_flax_weights_in_pytorch_model(model, params)
    else:
        model = CLIPModel.from_pretrained(src, torch_dtype=torch.float32)
    return model.to(device=device, dtype=tdtype).eval(), device


# ---------------------------------------------------------------------------------------------- inputs


def to_rgb(image, index: int = 0) -> Image.Image:
    """One image as an RGB PIL image: PIL (any mode; transparency composited on white) or a numpy array
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 in 0..255 or floats in 0..1."""
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    if hasattr(image, "detach"):  # a torch tensor: the user most likely wants it as an array
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) and image.ndim in (2, 3) and min(image.shape[:2]) > 0:
        arr = image[..., None] if image.ndim == 2 else image
        if arr.shape[-1] in (1, 3, 4) and (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
            if arr.dtype != np.uint8:
                if not np.isfinite(arr).all():
                    raise ValueError(f"Image {index} holds NaN or inf values: regenerate it or drop it.")
                arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)  # floats are read as 0..1
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[-1]]
            return to_rgb(Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode=mode), index)
    what = (
        f"array of shape {image.shape} and dtype {image.dtype}"
        if isinstance(image, np.ndarray)
        else type(image).__name__
    )
    raise ValueError(
        f"Image {index} is a {what}, not an image: pass PIL images, or numpy arrays (H, W[, 1|3|4]) of uint8 "
        "0..255 or floats 0..1 (open files with PIL.Image.open(path) first)."
    )


def example_inputs(n: int, seed: int = 0) -> list:
    """`n` random images of every kind `rank` accepts, in different sizes: PIL RGB, RGBA and L, and numpy
    arrays of uint8 (0..255) and float32 (0..1). For tests and for trying the converter."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 24 + 7 * (i % 5), 40 - 3 * (i % 4)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # (H, W, 3)
        kind = i % 5
        if kind == 0:
            out.append(Image.fromarray(arr))
        elif kind == 1:
            alpha = rng.integers(128, 256, (h, w, 1), dtype=np.uint8)
            out.append(Image.fromarray(np.concatenate([arr, alpha], axis=-1), "RGBA"))
        elif kind == 2:
            out.append(Image.fromarray(arr).convert("L"))
        elif kind == 3:
            out.append(arr)
        else:
            out.append(arr.astype(np.float32) / 255)
    return out


def check_inputs(images, prompt) -> list[Image.Image]:
    """Raise ValueError (naming the fix) for bad inputs; return the images as RGB PIL images."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be one string, got {type(prompt).__name__}: rank against one text at a time.")
    if not prompt.strip():
        raise ValueError("prompt is empty: pass the text the images should match, e.g. the prompt that made them.")
    if hasattr(images, "images") and not isinstance(images, (np.ndarray, Image.Image)):
        images = images.images  # a GenerationResult
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        images = [images]
    if images is None or isinstance(images, (str, bytes)) or len(images) == 0:
        raise ValueError("No images to rank: pass a non-empty list of images (e.g. generate(...).images).")
    return [to_rgb(im, i) for i, im in enumerate(images)]


def text_inputs(clip: Clip, prompt: str) -> dict[str, np.ndarray]:
    """Token ids and attention mask of ONE prompt, (1, 77) each: the blog's `prompt * n` repeated characters."""
    tokenizer = clip.processor.tokenizer
    max_len = min(TEXT_MAX_LENGTH, clip.model.config.text_config.max_position_embeddings)
    n_tokens = len(tokenizer(prompt, truncation=False).input_ids)
    if n_tokens > max_len:
        warnings.warn(
            f"The prompt is {n_tokens - 2} tokens but CLIP reads {max_len - 2}: the rest is ignored.", stacklevel=3
        )
    enc = tokenizer([prompt], padding="max_length", max_length=max_len, truncation=True, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32)}


def pixel_values(clip: Clip, images: Sequence[Image.Image]) -> np.ndarray:
    """The processor's resize, centre crop and normalisation: (B, 3, S, S) float32."""
    return clip.processor.image_processor(images=list(images), return_tensors="np")["pixel_values"].astype(np.float32)


def padded_size(n: int, n_devices: int) -> int:
    """The smallest multiple of `n_devices` that holds `n` images (shard needs equal slices)."""
    return math.ceil(n / n_devices) * n_devices


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Append zero images up to `size` rows; their scores are computed and then dropped."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])


# ------------------------------------------------------------------------------------------- scoring


def _score_fn(clip: Clip):
    """params, pixel_values (b, 3, S, S), input_ids (1, L), attention_mask (1, L) -> logits (b,) in fp32."""
    import jax.numpy as jnp

    model = clip.model

    def score(params, pixels, input_ids, attention_mask):
        out = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask, params=params)
        return out.logits_per_image[:, 0].astype(jnp.float32)  # (b, 1) -> (b,): one prompt

    return score


def _pmap_runner(clip: Clip):
    import jax
    from flax.jax_utils import replicate

    n_dev = jax.local_device_count()
    key = ("pmap", n_dev)
    if key not in clip._cache:
        # params: one copy per device (leading axis n_dev); text: broadcast (in_axes=None), not repeated
        fn = jax.pmap(_score_fn(clip), axis_name="batch", in_axes=(0, 0, None, None))
        clip._cache[key] = (fn, replicate(clip.params))
    fn, params = clip._cache[key]

    def run(pixels: np.ndarray, text: dict) -> np.ndarray:
        b = len(pixels)  # a multiple of n_dev
        shards = pixels.reshape(n_dev, b // n_dev, *pixels.shape[1:])  # (n_dev, b/n_dev, 3, S, S): flax's shard()
        logits = fn(params, shards, text["input_ids"], text["attention_mask"])  # (n_dev, b/n_dev)
        return np.asarray(logits).reshape(b)  # every device's scores, in input order

    return run, n_dev


def _sharded_runner(clip: Clip):
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.local_devices()
    key = ("sharded", len(devices))
    if key not in clip._cache:
        mesh = Mesh(np.array(devices), ("batch",))
        batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
        fn = jax.jit(
            _score_fn(clip),
            in_shardings=(replicated, batch, replicated, replicated),  # split images, copy params and text
            out_shardings=batch,
        )
        clip._cache[key] = (fn, jax.device_put(clip.params, replicated))
    fn, params = clip._cache[key]

    def run(pixels: np.ndarray, text: dict) -> np.ndarray:
        return np.asarray(fn(params, pixels, text["input_ids"], text["attention_mask"]))  # gathers all shards

    return run, len(devices)


def _single_runner(clip: Clip):
    import jax

    if "single" not in clip._cache:
        clip._cache["single"] = (jax.jit(_score_fn(clip)), jax.device_put(clip.params, jax.local_devices()[0]))
    fn, params = clip._cache["single"]

    def run(pixels: np.ndarray, text: dict) -> np.ndarray:
        return np.asarray(fn(params, pixels, text["input_ids"], text["attention_mask"]))

    return run, 1


def _torch_runner(clip: Clip):
    import torch

    model = clip.model
    dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def run(pixels: np.ndarray, text: dict) -> np.ndarray:
        out = model(
            input_ids=torch.from_numpy(text["input_ids"]).long().to(clip.device),
            attention_mask=torch.from_numpy(text["attention_mask"]).long().to(clip.device),
            pixel_values=torch.from_numpy(pixels).to(clip.device, dtype),
        )
        return out.logits_per_image[:, 0].float().cpu().numpy()  # (b,)

    return run, 1


_RUNNERS = {"pmap": _pmap_runner, "sharded": _sharded_runner, "single": _single_runner, "torch": _torch_runner}


TIE_RTOL = 1e-5  # ~100 float32 ulps: the same image scored in another batch slot can differ by this much


def tie_tolerance(scores: np.ndarray, rtol: float = TIE_RTOL) -> float:
    """Scores closer than this are ties: float32 rounding, not CLIP, tells them apart."""
    scores = np.asarray(scores, np.float64)
    return rtol * max(1.0, float(np.abs(scores).max())) if scores.size else 0.0


def stable_order(scores: np.ndarray, rtol: float = TIE_RTOL) -> np.ndarray:
    """Indices from best to worst score; tied scores keep their input order.

    A plain stable sort is not enough: the same image scored at another position of a batch can come back
    1e-7 apart (CPU kernels block the batch differently), which would reorder duplicates at random. So scores
    within `tie_tolerance` of the first score of their run count as equal and are listed by input index.
    """
    scores = np.asarray(scores, np.float64)
    tol = tie_tolerance(scores, rtol)
    order, run = [], []
    for i in np.argsort(-scores, kind="stable"):
        if run and scores[run[0]] - scores[i] > tol:
            order += sorted(run)
            run = []
        run.append(int(i))
    return np.array(order + sorted(run), dtype=np.int64)


@dataclass
class RankResult:
    """Scores in input order, the ranking (best first) and the images sorted by it."""

    scores: np.ndarray  # (N,) logit_scale * cosine, aligned with the input images
    order: np.ndarray  # (N,) input indices, best first
    images: list  # the input images (as RGB PIL), best first
    prompt: str
    method: str
    n_devices: int
    seconds: float = 0.0

    @property
    def sorted_scores(self) -> np.ndarray:
        return self.scores[self.order]

    def titles(self) -> list[str]:
        """'#1 img 3: 27.41' for each sorted image: rank, input index, score."""
        return [f"#{r + 1} img {i}: {s:.2f}" for r, (i, s) in enumerate(zip(self.order, self.sorted_scores))]


def _check_chunk(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a whole number >= 1, got {chunk_size!r} (default {DEFAULT_CHUNK}).")
    return int(chunk_size)


def rank(images, prompt: str, clip: Clip, method: str = "pmap", chunk_size: int = DEFAULT_CHUNK) -> RankResult:
    """Score `images` against `prompt` with CLIP and sort them, best first.

    `method`: "pmap", "sharded" or "single" need a Flax `clip`; "torch" a torch one. Images go through the
    model `chunk_size` at a time (rounded up to a multiple of the device count), so memory stays bounded.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if not isinstance(clip, Clip):
        raise ValueError("clip must come from load_clip(...) (or build_vit_b32 / the mini CLIP helpers).")
    want = "torch" if method == "torch" else "flax"
    if clip.backend != want:
        raise ValueError(
            f"method={method!r} needs a {want} CLIP but this one is {clip.backend}: "
            f"load_clip(..., backend={want!r}), or pick method={'torch' if want == 'flax' else 'pmap'!r}."
        )
    chunk_size = _check_chunk(chunk_size)
    pil = check_inputs(images, prompt)
    text = text_inputs(clip, prompt)
    run, n_dev = _RUNNERS[method](clip)
    step = padded_size(min(chunk_size, len(pil)), n_dev)  # every chunk the same shape: one compilation
    t0 = time.perf_counter()
    scores = []
    for start in range(0, len(pil), step):
        chunk = pil[start : start + step]
        pixels = pad_batch(pixel_values(clip, chunk), step)  # (step, 3, S, S)
        scores.append(run(pixels, text)[: len(chunk)])  # drop the padding's scores
    scores = np.concatenate(scores).astype(np.float32)
    order = stable_order(scores)
    return RankResult(scores, order, [pil[i] for i in order], prompt, method, n_dev, time.perf_counter() - t0)


def ranking_grid(result: RankResult, ncols: int | None = None, size: float = 2.2):
    """The sorted images in a matplotlib grid, titled with rank, input index and score; returns the Figure."""
    from .plotting import image_grid

    title = f"CLIP ranking ({result.method}, {result.n_devices} device(s)) for: {result.prompt[:60]}"
    return image_grid(result.images, titles=result.titles(), ncols=ncols, size=size, suptitle=title)


def faithfulness(results: Sequence[RankResult], judge_fn, k: int = 1) -> dict[str, float]:
    """How often CLIP's top-`k` images are faithful to their prompt per an independent `judge_fn(image, prompt)`,
    against the average image: ranking helps when `top_k` > `mean`."""
    if not results:
        raise ValueError("No rankings to judge: pass a list of rank(...) results.")
    verdicts = [[bool(judge_fn(im, r.prompt)) for im in r.images] for r in results]  # in ranked order
    return {
        f"top_{k}": float(np.mean([v[:k] for v in verdicts])),
        "mean": float(np.mean([x for v in verdicts for x in v])),
        "n_prompts": len(results),
        "n_images": sum(len(v) for v in verdicts),
    }


# ------------------------------------------------------------------------------------ what the score is


@dataclass
class Embeddings:
    """CLIP's two towers, taken apart: the pieces of `logits_per_image`."""

    image_embeds: np.ndarray  # (N, D) projections of the images (not normalised)
    text_embeds: np.ndarray  # (D,) projection of the prompt
    logit_scale: float  # exp(learned temperature): 100 for OpenAI's CLIP


def embed(images, prompt: str, clip: Clip) -> Embeddings:
    """Image and text embeddings and the logit scale, so a notebook can rebuild the score by hand."""
    pil = check_inputs(images, prompt)
    text = text_inputs(clip, prompt)
    pixels = pixel_values(clip, pil)
    if clip.backend == "torch":
        import torch

        with torch.inference_mode():
            model, dev = clip.model, clip.device
            img = model.get_image_features(pixel_values=torch.from_numpy(pixels).to(dev, model.dtype))
            txt = model.get_text_features(
                input_ids=torch.from_numpy(text["input_ids"]).long().to(dev),
                attention_mask=torch.from_numpy(text["attention_mask"]).long().to(dev),
            )
            scale = model.logit_scale.exp().item()
        return Embeddings(img.float().cpu().numpy(), txt[0].float().cpu().numpy(), float(scale))
    if "embed" not in clip._cache:
        import jax

        model = clip.model

        def towers(params, pixels, input_ids, attention_mask):
            img = model.get_image_features(pixels, params=params)  # (N, D)
            txt = model.get_text_features(input_ids, attention_mask, params=params)  # (1, D)
            return img, txt

        clip._cache["embed"] = jax.jit(towers)  # one compilation instead of hundreds of op-by-op ones
    img, txt = clip._cache["embed"](clip.params, pixels, text["input_ids"], text["attention_mask"])
    scale = float(np.exp(np.asarray(clip.params["logit_scale"], dtype=np.float32)))
    return Embeddings(np.asarray(img, np.float32), np.asarray(txt, np.float32)[0], scale)


# -------------------------------------------------------------------------------------- the blog's code


def blog_scores(images, prompt, clip: Clip) -> np.ndarray:
    """The blog's scoring code, kept as it was (bugs included) so the notebook can show what goes wrong.

    It passes `text=prompt * jax.device_count()`, shards without padding and returns `logits[0]`.
    """
    import jax
    from flax.jax_utils import replicate
    from flax.training.common_utils import shard

    if "blog" not in clip._cache:
        model = clip.model

        def p_clip(inputs, params):
            return model(params=params, **inputs).logits_per_image

        clip._cache["blog"] = (jax.pmap(p_clip, axis_name="batch"), replicate(clip.params))
    p_clip, params = clip._cache["blog"]
    inputs = clip.processor(
        text=prompt * jax.device_count(),
        images=images,
        return_tensors="np",
        padding="max_length",
        max_length=TEXT_MAX_LENGTH,
        truncation=True,
    ).data
    logits = p_clip(shard(inputs), params)
    return np.asarray(logits[0])  # device 0's (b / n_devices, n_texts) only


# --------------------------------------------------------------------------------- models built here


def _processor_for(image_size: int | None = None, configs_dir: Path | None = None):
    """A CLIPProcessor with the real tokenizer: OpenAI's preprocessing at `image_size`, or from a config folder."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    from .tokenizer import load_clip_tokenizer

    if configs_dir is not None:
        image_processor = CLIPImageProcessor.from_pretrained(configs_dir)
    else:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )  # OpenAI's mean/std and bicubic resize are the defaults
    return CLIPProcessor(image_processor=image_processor, tokenizer=load_clip_tokenizer())


def build_random_mini_clip(seed: int = 0, image_size: int = 32, width: int = 32, layers: int = 2):
    """A tiny torch `CLIPModel` with random weights: the real 49,408-token vocabulary and 77 positions."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            max_position_embeddings=TEXT_MAX_LENGTH,
            bos_token_id=49406,
            eos_token_id=49407,  # pooled at the first <|endoftext|>
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=width,
    )
    return CLIPModel(config).eval()


def save_clip_folder(model, out_dir: Path | str, processor=None) -> Path:
    """Save a torch `CLIPModel` as a folder both backends load: model.safetensors, flax_model.msgpack, processor.

    `FlaxCLIPModel.from_pretrained(dir, from_pt=True, _do_init=False)` raises in transformers 4.57, so we
    convert the weights once here and save the msgpack beside the safetensors (each backend then loads its own).
    """
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    flax_clip = clips_from_torch_model(model, None, ["flax"])["flax"]  # converts without a random init
    flax_clip.model.save_pretrained(out_dir, params=flax_clip.params)
    (processor or _processor_for(model.config.vision_config.image_size)).save_pretrained(out_dir)
    return out_dir


def ensure_mini_clip(path: Path | str = MINI_CLIP_DIR, seed: int = 0) -> Path:
    """The tiny random CLIP folder, built on first use (safe when several processes race to build it)."""
    import shutil
    import tempfile

    path = Path(path)
    if _has_weights(path) and (path / "flax_model.msgpack").exists() and (path / "model.safetensors").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        save_clip_folder(build_random_mini_clip(seed), tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: keep theirs
            if not (path / "flax_model.msgpack").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def vit_b32_config(num_hidden_layers: int | None = None):
    """OpenAI's ViT-B/32 CLIPConfig from its public config; `num_hidden_layers` shrinks both towers (smoke runs)."""
    from transformers import CLIPConfig

    config = CLIPConfig.from_pretrained(VIT_B32_CONFIGS)
    if num_hidden_layers:
        config.text_config.num_hidden_layers = num_hidden_layers
        config.vision_config.num_hidden_layers = num_hidden_layers
    return config


def clips_from_torch_model(model, processor, backends: Sequence[str] = BACKENDS, source: str = "in memory"):
    """Wrap one torch `CLIPModel` as `Clip`s for the asked backends, sharing the same weights (no files)."""
    out = {}
    for backend in backends:
        if backend == "torch":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            out["torch"] = Clip(model.to(device).eval(), None, processor, "torch", "float32", source, device)
        elif backend == "flax":
            import jax
            import jax.numpy as jnp
            from transformers import FlaxCLIPModel
            from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

            flax_model = FlaxCLIPModel(model.config, _do_init=False)
            # the converter reads only the params' names and shapes: trace the init (eval_shape), never run it
            shapes = jax.eval_shape(lambda m=flax_model: m.init_weights(jax.random.PRNGKey(0), m.input_shape))
            shim = SimpleNamespace(base_model_prefix=flax_model.base_model_prefix, params=shapes)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            params = jax.tree_util.tree_map(jnp.asarray, convert_pytorch_state_dict_to_flax(state, shim))
            out["flax"] = Clip(flax_model, params, processor, "flax", "float32", source)
        else:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    return out


def build_vit_b32(backends: Sequence[str] = BACKENDS, seed: int = 0, num_hidden_layers: int | None = None):
    """The real ViT-B/32 CLIP architecture (151M parameters) with RANDOM weights, for throughput measurements.

    Returns {"flax": Clip, "torch": Clip} sharing the same weights; the processor is OpenAI's (224 px).
    """
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(vit_b32_config(num_hidden_layers)).eval()
    name = "ViT-B/32 architecture, random weights" + (f", {num_hidden_layers} layer(s)" if num_hidden_layers else "")
    return clips_from_torch_model(model, _processor_for(configs_dir=VIT_B32_CONFIGS), backends, name)
