"""Which CLIP, and how it loads: one folder (or Hub repo), one `model.safetensors`, two backends.

- `load_clip(model_or_dir, backend="flax")`: our own Flax CLIP (`helpers.clip_model`, since transformers 5
  has no Flax models) reads `config.json` + `model.safetensors`;
- `load_clip(model_or_dir, backend="torch")`: transformers' `CLIPModel` reads the same file.

Both come with the `CLIPProcessor` of that folder: its tokenizer (`vocab.json`, `merges.txt`: OpenAI's BPE)
and its image preprocessing (`preprocessor_config.json`). `choose_clip` says which CLIP fits which images;
`build_vit_b32` and the mini CLIP give offline models with random weights for tests and benchmarks.
Nothing here imports jax at module import (see `helpers.clip_devices`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import CACHE_DIR, CONFIGS_DIR, MODELS_DIR

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # the blog's CLIP (ViT-B/32, 151M parameters)
TOY_CLIP_DIR = MODELS_DIR / "toy-clip"  # mini CLIP trained on coloured shapes, when present
MINI_CLIP_DIR = CACHE_DIR / "mini-clip-random"  # tiny random CLIP built here (tests, fallback)
VIT_B32_CONFIGS = CONFIGS_DIR / "clip-vit-base-patch32"  # public config.json + preprocessor_config.json
BACKENDS = ("flax", "torch")
DTYPES = ("float32", "float16", "bfloat16")
TEXT_MAX_LENGTH = 77  # CLIP's context: <start> + 75 tokens + <end>
WEIGHTS_NAME = "model.safetensors"  # the one weights file both backends read
HUB_FILES = ["config.json", "model.safetensors*", "*.txt", "*.json"]  # what a Hub CLIP needs, no other weights


class ClipUnavailableError(OSError):
    """CLIP could not be loaded from the Hub or the cache; the message names the fixes."""


@dataclass
class Clip:
    """A loaded CLIP: the model, its params (Flax; None for torch), the processor, and where it came from."""

    model: Any  # helpers.clip_model.CLIP (a flax.linen module) or transformers.CLIPModel
    params: Any
    processor: Any
    backend: str  # "flax" or "torch"
    dtype: str  # "float32", "float16" or "bfloat16"
    source: str  # Hub id or folder
    device: str = "cpu"  # torch only; jax places arrays itself
    _cache: dict = field(default_factory=dict, repr=False)  # compiled functions and placed params

    def __repr__(self) -> str:
        from .saving import public_name  # a Hub id, or a path relative to the project: never the absolute path

        return f"Clip({self.backend}, {self.dtype}, {public_name(self.source)!r}, image size {self.image_size} px)"

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


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").exists() and (
        (folder / WEIGHTS_NAME).exists() or (folder / f"{WEIGHTS_NAME}.index.json").exists()
    )


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


def _unavailable(model: str, err: Exception) -> ClipUnavailableError:
    return ClipUnavailableError(
        f"Could not load CLIP {model!r} from the Hugging Face Hub or the local cache ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200] if str(err) else ''}).\nFixes:\n"
        "  1. Check the network (Colab and Gradient have it; CLIP needs no login or license).\n"
        "  2. Downloaded it before? Set HF_HUB_OFFLINE=1 to use the cached copy.\n"
        "  3. Pass a local folder made by save_pretrained instead, e.g. load_clip('models/toy-clip').\n"
        "  4. Or run offline: load_clip(offline_clip_dir()) (or set CLIP_MODEL to a folder)."
    )


def load_processor(src: str | os.PathLike):
    """The folder's (or Hub repo's) `CLIPProcessor`: its own tokenizer files and image preprocessing.

    transformers 5 names image-processor backends: the default one needs torchvision (not installed here, and
    resizing with torch changes pixels slightly); `CLIPImageProcessorPil` is the PIL backend, which replaced
    `use_fast=False`.
    """
    from transformers import CLIPProcessor, CLIPTokenizer

    image_processor = _image_processor_class().from_pretrained(src)
    return CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(src))


def _image_processor_class():
    try:
        from transformers import CLIPImageProcessorPil  # transformers 5: the PIL backend, no torchvision

        return CLIPImageProcessorPil
    except ImportError:  # a transformers without named backends: its CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def load_clip(model_or_dir: str | os.PathLike = DEFAULT_CLIP, backend: str = "flax", dtype=None) -> Clip:
    """Load CLIP (model + params + processor) from a Hub id or a folder: the same call either way.

    - `backend="flax"`: `helpers.clip_model.load_flax_clip` returns our linen module and its params separately
      (jax functions are pure: params are an argument); `dtype` sets the compute dtype and casts the params.
    - `backend="torch"`: `CLIPModel`, on the GPU when there is one (keep fp32 on CPU: fp16 there is slow).
    Both read the folder's `model.safetensors`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    dtype = _dtype_name(dtype)
    src = str(model_or_dir)
    path = Path(src).expanduser()
    if path.is_dir():
        if not _has_weights(path):
            raise ValueError(
                f"{path} is a folder but holds no CLIP weights (config.json + {WEIGHTS_NAME}): pass a folder made "
                "by save_pretrained, e.g. with save_clip_folder()."
            )
        src = str(path)
    elif src.startswith((".", "/", "~")) or path.exists() or src.count("/") != 1:
        raise ValueError(
            f"{src!r} is neither a folder nor a Hub id like {DEFAULT_CLIP!r}: check the path, or pass a Hub id."
        )
    from .hub import HubTimeoutError, hub_call

    def load() -> Clip:
        processor = load_processor(src)
        if backend == "flax":
            from huggingface_hub import snapshot_download

            from .clip_model import load_flax_clip

            folder = src if path.is_dir() else snapshot_download(src, allow_patterns=HUB_FILES)
            model, params, _ = load_flax_clip(folder, dtype)
            return Clip(model, params, processor, "flax", dtype, src)
        model, device = _load_torch(src, dtype)
        return Clip(model, None, processor, "torch", dtype, src, device)

    if path.is_dir():
        return load()
    try:  # a Hub id: every request gets connect/read timeouts, and a silent Hub says so (helpers.hub)
        from huggingface_hub import constants, model_info

        if not constants.HF_HUB_OFFLINE:
            # one quick request first (no retries): transformers' processor loader retries file downloads with
            # back-off for minutes on a silent network, then re-raises the timeout as a plain OSError
            hub_call(model_info, src, what=f"loading CLIP {src!r}")
        return hub_call(load, what=f"loading CLIP {src!r}")
    except HubTimeoutError:
        raise
    except OSError as err:
        raise _unavailable(src, err) from err


