"""The real CLIP tokenizer, offline: OpenAI's byte-level BPE, read from the files the models ship.

Stable Diffusion v1 conditions on CLIP ViT-L/14's text tower, whose tokenizer is OpenAI's byte-level
BPE (Radford et al. 2021, https://arxiv.org/abs/2103.00020). Every CLIP folder on the Hub carries it as
two files, and so do ours (`models/toy-sd/tokenizer/`, `models/toy-clip/`, committed and in the wheel):

- `merges.txt`: 48,894 merge rules, most frequent first ("t h" -> "th", ...);
- `vocab.json`: the 49,408 token ids, which follow from the merges the way OpenAI's `simple_tokenizer.py`
  builds them (checked by `vocab_from_merges` and tests/test_tokenizer.py):

    vocab = 256 byte symbols + the same 256 with "</w>" + the 48,894 merges joined
            + <|startoftext|> (49406) + <|endoftext|> (49407)          -> 49,408 entries

Nothing is downloaded: transformers' `CLIPTokenizer` reads the folder like any Hub tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .paths import MODELS_DIR

NUM_MERGES = 49152 - 256 - 2  # 48,894: vocab 49,408 = 2*256 byte symbols + merges + 2 specials
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77  # CLIP's context length: prompts are padded/truncated to 77 tokens
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")

#: The shipped tokenizer folder (the toy SD's own, identical to the toy CLIP's and to SD v1's vocabulary).
TOKENIZER_DIR = MODELS_DIR / "toy-sd" / "tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable-unicode map (the same table GPT-2 uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:  # bytes that are not printable get shifted into unused code points
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_merges(folder: Path | str = TOKENIZER_DIR) -> list[str]:
    """The merge rules of `merges.txt` (its first line is a `#version` header)."""
    lines = (Path(folder) / "merges.txt").read_text(encoding="utf-8").split("\n")
    return [line for line in lines[1:] if line]


def vocab_from_merges(merges: list[str]) -> dict[str, int]:
    """CLIP's token ids, derived from the merges as OpenAI's `simple_tokenizer.py` does."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]  # "</w>" marks the end of a word
    vocab += ["".join(m.split()) for m in merges[:NUM_MERGES]]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}


def clip_tokenizer_dir() -> Path:
    """The folder holding the offline CLIP tokenizer files."""
    missing = [f for f in TOKENIZER_FILES if not (TOKENIZER_DIR / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"The CLIP tokenizer files {missing} are missing from {TOKENIZER_DIR.name!r} (models/toy-sd/tokenizer). "
            "They are committed with the project and shipped in its wheel: restore them with "
            "`git checkout -- models/` or reinstall the package."
        )
    return TOKENIZER_DIR


def write_tokenizer_files(out_dir: Path | str) -> Path:
    """Copy the tokenizer files into `out_dir` (a model folder being saved), so it loads on its own."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = clip_tokenizer_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out_dir / name)
    return out_dir


def tokenizer_config(folder: Path | str = TOKENIZER_DIR) -> dict:
    """The tokenizer's settings: max length 77, pad = <|endoftext|> like SD v1, lower-casing."""
    return json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))


def load_clip_tokenizer(fast: bool = False):
    """`CLIPTokenizer` (or the fast one) with the real 49,408-token vocabulary, offline."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    cls = CLIPTokenizerFast if fast else CLIPTokenizer
    return cls.from_pretrained(clip_tokenizer_dir())
