"""Show images in a matplotlib grid (the one `show_images` every notebook uses; never redefined)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_pil(image) -> Image.Image:
    """PIL image from a PIL image, an (H, W, 3) array in [0, 1] or [0, 255], or a (3, H, W) tensor in [-1, 1]."""
    if isinstance(image, Image.Image):
        return image
    arr = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # (C, H, W) in [-1, 1]
        arr = (arr.transpose(1, 2, 0) + 1) / 2
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr.squeeze())


def image_grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    size: float = 2.2,
    suptitle: str | None = None,
):
    """Plot images in a grid with optional titles; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("No images to show.")
    ncols = ncols or min(n, 5)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_pil(images[i]))
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_images(images: Sequence, titles: Sequence[str] | None = None, **kw) -> None:
    """Plot a grid and show it (in a notebook, inline). Returns None, so a cell ending with this call
    shows the grid once; use `image_grid` to get the Figure."""
    import matplotlib.pyplot as plt

    image_grid(images, titles, **kw)
    plt.show()
