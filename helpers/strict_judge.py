"""A strict judge of shape pictures: classical image analysis only, no learned model, no CLIP.

The first judge (`helpers.judge`) names colours by RGB distance and the shape with a small CNN; it
let four-lobed blobs pass as circles and read "a blue background with a red circle" backwards. This
one measures instead of classifying:

1. **Segment.** Two colour clusters in CIELAB (k-means, k = 2, started from the median of the border
   and the pixels farthest from it): the cluster that owns most of the border is the background. Each
   pixel gets a soft membership $t \\in [0, 1]$: where its colour lies on the line from the background's
   colour to the shape's (so antialiased edges count by half).
2. **Fit.** For each kind (circle, square, triangle) the ideal shape that best overlaps the mask:
   centre at the mask's centroid, size from its area, rotation (squares, triangles) from the angular
   moments of the mask ($\\arg \\sum_p t_p \\rho_p^2 e^{i k \\varphi_p} / k$, k = 4 for squares and 3 for
   triangles), then refined by a small search. The score is the soft IoU
   $\\sum_p \\min(t_p, c_p) / \\sum_p \\max(t_p, c_p)$ with the ideal shape's pixel coverage $c_p$.
   The kind is the best-fitting one; a blob fits none of them well.
3. **Colours.** The median CIELAB colour of the shape's interior and of the background, each named
   by the nearest palette colour (`helpers.shapes_data.COLOURS`) with its colour difference
   $\\Delta E^*_{ab}$ (CIE 1976: Euclidean distance in CIELAB, about 2.3 = just noticeable).

`judge(image, caption)` is faithful only when the kind, the IoU, the shape's colour and the background's
colour all hold for what the caption names. `parse_caption` reads every caption form the training data
uses, in any word order, and partial captions ("a red shape"); it refuses anything else with a ValueError.
`calibrate()` measures the thresholds: training images must pass, wrong images (wrong kind, wrong colour,
blobs from `draw_blob`) must fail.

New concepts (`helpers.personalise` teaches them to the family): the colours "magenta" and "orange"
(`shapes_data.EXTRA_COLOURS`) and the kind "star" (`shapes_data.EXTRA_SHAPES`, fitted with the k = 5
angular moment). They are opt-in, so every existing result stays exactly as it was: `inspect` fits them and
names colours with them only when asked (`kinds=`, `colours=`), and `judge`/`judge_many` ask only when the
caption names them (`inspect_options`). `calibrate_new_concepts()` measures them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .shapes_data import (
    COLOURS,
    EXTRA_COLOURS,
    EXTRA_SHAPES,
    SHAPES,
    STAR_INNER,
    SUPERSAMPLE,
    UNNAMED_CONCEPTS,
    V2_IMAGE_SIZE,
    Combo,
    _jitter,
    all_combos,
    colour_rgb,
    concept_combos,
    draw_for_size,
    make_dataset_v2,
)

IOU_MIN = 0.93  # soft IoU with the ideal shape of the named kind: training images 0.985 on average, blobs <= 0.914 (`calibrate()`)
DELTA_E_MAX = 25.0  # a colour this far (CIELAB Delta E 1976) from its palette colour has no name
MIN_SHAPE_FRACTION = 0.02  # a shape covers 2%..60% of the image; outside that there is no single shape
MAX_SHAPE_FRACTION = 0.60
#: Soft membership within this fraction of either colour counts as that colour: without it, pixel noise of
#: sigma 3/255 (barely visible) failed 55% of drawn training images and sigma 6/255 90% (`calibrate()`).
NOISE_FLOOR = 0.1
NOISE_SIGMA = 4.0  # pixel noise (0-255) of the noisy calibration rows: barely visible, typical of a generated image
MIN_CONTRAST = 20.0  # Delta E between the two clusters: below it the image is one flat colour

#: Caption forms `parse_caption` reads (any of these words in any order that keeps the pairs together).
READABLE_FORMS = (
    "a red circle on a blue background",
    "a red circle against a blue background",
    "red circle, blue background",
    "a blue background with a red circle",
    "blue background, red circle",
    "a red circle",
    "a circle on a blue background",
    "a red shape on a blue background",
    "a circle",
    "a red shape",
    "a blue background",
)
_FILLER = {"a", "an", "on", "against", "with", "the", "and", "in", "of"}
_SHAPE_WORDS = {s: s for s in SHAPES} | {s + "s": s for s in SHAPES}
_ALL_SHAPE_WORDS = _SHAPE_WORDS | {s: s for s in EXTRA_SHAPES} | {s + "s": s for s in EXTRA_SHAPES}
_ALL_COLOURS = {**COLOURS, **EXTRA_COLOURS}


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a caption names; None for an attribute it leaves unnamed ("a red shape": kind and background)."""

    shape: str | None = None
    colour: str | None = None
    background: str | None = None

    def named(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _refuse(caption: str, why: str) -> ValueError:
    forms = "; ".join(f"'{f}'" for f in READABLE_FORMS)
    return ValueError(
        f"The strict judge cannot read {caption!r}: {why}. It reads captions built from a shape "
        f"({', '.join(SHAPES + EXTRA_SHAPES)} or 'shape' for any), its colour right before it, and a colour right "
        f"before 'background' ({', '.join(_ALL_COLOURS)}), in any order, e.g. {forms}."
    )


def parse_caption(caption: str) -> Request:
    """The attributes a caption names, in any word order; ValueError for anything else.

    "a red circle on a blue background" and "a blue background with a red circle" both give
    Request("circle", "red", "blue"); "a red shape" gives Request(None, "red", None). The new concepts read
    like the others: "a magenta circle", "a red star on a blue background".
    """
    words = re.sub(r"[,.;:!]", " ", caption.lower()).split()
    shape = colour = background = None
    saw_shape = False
    i = 0
    while i < len(words):
        w, nxt = words[i], words[i + 1] if i + 1 < len(words) else None
        if w in _ALL_COLOURS:
            if nxt == "background":
                if background is not None:
                    raise _refuse(caption, "it names two backgrounds")
                background, i = w, i + 2
                continue
            if nxt in _ALL_SHAPE_WORDS or nxt == "shape":
                if saw_shape:
                    raise _refuse(caption, "it names two shapes")
                colour, shape, saw_shape = w, _ALL_SHAPE_WORDS.get(nxt), True
                i += 2
                continue
            raise _refuse(caption, f"the colour {w!r} is not followed by a shape word or 'background'")
        if w in _ALL_SHAPE_WORDS or w == "shape":
            if saw_shape:
                raise _refuse(caption, "it names two shapes")
            shape, saw_shape = _ALL_SHAPE_WORDS.get(w), True
        elif w == "background":
            raise _refuse(caption, "'background' needs its colour right before it")
        elif w not in _FILLER:
            raise _refuse(caption, f"the word {w!r} is not in its vocabulary")
        i += 1
    if not saw_shape and background is None:
        raise _refuse(caption, "it names no shape and no background")
    if colour is not None and colour == background:
        raise _refuse(caption, f"the shape and the background are both {colour} (the data never has that)")
    return Request(shape, colour, background)


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..255 (..., 3) -> CIELAB (..., 3) under D65."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # undo the sRGB gamma
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])  # relative to the D65 white point
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_PALETTE_NAMES = list(COLOURS)
PALETTE_LAB = srgb_to_lab(np.array([COLOURS[c] for c in _PALETTE_NAMES]))  # (6, 3)


