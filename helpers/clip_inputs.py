"""What `rank` accepts as images, and how each becomes an RGB PIL image for CLIP's processor.

PIL images of any mode (transparency composited on white), numpy arrays (H, W), (H, W, 1), (H, W, 3) or
(H, W, 4) of uint8 0..255 or floats 0..1, torch tensors of the same, or a `GenerationResult` (its `.images`).
Anything else raises a ValueError that names the fix.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


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
