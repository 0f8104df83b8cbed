"""An independent judge: does an image show what its prompt asks for?

We rank generated images with the mini CLIP, so we must not also *grade* them with it (a model
grading itself hides its own blind spots). The judge uses two different tools:

1. A pixel rule for colours. The background colour is the median of the image's border pixels;
   the shape is every pixel far (in RGB) from that colour, and its colour is their median. Each
   median is named by the nearest palette colour, and must lie within `MAX_COLOUR_DIST` of it.
2. A tiny CNN for the shape. It sees only the shape's *mask* (how far each pixel is from the
   background, scaled 0..1), so it cannot cheat by using colours. It is trained on the dataset's
   masks with noise and blur (`train_shape_classifier`) and saved in `models/shape-judge/`.

`judge(image, prompt)` is True when shape, shape colour and background colour all match the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .paths import MODELS_DIR
from .shapes_data import (
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    V2_IMAGE_SIZE,
    all_combos,
    make_dataset,
    make_dataset_v2,
    parse_prompt,
)

SHAPE_JUDGE_DIR = MODELS_DIR / "shape-judge"
MASK_THRESHOLD = 60.0  # RGB distance from the background beyond which a pixel belongs to the shape
MAX_COLOUR_DIST = 100.0  # a median farther than this from every palette colour has no name
MIN_SHAPE_FRACTION = 0.04  # the shape must cover 4%..85% of the image (else: no single shape)
MAX_SHAPE_FRACTION = 0.85

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)  # (6, 3)


def _as_array(image) -> np.ndarray:
    """PIL image or uint8 array -> (H, W, 3) float32 array in 0..255."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float32)[..., :3]


def name_colour(rgb: np.ndarray) -> tuple[str | None, float]:
    """Nearest palette colour and its RGB distance; None when nothing is within `MAX_COLOUR_DIST`."""
    dist = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float32), axis=1)
    i = int(dist.argmin())
    return (_PALETTE_NAMES[i] if dist[i] <= MAX_COLOUR_DIST else None), float(dist[i])


def shape_mask(image) -> tuple[np.ndarray, np.ndarray]:
    """The soft shape mask (H, W) in 0..1 and the background's median colour (3,)."""
    x = _as_array(image)
    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])  # (4H-4, 3) frame of pixels
    background = np.median(border, axis=0)
    dist = np.linalg.norm(x - background, axis=-1)  # (H, W)
    # 0 at the background colour, 1 from twice the threshold on: a colour-blind picture of the shape
    return np.clip(dist / (2 * MASK_THRESHOLD), 0.0, 1.0).astype(np.float32), background


class ShapeClassifier(nn.Module):
    """Mask (B, 1, 32, 32) -> logits over `SHAPES` (B, 3). About 25k parameters."""

    def __init__(self, n_classes: int = len(SHAPES), width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, 16, 16)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, 8, 8)
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),  # (B, 2w, 2, 2)
        )  # fmt: skip
        self.head = nn.Linear(8 * width, n_classes)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(mask).flatten(1))


def _masks_batch(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) images -> (B, 1, 32, 32) mask tensor (resized when H != 32)."""
    masks = torch.from_numpy(np.stack([shape_mask(im)[0] for im in images]))[:, None]
    if masks.shape[-1] != 32:
        masks = F.interpolate(masks, size=(32, 32), mode="area")
    return masks


def train_shape_classifier(
    steps: int = 600,
    batch_size: int = 128,
    n_images: int = 6000,
    seed: int = 0,
    progress: bool = True,
    v2: bool = False,
) -> tuple[ShapeClassifier, list[float]]:
    """Train the shape CNN on masks of dataset images (all 90 combinations), with noise and blur.

    The noise and blur make it robust to the softer, noisier shapes a diffusion model draws.
    Returns the model (eval mode) and the loss per step. `v2=True` trains on the second generation's
    64 px rotated shapes (`shapes_data.make_dataset_v2`; masks are shrunk to 32x32 as for any size).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    if v2:
        data = make_dataset_v2(n_images, seed=seed + 1000, combos=all_combos())
    else:
        data = make_dataset(n_images, seed=seed + 1000, combos=all_combos())
    images = torch.from_numpy(data.images).float()  # (N, H, W, 3)
    labels = torch.tensor([SHAPES.index(c.shape) for c in data.combos])
    gen = torch.Generator().manual_seed(seed)
    model = ShapeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    losses = []
    for _ in tqdm(range(steps), desc="shape judge", disable=not progress):
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen)
        x = images[idx]
        x = x + torch.randn(x.shape, generator=gen) * torch.rand(batch_size, 1, 1, 1, generator=gen) * 25.0
        x = x.clamp(0, 255).numpy()
        masks = _masks_batch(x)  # (B, 1, 32, 32)
        if torch.rand((), generator=gen) < 0.5:  # half the batches blurred: soft generated edges
            masks = F.avg_pool2d(masks, 3, stride=1, padding=1, count_include_pad=False)
        loss = F.cross_entropy(model(masks), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses


def save_shape_classifier(model: ShapeClassifier, out_dir: Path | str = SHAPE_JUDGE_DIR) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")
    config = {"classes": list(SHAPES), "input": "shape mask (B, 1, 32, 32) from helpers.judge.shape_mask"}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


@lru_cache(maxsize=4)
def load_shape_classifier(model_dir: Path | str = SHAPE_JUDGE_DIR) -> ShapeClassifier:
    from safetensors.torch import load_file

    path = Path(model_dir) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"The shape judge's weights are missing ({path}). They are committed with the repo; "
            "retrain them with `python scripts/train_toy_family.py`."
        )
    model = ShapeClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