def name_colour(lab: np.ndarray, colours: tuple[str, ...] | None = None) -> tuple[str, float]:
    """The nearest palette colour and its Delta E (CIE 1976); `colours` names another set to choose from
    (e.g. the palette plus "magenta"), None the palette."""
    names, table = (_PALETTE_NAMES, PALETTE_LAB) if colours is None else (list(colours), _lab_of(tuple(colours)))
    d = np.linalg.norm(table - np.asarray(lab), axis=1)
    i = int(d.argmin())
    return names[i], float(d[i])


def _lab_of(colours: tuple[str, ...]) -> np.ndarray:
    """CIELAB of named colours, palette or `EXTRA_COLOURS`: (len(colours), 3)."""
    return srgb_to_lab(np.array([colour_rgb(c) for c in colours]))


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------

#: Area of each ideal shape with half-extent r, in units of r^2 (as `shapes_data.draw_v2` draws them).
UNIT_AREA = {"circle": np.pi, "square": (2 * 0.85) ** 2, "triangle": 2.0 * 1.8 / 2}
# a star is 10 triangles (centre, point, inner corner), each $\frac12 r \cdot q r \sin 36°$, with $q$ = STAR_INNER
UNIT_AREA["star"] = 5 * STAR_INNER * np.sin(np.pi / 5)
_SYMMETRY = {"square": 4, "triangle": 3, "star": 5}  # the star's points dominate its k = 5 angular moment


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    from .shapes_data import shape_polygon

    return shape_polygon(shape, cx, cy, r, angle)


