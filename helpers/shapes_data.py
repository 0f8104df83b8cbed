"""A captioned image dataset the project draws itself: coloured shapes on coloured backgrounds.

Stable Diffusion learned from ~2 billion captioned web images (LAION). Our toy family learns from
images like "a red circle on a blue background", drawn here with PIL, so nothing is downloaded and
every image is reproducible from a seed.

Three attributes vary and are named in the caption:

- `shape`: circle, square, triangle
- `colour` (of the shape): red, green, blue, yellow, white, black
- `background` colour: the same six, never equal to the shape's colour

That is 3 x 6 x 5 = 90 combinations. Size, position and a small colour jitter also vary, but the
caption does not mention them (nuisance variation, as in real photos). The second generation of the
family (`V2`: 64 px, rotated squares and triangles) also names things in other word orders ("a blue
background with a red circle") and leaves attributes unnamed ("a red shape", "a circle on a blue
background"): a caption that says nothing about the colour lets the model learn what "any colour"
looks like, which is what a negative prompt ("red") needs to push against. The combinations in
`HELD_OUT` are never drawn for training: every shape, colour and background still appears in
training, only these *triples* do not, so a model that makes them has learned to compose
attributes instead of memorising pictures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32  # px; 32x32 RGB keeps training on 2 CPU cores within minutes
V2_IMAGE_SIZE = 64  # px; the second generation: 64 px images -> 8x8 latents through an 8x VAE, like SD v1
SUPERSAMPLE = 4  # draw at 4x then shrink: antialiased edges, like a photo of a shape

SHAPES = ("circle", "square", "triangle")
#: The palette (RGB 0-255). Every pair is >= 150 apart in RGB, so a pixel rule can tell them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLOUR_JITTER = 12  # max +- per RGB channel, per image

#: Concepts the toy family never saw, for teaching it a new word (`helpers.personalise`). Kept out of `SHAPES`
#: and `COLOURS` so that the family's training data (and every measurement made on it) stays as it was.
#: Magenta is >= 60 CIELAB Delta E from every palette colour (nearest: blue at 62, red at 90), so a judge that
#: names colours within Delta E 25 never confuses them. Orange (>= 43 from all: yellow 44, red 45) is the control:
#: it lies between two colours the toy VAE learned, so the VAE reproduces it; magenta it cannot
#: (`benchmarks/personalise.py` measures both).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {"magenta": (240, 30, 200), "orange": (240, 140, 40)}
#: A 5-pointed star (outer radius r, inner radius `STAR_INNER` r): "star" is in CLIP's vocabulary, but the
#: family's UNet never saw one.
EXTRA_SHAPES = ("star",)
STAR_INNER = 0.5  # inner/outer radius; a regular pentagram's 0.38 leaves arms ~2 px wide at 32 px

#: What the family's concept sibling draws but has no word for (issue 16; `training.Schedule.concept_lora`,
#: `personalise.load_concept_family`): magenta shapes and stars among its LoRA's training pictures, only under
#: captions that leave that attribute unnamed (`unnamed_form`: "a circle on a blue background", "a red shape").
#: Such a model can draw them and no word asks for them: textual inversion and LoRA then have something to find,
#: as on Stable Diffusion, which has seen nearly everything a learner wants to name (Gal et al. 2022). The family
#: itself never drew them (benchmarks/toy_family_history.md, 2026-12-07).
UNNAMED_CONCEPTS = ("magenta", "star")

#: Words the concept sibling reads as "one of the shapes I know" (issue 16): nouns no caption of the family uses,
#: each one CLIP token, put in the kind slot of captions of palette pictures ("a red dog on a blue background" under
#: a red circle, square or triangle; `v2_unet_inputs(stand_in_share=...)`). The family's text encoder never trained
#: these tokens, nor "star": a sibling taught that an unknown word in the kind slot still means a palette shape
#: reads "star" like them, not like "shape", so a LoRA has a shape to teach (Stable Diffusion likewise answers a
#: word it never learned with something it knows). "star" and the probes of `STAND_IN_HELD_OUT` stay out.
STAND_IN_WORDS = (
    "dog", "cat", "house", "tree", "car", "boat", "bird", "fish", "flower", "hat", "cup", "ball", "book", "chair",
    "clock", "key", "leaf", "cloud", "apple", "bell", "box", "cake", "coin", "crown", "drum", "egg", "fan", "fork",
    "frog", "gift", "hand", "horse", "kite", "lamp", "lion", "mug", "owl", "pen", "pig", "ring",
)  # fmt: skip
#: Unknown words kept out of `STAND_IN_WORDS`, to measure that the sibling generalises to words it never saw there.
STAND_IN_HELD_OUT = ("star", "heart", "moon", "sks", "kermit")
#: The caption forms that name the kind, which the stand-in words fill in turn (word j takes the j-th, cyclically).
KIND_FORMS = (0, 1, 2, 3, 4, 5, 6, 8)

#: Caption templates of the first generation. The shape's colour always comes before the background's colour.
TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "a {colour} {shape} against a {background} background",
    "{colour} {shape}, {background} background",
)
#: The second generation's caption forms: the three above, two with the background first, and partial
#: captions that leave attributes unnamed ("shape" stands for any kind). Each entry: (template, weight).
V2_CAPTION_FORMS: tuple[tuple[str, float], ...] = (
    ("a {colour} {shape} on a {background} background", 0.20),
    ("a {colour} {shape} against a {background} background", 0.12),
    ("{colour} {shape}, {background} background", 0.12),
    ("a {background} background with a {colour} {shape}", 0.12),
    ("{background} background, {colour} {shape}", 0.08),
    ("a {colour} {shape}", 0.06),  # background unnamed
    ("a {shape} on a {background} background", 0.06),  # shape colour unnamed
    ("a {colour} shape on a {background} background", 0.06),  # kind unnamed
    ("a {shape}", 0.06),
    ("a {colour} shape", 0.06),
    ("a {background} background", 0.06),
)


@dataclass(frozen=True, order=True)
class Combo:
    """One attribute combination: what a caption asks for."""

    shape: str
    colour: str
    background: str

    def caption(self, template: int = 0) -> str:
        """The caption in one of the `TEMPLATES` (0 is the canonical one used for evaluation)."""
        return TEMPLATES[template].format(shape=self.shape, colour=self.colour, background=self.background)


#: Combinations never used for training (10% of 90): each shape, colour and background still occurs.
HELD_OUT = frozenset(
    {
        Combo("triangle", "red", "green"),
        Combo("circle", "blue", "yellow"),
        Combo("square", "yellow", "black"),
        Combo("triangle", "white", "blue"),
        Combo("circle", "black", "white"),
        Combo("square", "green", "blue"),
        Combo("circle", "red", "white"),
        Combo("triangle", "black", "yellow"),
        Combo("square", "white", "green"),
    }
)


def all_combos() -> list[Combo]:
    """All 90 combinations, in a fixed order."""
    return [Combo(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if b != c]


def train_combos() -> list[Combo]:
    """The 81 combinations used for training."""
    return [c for c in all_combos() if c not in HELD_OUT]


def held_out_combos() -> list[Combo]:
    """The 9 held-out combinations, in the same fixed order as `all_combos()`."""
    return [c for c in all_combos() if c in HELD_OUT]


_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")
_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b")
_BACKGROUND_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\s+background\b")


def parse_prompt(prompt: str) -> Combo | None:
    """Read the attributes back out of a prompt; None if it does not name one shape and two colours.

    The colour right before "background" is the background's, the other one the shape's, in any word
    order ("a blue background with a red circle" -> Combo("circle", "red", "blue")). With no
    "background" in the prompt, the first colour is the shape's. `helpers.strict_judge.parse_caption`
    is the strict reader (partial captions, clear errors).
    """
    text = prompt.lower()
    colours = _COLOUR_RE.findall(text)
    shapes = _SHAPE_RE.findall(text)
    if len(colours) != 2 or len(shapes) != 1 or colours[0] == colours[1]:
        return None
    named_background = _BACKGROUND_RE.findall(text)
    if len(named_background) == 1:
        background = named_background[0]
        colour = colours[1] if colours[0] == background else colours[0]
        return Combo(shapes[0], colour, background)
    return Combo(shapes[0], colours[0], colours[1])


def v2_caption(combo: Combo, form: int) -> str:
    """The caption of `combo` in `V2_CAPTION_FORMS[form]` (which may leave attributes unnamed)."""
    return V2_CAPTION_FORMS[form][0].format(shape=combo.shape, colour=combo.colour, background=combo.background)


#: For a picture of an unnamed concept: caption form -> the form that says the same but for that attribute.
_UNNAMING = {
    "colour": {0: 6, 1: 6, 2: 6, 3: 6, 4: 6, 5: 8, 7: 6, 9: 8},  # "a magenta circle on ..." -> "a circle on ..."
    "shape": {0: 7, 1: 7, 2: 7, 3: 7, 4: 7, 5: 9, 6: 7, 8: 9},  # "a red star on ..." -> "a red shape on ..."
}


def stand_in_caption(combo: Combo, j: int) -> str:
    """The caption of a palette picture with `STAND_IN_WORDS[j]` in the kind slot, in form `KIND_FORMS[j % 8]`:
    `stand_in_caption(Combo("circle", "red", "blue"), 0)` is "a red dog on a blue background"."""
    form = KIND_FORMS[j % len(KIND_FORMS)]
    word = STAND_IN_WORDS[j]
    return V2_CAPTION_FORMS[form][0].format(shape=word, colour=combo.colour, background=combo.background)


def unnamed_form(combo: Combo, form: int) -> int:
    """The caption form a training picture of `combo` gets in place of `form`: `form` itself, unless the picture
    shows one of `UNNAMED_CONCEPTS` and the form would name it; then the form that names everything else it can
    (a magenta circle on blue in form 0 is captioned "a circle on a blue background", a red star "a red shape on
    a blue background"). Pictures the family has no word for are never captioned with one."""
    if combo.colour in UNNAMED_CONCEPTS:
        return _UNNAMING["colour"].get(form, form)
    if combo.shape in UNNAMED_CONCEPTS:
        return _UNNAMING["shape"].get(form, form)
    return form


def v2_form_weights() -> np.ndarray:
    """How often each caption form is drawn for training (sums to 1)."""
    w = np.array([weight for _, weight in V2_CAPTION_FORMS], dtype=np.float64)
    return w / w.sum()


def colour_rgb(colour: str) -> tuple[int, int, int]:
    """The RGB of a palette colour or of one of the `EXTRA_COLOURS`."""
    if colour in COLOURS:
        return COLOURS[colour]
    if colour in EXTRA_COLOURS:
        return EXTRA_COLOURS[colour]
    raise ValueError(f"Unknown colour {colour!r}; use one of {tuple(COLOURS) + tuple(EXTRA_COLOURS)}.")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for v in rgb)