def _load_torch(src: str, dtype: str):
    import torch
    from transformers import CLIPModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CLIPModel.from_pretrained(src, dtype=torch.float32, use_safetensors=True)
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), device


# --------------------------------------------------------------------------------- models built here


def processor_for(image_size: int | None = None, configs_dir: Path | None = None):
    """A CLIPProcessor with the real tokenizer: OpenAI's preprocessing at `image_size`, or from a config folder."""
    from transformers import CLIPProcessor

    from .tokenizer import load_clip_tokenizer

    ImageProcessor = _image_processor_class()
    if configs_dir is not None:
        image_processor = ImageProcessor.from_pretrained(configs_dir)
    else:
        image_processor = ImageProcessor(
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
    """Save a torch `CLIPModel` as a folder both backends load: config.json, model.safetensors, processor files."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)  # safetensors is the default: the one file torch and our Flax CLIP read
    (processor or processor_for(model.config.vision_config.image_size)).save_pretrained(out_dir)
    return out_dir


def ensure_mini_clip(path: Path | str = MINI_CLIP_DIR, seed: int = 0) -> Path:
    """The tiny random CLIP folder, built on first use (safe when several processes race to build it)."""
    import shutil
    import tempfile

    path = Path(path)
    if _has_weights(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        save_clip_folder(build_random_mini_clip(seed), tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: keep theirs
            if not _has_weights(path):
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
    """Wrap one torch `CLIPModel` as `Clip`s for the asked backends, sharing the same weights (no files).

    The Flax params are the torch state dict renamed and transposed (`helpers.clip_model.params_from_hf`):
    the same conversion that reading `model.safetensors` does.
    """
    out = {}
    for backend in backends:
        if backend == "torch":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            out["torch"] = Clip(model.to(device).eval(), None, processor, "torch", "float32", source, device)
        elif backend == "flax":
            from .clip_model import CLIP, ClipConfig, params_from_hf

            state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
            module = CLIP(ClipConfig.from_dict(model.config.to_dict()))
            out["flax"] = Clip(module, params_from_hf(state), processor, "flax", "float32", source)
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
    return clips_from_torch_model(model, processor_for(configs_dir=VIT_B32_CONFIGS), backends, name)