def coverage(shape: str, h: int, w: int, cx: float, cy: float, r: float, angle: float = 0.0) -> np.ndarray:
    """How much of each pixel (h, w) the ideal shape covers, 0..1, from the signed distance to its edge."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    if shape == "circle":
        sd = r - np.hypot(xs - cx, ys - cy)  # > 0 inside
    elif shape in EXTRA_SHAPES:  # not convex: the half-plane rule below would fill the star's notches
        sd = polygon_signed_distance(_polygon(shape, cx, cy, r, angle), xs, ys)
    else:
        pts = _polygon(shape, cx, cy, r, angle)
        centre = pts.mean(axis=0)
        sd = np.full((h, w), np.inf)
        for a, b in zip(pts, np.roll(pts, -1, axis=0)):
            n = np.array([b[1] - a[1], a[0] - b[0]])
            n /= np.linalg.norm(n)
            if np.dot(centre - a, n) < 0:  # make the normal point inwards
                n = -n
            sd = np.minimum(sd, (xs - a[0]) * n[0] + (ys - a[1]) * n[1])
    return np.clip(sd + 0.5, 0.0, 1.0)


def polygon_signed_distance(pts: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Signed distance (> 0 inside) from points (xs, ys) to a simple polygon (K, 2), convex or not:
    the distance to the nearest edge, with the sign of the even-odd rule."""
    dist = np.full(xs.shape, np.inf)
    inside = np.zeros(xs.shape, dtype=bool)
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        e = b - a
        u = np.clip(((xs - a[0]) * e[0] + (ys - a[1]) * e[1]) / (e @ e), 0.0, 1.0)  # nearest point a + u e
        dist = np.minimum(dist, np.hypot(xs - a[0] - u * e[0], ys - a[1] - u * e[1]))
        crosses = (a[1] > ys) != (b[1] > ys)  # a ray from the point to the right can cross this edge
        x_cross = a[0] + (ys - a[1]) * e[0] / np.where(crosses, e[1], 1.0)
        inside ^= crosses & (xs < x_cross)
    return np.where(inside, dist, -dist)


def read_as_membership(t: np.ndarray) -> np.ndarray:
    """The noise floor: within NOISE_FLOOR of 0 or 1 a membership is 0 or 1, in between it is stretched. Applied to
    the image's membership and to the ideal shape's coverage alike, so a clean drawing still matches its ideal."""
    return np.clip((t - NOISE_FLOOR) / (1.0 - 2.0 * NOISE_FLOOR), 0.0, 1.0)


def soft_iou(t: np.ndarray, c: np.ndarray) -> float:
    return float(np.minimum(t, c).sum() / max(np.maximum(t, c).sum(), 1e-9))


@dataclass
class Fit:
    kind: str
    iou: float
    cx: float
    cy: float
    r: float
    angle: float