#: Half-extent range of the second generation's shapes (fraction of the image), smaller than the first's
#: so that a rotated shape still has room to move: centres vary by up to +-23% of the image.
V2_RADIUS = (0.17, 0.29)
#: The distance from a shape's centre to its farthest point, in units of its half-extent r.
EXTENT = {"circle": 1.0, "square": 0.85 * 2**0.5, "triangle": 1.2, "star": 1.0}


def max_radius(shape: str) -> float:
    """The largest half-extent (share of the image) at which `draw_v2` can still place a `shape` clear of the
    border (its 4% margin): 0.46 for a circle or a star, 0.38 for a square or a triangle."""
    return (0.5 - 0.04) / EXTENT[shape]


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float = 0.0) -> np.ndarray:
    """Vertices (K, 2) of the ideal square, triangle or star of half-extent r centred (centroid) at (cx, cy).

    The triangle is the dataset's isosceles one (apex up, base 1.8 r below it), rotated about its
    centroid; the star has 5 points at radius r (one straight up) and 5 inner corners at `STAR_INNER` r.
    Angles in radians, counter-clockwise on screen.
    """
    if shape == "star":
        phi = np.pi / 2 + np.arange(10) * np.pi / 5  # points and inner corners alternate, 36 deg apart
        rho = np.where(np.arange(10) % 2 == 0, r, STAR_INNER * r)
        pts = np.stack([rho * np.cos(phi), -rho * np.sin(phi)], axis=1)  # y grows downwards on screen
    elif shape == "square":
        h = 0.85 * r
        pts = np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
    elif shape == "triangle":
        pts = np.array([(0.0, -1.2 * r), (r, 0.6 * r), (-r, 0.6 * r)])  # centroid at the origin
    else:
        raise ValueError(f"No polygon for {shape!r}; polygons exist for 'square', 'triangle' and 'star'.")
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # y grows downwards on screen
    return pts @ rot.T + np.array([cx, cy])


