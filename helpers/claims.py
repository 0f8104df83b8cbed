"""Measure what a figure shows, so that the sentence under it can say it with a number.

A notebook that writes "guidance makes the image follow the prompt" under a figure must show it, and check it:
these measures turn a row of images into numbers a self-check can assert. Each one is deliberately simple:

- `pixel_distance(a, b)`: mean absolute difference of two images, in 0..255 per channel (0 = identical);
- `mean_pairwise_distance(images)`: the same, averaged over every pair: how different the seeds' images are;
- `faithful_rate(images, prompt)`: the share of images that the strict judge (`helpers.strict_judge`: the shape's
  kind, IoU >= 0.93 with the best-fitting ideal shape, CIELAB Delta E of shape and background) finds faithful to
  `prompt`. It is calibrated on the toy family's 64 px images (`strict_judge.calibrate`);
- `shape_colour(image)`: the median RGB of the shape (pixels far from the border's colour, as the judge segments it);
- `shape_chroma(image)`: that colour's CIELAB chroma $C^*_{ab} = \\sqrt{a^{*2} + b^{*2}}$: how saturated it is;
- `circle_iou(image)`: the strict judge's soft IoU of the shape with the best-fitting ideal circle (1 = a perfect disc).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from PIL import Image

from . import judge, strict_judge


def _pixels(image) -> np.ndarray:
    """PIL image or uint8/float array in 0..255 -> (H, W, 3) float64."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float64)[..., :3]


def pixel_distance(a, b) -> float:
    """Mean absolute pixel difference of two images, 0..255."""
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


def mean_pairwise_distance(images) -> float:
    """`pixel_distance` averaged over all pairs of `images` (at least two)."""
    arrays = [_pixels(im) for im in images]
    if len(arrays) < 2:
        raise ValueError(f"mean_pairwise_distance needs at least two images, got {len(arrays)}.")
    return float(np.mean([np.abs(a - b).mean() for a, b in combinations(arrays, 2)]))


def faithful_rate(images, prompt: str) -> float:
    """Share of `images` that the strict judge finds faithful to `prompt` (ValueError if it cannot read it)."""
    images = [np.asarray(_pixels(im), dtype=np.uint8) for im in images]
    return float(np.mean([v.faithful for v in strict_judge.judge_many(images, [prompt] * len(images))]))


def shape_colour(image) -> np.ndarray:
    """Median RGB (3,) of the shape's pixels (farther than the judge's threshold from the background)."""
    soft, background = judge.shape_mask(image)  # (H, W) in 0..1, (3,)
    inside = soft >= 0.5
    return np.median(_pixels(image)[inside], axis=0) if inside.any() else background


def shape_chroma(image) -> float:
    """CIELAB chroma of `shape_colour`: 0 for grey, ~85 for the palette's red."""
    # $C^*_{ab} = \sqrt{a^{*2} + b^{*2}}$
    _, a, b = strict_judge.srgb_to_lab(shape_colour(image))
    return float(np.hypot(a, b))


def circle_iou(image) -> float:
    """Soft IoU of the shape with the best-fitting ideal circle (strict judge's fit); 0 when no shape is found."""
    return float(strict_judge.inspect(np.asarray(_pixels(image), dtype=np.uint8)).ious.get("circle", 0.0))
