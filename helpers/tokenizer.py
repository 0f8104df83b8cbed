"""The real CLIP tokenizer, built offline from OpenAI's BPE merges file.

Stable Diffusion v1 conditions on CLIP ViT-L/14's text tower, whose tokenizer is OpenAI's byte-level
BPE (Radford et al. 2021, https://arxiv.org/abs/2103.00020). The Hub's `vocab.json`/`merges.txt`
are not reachable offline, but OpenAI's merges file `bpe_simple_vocab_16e6.txt.gz` (MIT) ships
inside the `open_clip_torch` wheel. `scripts/setup.sh` downloads that wheel with
`pip download --no-deps` (never installs it) and we derive the two files the way OpenAI's
`simple_tokenizer.py` does:

    vocab = 256 byte symbols + the same 256 with "</w>" + the first 48,894 merges joined
            + <|startoftext|> (49406) + <|endoftext|> (49407)          -> 49,408 entries
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zipfile
from pathlib import Path

from .paths import CACHE_DIR, IN_CHECKOUT

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SIZE = 1_356_917  # bytes; a different file is not the tokenizer Stable Diffusion was trained with
OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
NUM_MERGES = 49152 - 256 - 2  # 48,894: vocab 49,408 = 2*256 byte symbols + merges + 2 specials
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77  # CLIP's context length: prompts are padded/truncated to 77 tokens

TOKENIZER_DIR = CACHE_DIR / "clip-tokenizer"


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


def _check_bpe_size(size: int, where) -> None:
    if size != BPE_SIZE:
        raise ValueError(
            f"{BPE_NAME} from {where} is {size:,} bytes, not the {BPE_SIZE:,} of OpenAI's file: it is not the "
            f"tokenizer Stable Diffusion was trained with. Delete it and run `make setup` "
            f"(it downloads {OPEN_CLIP_WHEEL})."
        )


def find_bpe_file(search_dirs: list[Path] | None = None) -> Path:
    """Find the BPE merges file: extracted already, or inside a downloaded open_clip wheel."""
    extracted = TOKENIZER_DIR / BPE_NAME
    if extracted.exists():
        _check_bpe_size(extracted.stat().st_size, extracted)
        return extracted
    dirs = search_dirs or [CACHE_DIR / "wheels", CACHE_DIR]
    for d in dirs:
        for wheel in sorted(glob.glob(str(Path(d) / "open_clip_torch-*.whl"))):
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(f"open_clip/{BPE_NAME}")
            _check_bpe_size(len(data), wheel)
            extracted.parent.mkdir(parents=True, exist_ok=True)
            tmp = extracted.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, extracted)
            return extracted
    if os.environ.get("SD_TUTORIAL_FETCH_BPE") == "1" or not IN_CHECKOUT:
        # pip-installed (Colab, Gradient): fetch the wheel the way `make setup` does, once; never install it.
        import subprocess
        import sys

        wheels = CACHE_DIR / "wheels"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", OPEN_CLIP_WHEEL, "-d", str(wheels)]
        if subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0:
            return find_bpe_file([wheels])
    raise FileNotFoundError(
        f"CLIP's BPE file ({BPE_NAME}) was not found in {extracted.parent} or in an open_clip_torch "
        f"wheel under {dirs}. Run `make setup` (it runs `pip download --no-deps {OPEN_CLIP_WHEEL} "
        f"-d {CACHE_DIR / 'wheels'}`), or on a machine with the Hub use "
        "CLIPTokenizer.from_pretrained('openai/clip-vit-large-patch14')."
    )


def build_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Derive CLIP's `vocab.json` and `merges.txt` content from the gzipped merges file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]  # "</w>" marks the end of a word
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer_files(out_dir: Path, bpe_path: Path | None = None) -> Path:
    """Write a `CLIPTokenizer`-loadable folder (vocab.json, merges.txt, configs) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(bpe_path or find_bpe_file())
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",  # SD v1 pads with <|endoftext|> (id 49407)
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return out_dir


def clip_tokenizer_dir() -> Path:
    """The folder holding the offline CLIP tokenizer, built on first use."""
    if not (TOKENIZER_DIR / "vocab.json").exists():
        write_tokenizer_files(TOKENIZER_DIR)
    return TOKENIZER_DIR


def load_clip_tokenizer(fast: bool = False):
    """`CLIPTokenizer` (or the fast one) with the real 49,408-token vocabulary, offline."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    cls = CLIPTokenizerFast if fast else CLIPTokenizer
    return cls.from_pretrained(clip_tokenizer_dir())
