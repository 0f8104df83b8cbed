"""A captioned image dataset the project draws itself: coloured shapes on coloured backgrounds.

Stable Diffusion learned from ~2 billion captioned web images (LAION). Our toy family learns from
images like "a red circle on a blue background", drawn here with PIL, so nothing is downloaded and
every image is reproducible from a seed.

Three attributes vary and are named in the caption:

- `shape`: circle, square, triangle
- `colour` (of the shape): red, green, blue, yellow, white, black
- `background` colour: the same six, never equal to the shape's colour

That is 3 x 6 x 5 = 90 combinations. Size, position and a small colour jitter also vary, but the
caption does not mention them (nuisance variation, as in real photos). The combinations in
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

#: Caption templates. The shape's colour always comes before the background's colour.
TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "a {colour} {shape} against a {background} background",
    "{colour} {shape}, {background} background",
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


def parse_prompt(prompt: str) -> Combo | None:
    """Read the attributes back out of a prompt; None if it does not name one shape and two colours.

    The first colour word is the shape's, the second the background's ("a red circle on a blue
    background" -> Combo("circle", "red", "blue")), which holds for every template.
    """
    text = prompt.lower()
    colours = _COLOUR_RE.findall(text)
    shapes = _SHAPE_RE.findall(text)
    if len(colours) != 2 or len(shapes) != 1 or colours[0] == colours[1]:
        return None
    return Combo(shapes[0], colours[0], colours[1])


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for v in rgb)


def draw(combo: Combo, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw one image of `combo` with a random size, position and slight colour jitter."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), _jitter(COLOURS[combo.background], rng))
    pen = ImageDraw.Draw(img)
    fill = _jitter(COLOURS[combo.colour], rng)
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
    else:
        raise ValueError(f"Unknown shape {combo.shape!r}; use one of {SHAPES}.")
    return img.resize((size, size), Image.Resampling.BOX)


@dataclass
class ShapesDataset:
    """`n` images as one uint8 array plus their combinations and captions."""

    images: np.ndarray  # (n, size, size, 3) uint8
    combos: list[Combo]
    captions: list[str]

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
