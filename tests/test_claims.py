"""helpers.claims: the measures behind the notebooks' figure self-checks, on drawn (not generated) images."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import claims
from helpers.shapes_data import Combo, draw_v2

RED_CIRCLE = Combo("circle", "red", "blue")


def _drawn(combo: Combo, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [draw_v2(combo, rng)[0] for _ in range(n)]  # 64 px, as the committed family draws


def test_distances_are_zero_for_equal_images_and_positive_for_different_ones():
    a, b = _drawn(RED_CIRCLE, 2)
    assert claims.pixel_distance(a, a) == 0
    assert claims.pixel_distance(a, b) == claims.pixel_distance(b, a) > 0
    assert claims.mean_pairwise_distance([a, a, a]) == 0
    assert claims.mean_pairwise_distance([a, b]) == pytest.approx(claims.pixel_distance(a, b))
    with pytest.raises(ValueError, match="at least two"):
        claims.mean_pairwise_distance([a])


def test_faithful_rate_reads_the_prompt():
    images = _drawn(RED_CIRCLE, 8)
    assert claims.faithful_rate(images, "a red circle on a blue background") >= 0.9
    assert claims.faithful_rate(images, "a green circle on a blue background") == 0
    with pytest.raises(ValueError):
        claims.faithful_rate(images, "Kermit the Frog")


def test_shape_colour_and_chroma():
    red = _drawn(RED_CIRCLE, 1)[0]
    white = _drawn(Combo("circle", "white", "blue"), 1)[0]
    assert np.abs(claims.shape_colour(red) - (220, 30, 30)).max() <= 15  # the palette's red, with jitter
    assert claims.shape_chroma(red) > 60 > 10 > claims.shape_chroma(white)


def test_circle_iou_prefers_circles_to_squares():
    circles = _drawn(RED_CIRCLE, 4)
    squares = _drawn(Combo("square", "red", "blue"), 4)
    assert min(map(claims.circle_iou, circles)) > max(map(claims.circle_iou, squares))
    assert claims.circle_iou(np.zeros((64, 64, 3), np.uint8)) == 0  # no shape at all