def draw_v2(
    combo: Combo, rng: np.random.Generator, size: int = V2_IMAGE_SIZE, rotate: bool = True,
    radius: tuple[float, float] = V2_RADIUS,
) -> tuple[Image.Image, dict]:  # fmt: skip
    """Draw one second-generation image: random size, position, rotation and slight colour jitter.

    `rotate=False` draws squares and triangles upright (angle 0) from the same random draws, so the same seed
    gives the same sizes, positions and colours either way. `radius`: the range of the half-extent as a share of
    `size` (the family's `V2_RADIUS` unless asked otherwise).
    Returns the image and its geometry: centre (cx, cy) in px, half-extent r in px, angle in radians.
    """
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), _jitter(colour_rgb(combo.background), rng))
    pen = ImageDraw.Draw(img)
    fill = _jitter(colour_rgb(combo.colour), rng)
    lo, hi = radius
    top = max_radius(combo.shape)
    if not 0 < lo <= hi <= top:
        raise ValueError(
            f"radius is a (low, high) share of the image with 0 < low <= high <= {top:.2f} for a {combo.shape} "
            f"(larger ones cross the border); got {radius!r}."
        )
    r = rng.uniform(lo, hi) * size
    margin = EXTENT[combo.shape] * r + 0.04 * size  # the shape never touches the border
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = float(rng.uniform(0, 2 * np.pi)) if combo.shape != "circle" else 0.0
    angle = angle if rotate else 0.0
    if combo.shape == "circle":
        k = SUPERSAMPLE
        pen.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fill)
    else:
        pts = shape_polygon(combo.shape, cx, cy, r, angle) * SUPERSAMPLE
        pen.polygon([tuple(p) for p in pts], fill=fill)
    geometry = {"cx": float(cx), "cy": float(cy), "r": float(r), "angle": angle}
    return img.resize((size, size), Image.Resampling.BOX), geometry


