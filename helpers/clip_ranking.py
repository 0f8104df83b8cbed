"""Rank images by how well they match a prompt with CLIP: the blog's Flax + `jax.pmap` recipe, made right.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) embeds an image and a text into the same
space; its score for a pair is the cosine of the two embeddings times a learned temperature:

    logits_per_image = logit_scale * cos(image_embeds, text_embeds),   logit_scale = exp(t) (100 for ViT-B/32)

`rank(images, prompt, clip=..., method=...)` computes the same scores four ways:

- `"pmap"`: `jax.pmap` with replicated params, the batch padded to a multiple of the local device count,
  the padding dropped and the scores gathered from every device (the blog's recipe, right: `helpers.clip_blog`
  keeps the blog's own code and its three bugs);
- `"sharded"`: `jax.jit` over a device `Mesh` with `NamedSharding` (the modern way: pmap is in maintenance
  mode; `jax.shard_map` is the other modern spelling);
- `"single"`: `jax.jit` on one device;
- `"torch"`: the PyTorch `CLIPModel` on the same `model.safetensors`.

The pieces live beside this module, one concept each: `clip_model` (our Flax CLIP), `clip_loading`
(`load_clip`, which CLIP, models built here), `clip_devices` (device count, replicate, shard, padding),
`clip_inputs` (what counts as an image), `clip_blog` (the blog's code). Their public names are importable
from here too, so `from helpers import clip_ranking as cr` is all a notebook needs.
Nothing here imports jax at module import: `set_host_device_count(4)` must be able to run first.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .clip_blog import blog_scores
from .clip_devices import pad_batch, padded_size, replicate, set_host_device_count, shard
from .clip_inputs import check_inputs, example_inputs, to_rgb
from .clip_loading import (
    BACKENDS,
    DEFAULT_CLIP,
    DTYPES,
    MINI_CLIP_DIR,
    TEXT_MAX_LENGTH,
    TOY_CLIP_DIR,
    VIT_B32_CONFIGS,
    Clip,
    ClipUnavailableError,
    build_random_mini_clip,
    build_vit_b32,
    choose_clip,
    clips_from_torch_model,
    ensure_mini_clip,
    load_clip,
    load_processor,
    offline_clip_dir,
    save_clip_folder,
    vit_b32_config,
)

__all__ = [
    "BACKENDS", "DEFAULT_CHUNK", "DEFAULT_CLIP", "DTYPES", "METHODS", "MINI_CLIP_DIR", "TEXT_MAX_LENGTH",
    "TIE_RTOL", "TOY_CLIP_DIR", "VIT_B32_CONFIGS", "Clip", "ClipUnavailableError", "Embeddings", "RankResult",
    "blog_scores", "build_random_mini_clip", "build_vit_b32", "check_inputs", "choose_clip",
    "clips_from_torch_model", "embed", "ensure_mini_clip", "example_inputs", "faithfulness", "load_clip",
    "load_processor", "offline_clip_dir", "pad_batch", "padded_size", "pixel_values", "rank", "ranking_grid",
    "replicate", "save_clip_folder", "set_host_device_count", "shard", "stable_order", "text_inputs",
    "tie_tolerance", "to_rgb", "vit_b32_config",
]  # fmt: skip

METHODS = ("pmap", "sharded", "single", "torch")
DEFAULT_CHUNK = 64  # images per step (all devices together): bounds memory for any number of images


# ---------------------------------------------------------------------------------------------- inputs


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


# ------------------------------------------------------------------------------------------- scoring


def _score_fn(clip: Clip):
    """params, pixel_values (b, 3, S, S), input_ids (1, L), attention_mask (1, L) -> logits (b,) in fp32."""
    model = clip.model

    def score(params, pixels, input_ids, attention_mask):
        logits = model.apply({"params": params}, input_ids, pixels, attention_mask)  # (b, 1): one prompt
        return logits[:, 0]  # (b,)

    return score


def _pmap_runner(clip: Clip):
    import jax

    n_dev = jax.local_device_count()
    key = ("pmap", n_dev)
    if key not in clip._cache:
        # params: one copy per device (leading axis n_dev); text: broadcast (in_axes=None), not repeated
        fn = jax.pmap(_score_fn(clip), axis_name="batch", in_axes=(0, 0, None, None))
        clip._cache[key] = (fn, replicate(clip.params))
    fn, params = clip._cache[key]

    def run(pixels: np.ndarray, text: dict) -> np.ndarray:
        b = len(pixels)  # a multiple of n_dev
        shards = pixels.reshape(n_dev, b // n_dev, *pixels.shape[1:])  # (n_dev, b/n_dev, 3, S, S): shard()
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
        "bottom_1": float(np.mean([v[-1] for v in verdicts])),  # CLIP's last pick
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


def _features(out):
    """transformers 5's get_*_features return an output object (projection in `pooler_output`); 4.x a tensor."""
    return getattr(out, "pooler_output", out)


def embed(images, prompt: str, clip: Clip) -> Embeddings:
    """Image and text embeddings and the logit scale, so a notebook can rebuild the score by hand."""
    pil = check_inputs(images, prompt)
    text = text_inputs(clip, prompt)
    pixels = pixel_values(clip, pil)
    if clip.backend == "torch":
        import torch

        with torch.inference_mode():
            model, dev = clip.model, clip.device
            img = _features(model.get_image_features(pixel_values=torch.from_numpy(pixels).to(dev, model.dtype)))
            txt = _features(
                model.get_text_features(
                    input_ids=torch.from_numpy(text["input_ids"]).long().to(dev),
                    attention_mask=torch.from_numpy(text["attention_mask"]).long().to(dev),
                )
            )
            scale = model.logit_scale.exp().item()
        return Embeddings(img.float().cpu().numpy(), txt[0].float().cpu().numpy(), float(scale))
    if "embed" not in clip._cache:
        import jax

        from .clip_model import get_image_features, get_text_features

        model = clip.model

        def towers(params, pixels, input_ids, attention_mask):
            img = get_image_features(model, params, pixels)  # (N, D)
            txt = get_text_features(model, params, input_ids, attention_mask)  # (1, D)
            return img, txt

        clip._cache["embed"] = jax.jit(towers)  # one compilation instead of hundreds of op-by-op ones
    img, txt = clip._cache["embed"](clip.params, pixels, text["input_ids"], text["attention_mask"])
    scale = float(np.exp(np.asarray(clip.params["logit_scale"], dtype=np.float32)))
    return Embeddings(np.asarray(img, np.float32), np.asarray(txt, np.float32)[0], scale)
