"""helpers.plotting: one grid for PIL images, numpy arrays and torch tensors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from helpers.plotting import image_grid, show_images, to_pil  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def pil_images(n):
    return [Image.new("RGB", (8, 8), (30 * i, 0, 0)) for i in range(n)]


def shown(fig) -> list[np.ndarray]:
    """The pixel arrays drawn on the figure's axes, in order (empty axes skipped)."""
    return [ax.images[0].get_array() for ax in fig.axes if ax.images]


def test_pil_grid_axes_and_titles():
    fig = image_grid(pil_images(7), titles=[f"seed {i}" for i in range(7)])
    assert len(fig.axes) == 10  # 2 rows of 5
    assert len(shown(fig)) == 7
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:7] == [f"seed {i}" for i in range(7)] and titles[7:] == ["", "", ""]
    assert all(not ax.axison for ax in fig.axes)
    assert shown(fig)[3][0, 0, 0] == 90


def test_ncols_and_suptitle():
    fig = image_grid(pil_images(4), ncols=2, suptitle="guidance x steps")
    assert len(fig.axes) == 4 and fig.axes[0].get_gridspec().get_geometry() == (2, 2)
    assert fig._suptitle.get_text() == "guidance x steps"
    assert all(ax.get_title() == "" for ax in fig.axes)


def test_numpy_float_and_uint8():
    floats = np.zeros((8, 8, 3))
    floats[..., 1] = 1.0
    uint8 = np.full((8, 8, 3), 200, dtype=np.uint8)
    fig = image_grid([floats, uint8], titles=["float", "uint8"])
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["float", "uint8"]
    a, b = shown(fig)
    assert tuple(a[0, 0]) == (0, 255, 0) and tuple(b[0, 0]) == (200, 200, 200)


def test_tensor_chw_in_minus_one_to_one():
    t = torch.full((3, 8, 8), -1.0)
    t[2] = 1.0  # blue
    fig = image_grid([t, torch.zeros(3, 8, 8)])
    a, b = shown(fig)
    assert a.shape == (8, 8, 3) and tuple(a[0, 0]) == (0, 0, 255)
    assert tuple(b[0, 0]) == (128, 128, 128)  # 0 is mid-grey


def test_to_pil_clips_and_squeezes():
    assert to_pil(np.full((4, 4, 3), 2.0)).getpixel((0, 0)) == (255, 255, 255)
    gray = to_pil(np.full((4, 4, 1), 0.5))
    assert gray.mode == "L" and gray.size == (4, 4)
    im = Image.new("RGB", (2, 2))
    assert to_pil(im) is im


def test_empty_raises():
    with pytest.raises(ValueError, match="No images"):
        image_grid([])


def test_show_images_shows_once_and_returns_nothing(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append([ax.get_title() for ax in plt.gcf().axes]))
    assert show_images(pil_images(2), titles=["a", "b"]) is None  # a cell ending with it displays no Figure repr
    assert shown == [["a", "b"]]