def fit_shape(t: np.ndarray, kind: str) -> Fit:
    """The ideal `kind` that best overlaps the soft mask t (H, W): centroid, area, angular moments, refined."""
    h, w = t.shape
    area = t.sum()
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = (t * xs).sum() / area, (t * ys).sum() / area
    r0 = float(np.sqrt(area / UNIT_AREA[kind]))
    angles = [0.0]
    if kind in _SYMMETRY:
        k = _SYMMETRY[kind]
        dx, dy = xs - cx, -(ys - cy)  # y up, so angles turn counter-clockwise as in `shape_polygon`
        m = (t * (dx**2 + dy**2) * np.exp(1j * k * np.arctan2(dy, dx))).sum()
        # the ideal shape at angle 0 has a corner at 45 deg (square) or 90 deg (triangle's apex)
        zero = np.pi / 4 if kind == "square" else np.pi / 2
        base = (np.angle(m) - k * zero) / k
        candidates = [base + 2 * np.pi * j / k for j in range(k if kind == "triangle" else 1)]
        angles = [a + d for a in candidates for d in np.radians([-4, 0, 4])]
    best = Fit(kind, -1.0, cx, cy, r0, 0.0)
    for a in angles:
        for s in (0.97, 1.0, 1.03):
            iou = soft_iou(t, read_as_membership(coverage(kind, h, w, cx, cy, r0 * s, a)))
            if iou > best.iou:
                best = Fit(kind, iou, float(cx), float(cy), r0 * s, float(a))
    return best


# ----------------------------------------------------------------------------------------------
# Inspection and verdict
# ----------------------------------------------------------------------------------------------


@dataclass
class Inspection:
    """What the judge measured in one image."""

    found: bool  # a single shape on a background
    shape_fraction: float = 0.0
    kind: str | None = None
    iou: float = 0.0  # of the best-fitting kind
    ious: dict[str, float] = field(default_factory=dict)
    colour: str | None = None
    colour_delta_e: float = float("inf")
    background: str | None = None
    background_delta_e: float = float("inf")
    cx: float = float("nan")  # shape centre, px
    cy: float = float("nan")
    size: float = float("nan")  # sqrt of the shape's area, px
    angle: float = float("nan")
    colours: tuple[str, ...] = tuple(COLOURS)  # the names the colours were chosen from
    shape_lab: tuple[float, float, float] | None = None  # the shape's median CIELAB colour


#: The checks of `verdict`, in the order it makes them; `Verdict.failed` names the ones an image missed.
CHECKS = ("single shape", "kind", "IoU", "shape colour", "shape colour Delta E", "background", "background Delta E")


@dataclass
class Verdict:
    faithful: bool
    reasons: list[str]  # what did not hold ([] when faithful)
    inspection: Inspection
    failed: tuple[str, ...] = ()  # the `CHECKS` behind `reasons`, one each
    iou: float = float("nan")  # the IoU the verdict compared with the threshold (nan: no single shape found)


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image)[..., :3]