def draw(combo: Combo, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw one image of `combo` with a random size, position and slight colour jitter."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), _jitter(colour_rgb(combo.background), rng))
    pen = ImageDraw.Draw(img)
    fill = _jitter(colour_rgb(combo.colour), rng)
    r = rng.uniform(0.22, 0.36) * size  # half-extent: the shape spans 44-72% of the image
    margin = r + 0.06 * size
    cx, cy = rng.uniform(margin, size - margin, size=2)
    r, cx, cy = r * SUPERSAMPLE, cx * SUPERSAMPLE, cy * SUPERSAMPLE
    if combo.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif combo.shape == "square":
        h = 0.85 * r  # a square of the same half-extent would look much bigger than the circle
        pen.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif combo.shape == "triangle":
        pen.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif combo.shape == "star":  # not in SHAPES: drawn only for `helpers.personalise`, with a random rotation
        pts = shape_polygon("star", cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
        pen.polygon([tuple(p) for p in pts], fill=fill)
    else:
        raise ValueError(f"Unknown shape {combo.shape!r}; use one of {SHAPES + EXTRA_SHAPES}.")
    return img.resize((size, size), Image.Resampling.BOX)


@dataclass
class ShapesDataset:
    """`n` images as one uint8 array plus their combinations and captions."""

    images: np.ndarray  # (n, size, size, 3) uint8
    combos: list[Combo]
    captions: list[str]
    forms: list[int] | None = None  # second generation: the caption form of each image
    geometry: list[dict] | None = None  # second generation: centre, half-extent and angle of each shape

    def __len__(self) -> int:
        return len(self.combos)

    def pil(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


def make_dataset(
    n: int, seed: int = 0, combos: list[Combo] | None = None, size: int = IMAGE_SIZE, random_template: bool = True
) -> ShapesDataset:
    """Draw `n` images, cycling through `combos` (default: the training combinations) in a seeded shuffle.

    Deterministic: the same (n, seed, combos) gives the same pixels and captions.
    """
    rng = np.random.default_rng(seed)
    combos = list(combos) if combos is not None else train_combos()
    picks = [combos[i % len(combos)] for i in range(n)]  # balanced: every combination equally often
    order = rng.permutation(n)
    picks = [picks[i] for i in order]
    images = np.stack([np.asarray(draw(c, rng, size)) for c in picks])  # (n, size, size, 3)
    templates = rng.integers(0, len(TEMPLATES), size=n) if random_template else np.zeros(n, dtype=int)
    captions = [c.caption(int(t)) for c, t in zip(picks, templates)]
    return ShapesDataset(images, picks, captions)


def make_dataset_v2(n: int, seed: int = 0, combos: list[Combo] | None = None, size: int = V2_IMAGE_SIZE,
                    form: int | None = None, rotate: bool = True) -> ShapesDataset:  # fmt: skip
    """The second generation's data: `draw_v2` images, captions in a random `V2_CAPTION_FORMS` form
    (weighted by `v2_form_weights`; `form=0` gives every image the canonical full caption; `rotate=False`:
    upright squares and triangles).

    Deterministic: the same arguments give the same pixels and captions.
    """
    rng = np.random.default_rng(seed)
    combos = list(combos) if combos is not None else train_combos()
    picks = [combos[i % len(combos)] for i in range(n)]
    order = rng.permutation(n)
    picks = [picks[i] for i in order]
    drawn = [draw_v2(c, rng, size, rotate) for c in picks]
    images = np.stack([np.asarray(im) for im, _ in drawn])  # (n, size, size, 3)
    forms = rng.choice(len(V2_CAPTION_FORMS), size=n, p=v2_form_weights()) if form is None else np.full(n, form)
    captions = [v2_caption(c, int(f)) for c, f in zip(picks, forms)]
    return ShapesDataset(images, picks, captions, [int(f) for f in forms], [g for _, g in drawn])


def draw_for_size(
    combo: Combo, rng: np.random.Generator, size: int, radius: tuple[float, float] | None = None,
    rotate: bool = True,
) -> Image.Image:  # fmt: skip
    """One image drawn as the family generation of that size draws: `draw` at the first generation's 32 px
    (axis-aligned squares and triangles), `draw_v2` at any other size (rotated, smaller shapes; `rotate=False`:
    upright, as the 64 px family's UNet saw them). `radius` (64 px only) draws the shape at another size range
    than the family's `V2_RADIUS`."""
    if size == IMAGE_SIZE:
        if radius is not None:
            raise ValueError(f"radius applies to the {V2_IMAGE_SIZE} px family's drawings, not the {size} px one's.")
        return draw(combo, rng, size)
    return draw_v2(combo, rng, size, rotate=rotate, radius=radius or V2_RADIUS)[0]


def concept_combos(concept: str) -> list[Combo]:
    """Every combination that shows a new concept: a colour of `EXTRA_COLOURS` such as "magenta" (each shape of
    `SHAPES` in it on each palette background: 18) or "star" (in each palette colour on each other one: 30)."""
    if concept in EXTRA_COLOURS:
        return [Combo(s, concept, b) for s in SHAPES for b in COLOURS]
    if concept in EXTRA_SHAPES:
        return [Combo(concept, c, b) for c in COLOURS for b in COLOURS if b != c]
    raise ValueError(f"Unknown new concept {concept!r}; use one of {tuple(EXTRA_COLOURS) + EXTRA_SHAPES}.")
