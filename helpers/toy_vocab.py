"""Which words of a prompt the toy family never saw, and a caption it does know.

The toy models learned from captions such as "a red circle on a blue background" (`helpers.shapes_data`).
Their text encoder has CLIP's whole 49,408-token table, so "Kermit the Frog on the Iron Throne" tokenizes
fine, but those tokens were never trained: the picture that comes back is a guess among shapes. Stable
Diffusion has the same limit at a larger scale (it cannot draw what LAION's captions never described);
here the vocabulary is small enough to list, so we can say so instead of silently returning blobs.
"""

from __future__ import annotations

import re

from .shapes_data import COLOURS, SHAPES, TEMPLATES, V2_CAPTION_FORMS, Combo

_WORD_RE = re.compile(r"[a-z]+")
#: Function words that carry no picture: not reported even though no training caption uses them.
NEUTRAL = frozenset({"the", "an", "of", "in", "and", "is", "some", "one"})


def known_words() -> frozenset[str]:
    """Every word the training captions use (all forms, every shape and colour, plurals of shapes)."""
    words: set[str] = set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES}
    for template in TEMPLATES + tuple(t for t, _ in V2_CAPTION_FORMS):
        words |= set(_WORD_RE.findall(re.sub(r"\{\w+\}", " ", template)))
    return frozenset(words)


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` that no training caption uses, in order, each once (lower case)."""
    vocab = known_words()
    out: list[str] = []
    for w in _WORD_RE.findall(prompt.lower()):
        if w not in vocab and w not in NEUTRAL and w not in out:
            out.append(w)
    return out


def suggest_caption(prompt: str) -> str:
    """A caption the model knows, keeping whatever shape and colours the prompt does name."""
    words = _WORD_RE.findall(prompt.lower())
    shape = next((s for w in words for s in SHAPES if w in (s, s + "s")), "circle")
    named = [w for w in words if w in COLOURS]
    background = next((w for w, nxt in zip(words, words[1:] + [""]) if w in COLOURS and nxt == "background"), None)
    colour = next((c for c in named if c != background), None) or ("red" if background != "red" else "yellow")
    background = background or next(c for c in ("blue", "black", "white") if c != colour)
    return Combo(shape, colour, background).caption()


def vocabulary_message(prompt: str) -> str | None:
    """A message for `result.messages` when the prompt uses words the toy family never learned; else None.

    >>> vocabulary_message("a red circle on a blue background") is None
    True
    """
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    listed = ", ".join(f"'{w}'" for w in unknown)
    return (
        f"The offline toy model never saw {listed} in its training captions, so it cannot draw "
        f"{'it' if len(unknown) == 1 else 'them'}: it only knows {len(SHAPES)} shapes ({', '.join(SHAPES)}) "
        f"in {len(COLOURS)} colours ({', '.join(COLOURS)}) on a plain background. Try "
        f"'{suggest_caption(prompt)}', or run on a GPU with the real Stable Diffusion."
    )