def inspect(image, kinds: tuple[str, ...] = SHAPES, colours: tuple[str, ...] | None = None) -> Inspection:
    """Segment one image (PIL or uint8 (H, W, 3)), fit every kind of shape, name both colours.

    `kinds` are the shapes fitted (add "star" to consider it), `colours` the names colours are chosen from
    (None: the palette, `COLOURS`; add "magenta" to consider it). `inspect_options(caption)` gives both.
    """
    unknown = [k for k in kinds if k not in SHAPES + EXTRA_SHAPES] + [c for c in colours or () if c not in _ALL_COLOURS]
    if unknown:
        raise ValueError(
            f"The strict judge knows no {unknown}: kinds are {SHAPES + EXTRA_SHAPES}, colours {tuple(_ALL_COLOURS)}."
        )
    named = tuple(colours) if colours is not None else tuple(COLOURS)
    lab = srgb_to_lab(_as_array(image))  # (H, W, 3)
    h, w, _ = lab.shape
    border = np.zeros((h, w), dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    bg = np.median(lab[border], axis=0)
    dist = np.linalg.norm(lab - bg, axis=-1)
    if dist.max() < MIN_CONTRAST:
        name, de = name_colour(bg, colours)
        return Inspection(False, background=name, background_delta_e=de, colours=named)
    fg = np.median(lab[dist >= 0.5 * dist.max()], axis=0)
    for _ in range(5):  # k-means with k = 2, medians for robustness
        in_fg = np.linalg.norm(lab - fg, axis=-1) < np.linalg.norm(lab - bg, axis=-1)
        if in_fg.all() or not in_fg.any():
            break
        if in_fg[border].mean() > 0.5:  # the cluster that owns the border is the background
            in_fg = ~in_fg
        fg, bg = np.median(lab[in_fg], axis=0), np.median(lab[~in_fg], axis=0)
    axis = fg - bg
    contrast = float(np.linalg.norm(axis))
    if contrast < MIN_CONTRAST:
        name, de = name_colour(bg, colours)
        return Inspection(False, background=name, background_delta_e=de, colours=named)
    t = np.clip(((lab - bg) @ axis) / contrast**2, 0.0, 1.0)  # (H, W) soft membership of the shape
    # colour noise: within NOISE_FLOOR of the way from one colour to the other, a pixel is that colour (else the
    # union of the soft IoU would count faint noise over the whole background as a little bit of shape)
    t = read_as_membership(t)
    hard = t >= 0.5
    fraction = float(hard.mean())
    core_fg = ndimage.binary_erosion(hard)
    core_bg = ndimage.binary_erosion(~hard, border_value=1)
    shape_lab = np.median(lab[core_fg if core_fg.sum() >= 4 else hard], axis=0) if hard.any() else fg
    bg_lab = np.median(lab[core_bg if core_bg.sum() >= 4 else ~hard], axis=0)
    colour, colour_de = name_colour(shape_lab, colours)
    background, background_de = name_colour(bg_lab, colours)
    if not MIN_SHAPE_FRACTION <= fraction <= MAX_SHAPE_FRACTION:
        return Inspection(False, fraction, colour=colour, colour_delta_e=colour_de, background=background,
                          background_delta_e=background_de, colours=named,
                          shape_lab=tuple(float(v) for v in shape_lab))  # fmt: skip
    fits = {kind: fit_shape(t, kind) for kind in kinds}
    best = max(fits.values(), key=lambda f: f.iou)
    return Inspection(
        True, fraction, best.kind, best.iou, {k: f.iou for k, f in fits.items()}, colour, colour_de, background,
        background_de, best.cx, best.cy, float(np.sqrt(t.sum())), best.angle, named,
        tuple(float(v) for v in shape_lab),
    )  # fmt: skip


def inspect_options(caption: str | Request) -> dict:
    """The `inspect` arguments a caption needs: the new concepts it names join the kinds and colours considered,
    and so do `UNNAMED_CONCEPTS` where the caption leaves that attribute open: a magenta circle is a clean answer to
    "a circle on a blue background", a star to "a red shape" (a family trained with them draws such pictures).

    For every caption that names a palette colour and a kind, this is the default inspection, so those results are
    unchanged.
    """
    want = parse_caption(caption) if isinstance(caption, str) else caption
    kinds = SHAPES + tuple(k for k in EXTRA_SHAPES if k == want.shape or (want.shape is None and k in UNNAMED_CONCEPTS))
    extra = tuple(
        c for c in EXTRA_COLOURS
        if c in (want.colour, want.background) or (want.colour is None and c in UNNAMED_CONCEPTS)
    )  # fmt: skip
    return {"kinds": kinds, "colours": tuple(COLOURS) + extra if extra else None}


def verdict(inspection: Inspection, caption: str | Request, iou_min: float = IOU_MIN,
            delta_e_max: float = DELTA_E_MAX) -> Verdict:  # fmt: skip
    """Faithful when kind, IoU, shape colour and background colour all hold for what the caption names.

    Attributes the caption leaves unnamed must still be a clean picture: some kind fitted with IoU >=
    `iou_min`, both colours within `delta_e_max` of a palette colour.
    """
    want = parse_caption(caption) if isinstance(caption, str) else caption
    s = inspection
    _check_inspected_for(want, s)
    if not s.found:
        return Verdict(False, ["no single shape on a plain background"], s, ("single shape",))
    iou = s.ious.get(want.shape, 0.0) if want.shape else s.iou
    checks = [
        ("kind", want.shape is not None and s.kind != want.shape, f"kind {s.kind}, not {want.shape}"),
        ("IoU", iou < iou_min, f"IoU {iou:.2f} < {iou_min} with the ideal {want.shape or s.kind}"),
        ("shape colour", want.colour is not None and s.colour != want.colour, f"shape is {s.colour}, not {want.colour}"),
        ("shape colour Delta E", s.colour_delta_e > delta_e_max,
         f"shape colour Delta E {s.colour_delta_e:.0f} > {delta_e_max} from {s.colour}"),
        ("background", want.background is not None and s.background != want.background,
         f"background is {s.background}, not {want.background}"),
        ("background Delta E", s.background_delta_e > delta_e_max,
         f"background Delta E {s.background_delta_e:.0f} > {delta_e_max} from {s.background}"),
    ]  # fmt: skip
    missed = [(name, reason) for name, failed, reason in checks if failed]
    return Verdict(not missed, [r for _, r in missed], s, tuple(name for name, _ in missed), iou)


def _check_inspected_for(want: Request, s: Inspection) -> None:
    """A caption naming a new concept needs an inspection that considered it; say how to get one."""
    missing = [k for k in EXTRA_SHAPES if k == want.shape and s.found and k not in s.ious]
    missing += [c for c in EXTRA_COLOURS if c in (want.colour, want.background) and c not in s.colours]
    if missing:
        raise ValueError(
            f"The caption names {', '.join(missing)}, but the inspection did not consider it: inspect with "
            "`inspect(image, **inspect_options(caption))`, or call `judge(image, caption)` which does."
        )


def judge(image, caption: str) -> bool:
    """True when `image` is faithful to `caption` (see `verdict`)."""
    return verdict(inspect(image, **inspect_options(caption)), caption).faithful


def judge_many(images, captions: list[str]) -> list[Verdict]:
    """A `Verdict` per (image, caption); `images` is a list of PIL images or a uint8 array (N, H, W, 3)."""
    return [verdict(inspect(im, **inspect_options(c)), c) for im, c in zip(images, captions)]


# ----------------------------------------------------------------------------------------------
# Wrong pictures, for calibration: blobs that are none of the three shapes
# ----------------------------------------------------------------------------------------------

BLOB_KINDS = ("lobes", "pinched", "ellipse", "wobbly")


def draw_blob(colour: str, background: str, rng: np.random.Generator, size: int = V2_IMAGE_SIZE,
              kind: str | None = None) -> Image.Image:  # fmt: skip
    """A blob in the palette's colours that a lenient judge might take for a shape.

    lobes: four overlapping discs (the "four-lobed blob" of the first family); pinched: a square
    whose sides bow inwards; ellipse: aspect ratio 1.6-2.2; wobbly: a disc whose radius ripples.
    """
    kind = kind or BLOB_KINDS[int(rng.integers(len(BLOB_KINDS)))]
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), _jitter(COLOURS[background], rng))
    pen = ImageDraw.Draw(img)
    fill = _jitter(COLOURS[colour], rng)
    r = rng.uniform(0.2, 0.28) * size
    cx, cy = rng.uniform(0.4 * size, 0.6 * size, size=2)
    a0 = rng.uniform(0, 2 * np.pi)
    k = SUPERSAMPLE
    if kind == "lobes":
        d, lr = 0.45 * r, 0.6 * r
        for j in range(4):
            ox, oy = d * np.cos(a0 + j * np.pi / 2), d * np.sin(a0 + j * np.pi / 2)
            pen.ellipse([(cx + ox - lr) * k, (cy + oy - lr) * k, (cx + ox + lr) * k, (cy + oy + lr) * k], fill=fill)
    else:
        phi = np.linspace(0, 2 * np.pi, 200, endpoint=False)
        if kind == "pinched":  # radius of a square (1/max(|cos|,|sin|)) pulled in at the side midpoints
            rho = 0.85 * r / np.maximum(np.abs(np.cos(phi)), np.abs(np.sin(phi)))
            rho *= 1 - rng.uniform(0.2, 0.3) * (1 - np.abs(np.sin(2 * phi)))  # corners stay, sides bow in
        elif kind == "ellipse":
            aspect = rng.uniform(1.6, 2.2)
            a, b = r * aspect**0.5, r / aspect**0.5
            rho = a * b / np.hypot(b * np.cos(phi), a * np.sin(phi))
        elif kind == "wobbly":
            rho = r * (1 + rng.uniform(0.2, 0.35) * np.sin(int(rng.integers(2, 6)) * phi + rng.uniform(0, 6.3)))
        else:
            raise ValueError(f"Unknown blob kind {kind!r}; use one of {BLOB_KINDS}.")
        pts = [((cx + p * np.cos(f + a0)) * k, (cy + p * np.sin(f + a0)) * k) for p, f in zip(rho, phi)]
        pen.polygon(pts, fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def _add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = NOISE_SIGMA) -> np.ndarray:
    """The image with Gaussian pixel noise of `sigma` (0-255 scale): what a generated picture has and a drawn one lacks."""
    return (
        np.clip(np.asarray(image, dtype=float) + rng.normal(0.0, sigma, np.shape(image)), 0, 255)
        .round()
        .astype(np.uint8)
    )