@dataclass
class Verdict:
    """What the judge saw in one image."""

    shape: str | None
    colour: str | None
    background: str | None
    shape_fraction: float  # share of pixels that belong to the shape

    def matches(self, prompt: str) -> bool:
        want = parse_prompt(prompt)
        if want is None:
            raise ValueError(
                f"The judge cannot read {prompt!r}: name one shape ({', '.join(SHAPES)}) and two different "
                f"colours ({', '.join(COLOURS)}), e.g. 'a red circle on a blue background'."
            )
        return (self.shape, self.colour, self.background) == (want.shape, want.colour, want.background)


@torch.no_grad()
def inspect(images, model_dir: Path | str = SHAPE_JUDGE_DIR) -> list[Verdict]:
    """Read shape, shape colour and background colour from each image (PIL images or uint8 arrays)."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    arrays = np.stack([_as_array(im) for im in images])  # (B, H, W, 3)
    masks = _masks_batch(arrays)  # (B, 1, 32, 32)
    shapes = load_shape_classifier(model_dir)(masks).argmax(-1).tolist()
    verdicts = []
    for x, shape_i in zip(arrays, shapes):
        soft, background = shape_mask(x)
        inside = soft >= 0.5  # farther than MASK_THRESHOLD from the background
        fraction = float(inside.mean())
        if not MIN_SHAPE_FRACTION <= fraction <= MAX_SHAPE_FRACTION:
            verdicts.append(Verdict(None, None, name_colour(background)[0], fraction))
            continue
        core = soft >= 0.99  # the shape's interior, away from antialiased edges
        pixels = x[core] if core.sum() >= 4 else x[inside]
        verdicts.append(
            Verdict(SHAPES[shape_i], name_colour(np.median(pixels, axis=0))[0], name_colour(background)[0], fraction)
        )
    return verdicts


def judge(image, prompt: str) -> bool:
    """True when `image` shows the shape, shape colour and background colour that `prompt` names."""
    return inspect(image)[0].matches(prompt)


def judge_many(images, prompts: list[str]) -> list[bool]:
    """`judge` for many images at once (one CNN batch)."""
    return [v.matches(p) for v, p in zip(inspect(images), prompts)]


def judge_accuracy(
    n: int = 900, seed: int = 12345, model_dir: Path | str = SHAPE_JUDGE_DIR, size: int = V2_IMAGE_SIZE
) -> dict[str, float]:
    """The judge's own accuracy on clean dataset images of all 90 combinations (fresh seed), drawn as the family
    generation of that `size` draws them (64 px: the committed family's rotated shapes; 32 px: the first family's)."""
    if size == IMAGE_SIZE:
        data = make_dataset(n, seed=seed, combos=all_combos(), random_template=False)
    else:
        data = make_dataset_v2(n, seed=seed, combos=all_combos(), size=size, form=0)
    verdicts = inspect(data.images, model_dir)
    acc = lambda f: float(np.mean([f(v, c) for v, c in zip(verdicts, data.combos)]))  # noqa: E731
    return {
        "shape": acc(lambda v, c: v.shape == c.shape),
        "colour": acc(lambda v, c: v.colour == c.colour),
        "background": acc(lambda v, c: v.background == c.background),
        "all": acc(lambda v, c: (v.shape, v.colour, v.background) == (c.shape, c.colour, c.background)),
        "n": n,
    }