def calibrate(n: int = 600, seed: int = 2024, size: int = V2_IMAGE_SIZE) -> dict[str, float]:
    """Pass rate on training images and fail rates on deliberately wrong ones (n images each).

    - train: fresh second-generation images of all 90 combinations, judged against their own caption
      in a random form (partial captions included): must pass.
    - wrong kind / wrong colour / wrong background / swapped colours: the same images judged against a
      caption that names something else: must fail.
    - blob: `draw_blob` pictures judged against a caption naming a shape and the blob's colours: must fail.
    - train noisy / blob noisy: the same with Gaussian pixel noise of `NOISE_SIGMA` (generated pictures are never
      flat): training images must still pass, blobs still fail. `blob_iou_max`: the best IoU any blob reached.
    """
    rng = np.random.default_rng(seed)
    data = make_dataset_v2(n, seed=seed, combos=all_combos(), size=size)
    inspections = [inspect(im) for im in data.images]
    passed = [verdict(s, c).faithful for s, c in zip(inspections, data.captions)]
    wrong = {"wrong kind": [], "wrong colour": [], "wrong background": [], "swapped colours": []}
    for s, c in zip(inspections, data.combos):
        other_shape = [k for k in SHAPES if k != c.shape][int(rng.integers(2))]
        other_colour = [k for k in COLOURS if k not in (c.colour, c.background)][int(rng.integers(4))]
        wrong["wrong kind"].append(verdict(s, Combo(other_shape, c.colour, c.background).caption()).faithful)
        wrong["wrong colour"].append(verdict(s, Combo(c.shape, other_colour, c.background).caption()).faithful)
        wrong["wrong background"].append(verdict(s, Combo(c.shape, c.colour, other_colour).caption()).faithful)
        wrong["swapped colours"].append(verdict(s, Combo(c.shape, c.background, c.colour).caption()).faithful)
    blobs, noisy_blobs, blob_ious = [], [], []
    by_kind: dict[str, list[bool]] = {k: [] for k in BLOB_KINDS}
    combos = all_combos()
    for i in range(n):
        c = combos[int(rng.integers(len(combos)))]
        kind = BLOB_KINDS[i % len(BLOB_KINDS)]
        blob = np.asarray(draw_blob(c.colour, c.background, rng, size, kind))
        ok = judge(blob, c.caption())
        noisy_blobs.append(judge(_add_noise(blob, rng), c.caption()))
        blob_ious.append(inspect(blob).ious.get(parse_caption(c.caption()).shape, 0.0))
        blobs.append(ok)
        by_kind[kind].append(ok)
    result = {"n": n, "train_pass": float(np.mean(passed))}
    result |= {f"{k}_fail": 1.0 - float(np.mean(v)) for k, v in wrong.items()}
    result["blob_fail"] = 1.0 - float(np.mean(blobs))
    result["blob_noisy_fail"] = 1.0 - float(np.mean(noisy_blobs))
    result["blob_iou_max"] = float(np.max(blob_ious))
    noisy = [judge(_add_noise(im, rng), c) for im, c in zip(data.images, data.captions)]
    result["train_noisy_pass"] = float(np.mean(noisy))
    result |= {f"blob_{k}_fail": 1.0 - float(np.mean(v)) for k, v in by_kind.items()}
    result["train_iou_mean"] = float(np.mean([s.iou for s in inspections]))
    result["train_delta_e_median"] = float(np.median([s.colour_delta_e for s in inspections]))
    return result


def calibrate_new_concepts(n: int = 300, seed: int = 2025, size: int = V2_IMAGE_SIZE) -> dict[str, float]:
    """Pass and fail rates for the new concepts (n images of each), drawn as the family of `size` draws them.

    For the star and each colour c of `EXTRA_COLOURS` (magenta, orange):

    - star_pass / {c}_pass: stars and c-coloured shapes judged against their own caption: must pass.
    - shape_as_star_fail: circles, squares and triangles judged as a star of their colours: must fail.
    - star_as_shape_fail: stars judged as a circle, square or triangle: must fail.
    - palette_as_{c}_fail (red_as_{c}_fail for red alone): shapes in a palette colour judged as c: must fail.
    - {c}_as_palette_fail: c-coloured shapes judged as one of the two palette colours nearest to c: must fail.
    """
    rng = np.random.default_rng(seed)
    ok: dict[str, list[bool]] = {"star": [], "shape_as_star": [], "star_as_shape": []}
    stars, plain = concept_combos("star"), all_combos()
    for i in range(n):
        c = stars[i % len(stars)]
        image = draw_for_size(c, rng, size)
        ok["star"].append(judge(image, c.caption()))
        ok["star_as_shape"].append(judge(image, Combo(SHAPES[i % len(SHAPES)], c.colour, c.background).caption()))
        c = plain[i % len(plain)]
        image = draw_for_size(c, rng, size)
        ok["shape_as_star"].append(judge(image, Combo("star", c.colour, c.background).caption()))
    for colour in EXTRA_COLOURS:
        distance = np.linalg.norm(PALETTE_LAB - _lab_of((colour,))[0], axis=1)
        nearest = [_PALETTE_NAMES[j] for j in np.argsort(distance)[:2]]
        ok |= {colour: [], f"palette_as_{colour}": [], f"red_as_{colour}": [], f"{colour}_as_palette": []}
        combos = concept_combos(colour)
        for i in range(n):
            c = combos[i % len(combos)]
            image = draw_for_size(c, rng, size)
            ok[colour].append(judge(image, c.caption()))
            other = [k for k in nearest if k != c.background][i % 2 if c.background not in nearest else 0]
            ok[f"{colour}_as_palette"].append(judge(image, Combo(c.shape, other, c.background).caption()))
            c = plain[i % len(plain)]
            if c.background == colour:
                continue
            as_colour = judge(draw_for_size(c, rng, size), Combo(c.shape, colour, c.background).caption())
            ok[f"palette_as_{colour}"].append(as_colour)
            if c.colour == "red":
                ok[f"red_as_{colour}"].append(as_colour)
    passes = ("star", *EXTRA_COLOURS)
    result: dict[str, float] = {"n": n, "size": size}
    result |= {f"{k}_pass": float(np.mean(ok[k])) for k in passes}
    result |= {f"{k}_fail": 1.0 - float(np.mean(v)) for k, v in ok.items() if k not in passes}
    return result
