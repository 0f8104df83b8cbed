"""The shipped CLIP tokenizer gives exactly OpenAI's ids (the ones SD v1's text encoder was trained on)."""

from __future__ import annotations

import json

import pytest

from helpers import tokenizer as tok_mod
from helpers.paths import MODELS_DIR
from helpers.tokenizer import (
    MODEL_MAX_LENGTH,
    NUM_MERGES,
    TOKENIZER_DIR,
    VOCAB_SIZE,
    load_clip_tokenizer,
    read_merges,
    tokenizer_config,
    vocab_from_merges,
    write_tokenizer_files,
)

# From ../shared/STACK.md: checked against OpenAI's reference simple_tokenizer.py.
EXPECTED_IDS = {
    "Kermit the Frog on the Iron Throne": [49406, 40908, 518, 11438, 525, 518, 5391, 15999, 49407],
    "a photo of an astronaut riding a horse on mars": [
        49406,
        320,
        1125,
        539,
        550,
        18376,
        6765,
        320,
        4558,
        525,
        7496,
        49407,
    ],
}


@pytest.fixture(scope="module", params=[False, True], ids=["slow", "fast"])
def clip_tok(request):
    return load_clip_tokenizer(fast=request.param)


@pytest.mark.parametrize("text", list(EXPECTED_IDS))
def test_exact_openai_ids(clip_tok, text):
    assert clip_tok(text).input_ids == EXPECTED_IDS[text]


def test_vocab_specials_and_length(clip_tok):
    assert len(clip_tok) == VOCAB_SIZE == 49408
    assert clip_tok.bos_token_id == 49406
    assert clip_tok.eos_token_id == 49407
    assert clip_tok.pad_token_id == 49407  # SD v1 pads with <|endoftext|>
    assert clip_tok.model_max_length == MODEL_MAX_LENGTH == 77


def test_padding_and_truncation_to_77(clip_tok):
    padded = clip_tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77
    assert padded[:4] == [49406, 320, 2368, 49407]
    assert set(padded[4:]) == {49407}
    long_ids = clip_tok("cat " * 200, truncation=True, max_length=77).input_ids
    assert len(long_ids) == 77
    assert long_ids[0] == 49406 and long_ids[-1] == 49407


def test_slow_and_fast_agree_on_awkward_text():
    slow, fast = load_clip_tokenizer(False), load_clip_tokenizer(True)
    for text in ["Hello, WORLD!!", "  spaces   and\ttabs ", "émigré café naïve", "a 4k photo, 8-bit"]:
        assert slow(text).input_ids == fast(text).input_ids, text


def test_shipped_vocab_follows_from_the_merges():
    """vocab.json is not a second source of truth: it is OpenAI's rule applied to merges.txt."""
    merges = read_merges()
    assert len(merges) == NUM_MERGES == 48_894
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == vocab_from_merges(merges)
    assert len(vocab) == VOCAB_SIZE
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # bytes, then bytes ending a word, then merges


def test_every_shipped_model_has_the_same_tokenizer():
    for folder in (MODELS_DIR / "toy-clip", MODELS_DIR / "toy-sd" / "tokenizer"):
        for name in ("vocab.json", "merges.txt"):
            assert (folder / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), folder / name
    assert tokenizer_config()["pad_token"] == "<|endoftext|>"


def test_written_folder_loads(tmp_path):
    from transformers import CLIPTokenizer

    out = write_tokenizer_files(tmp_path / "tok")
    assert {p.name for p in out.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    tok = CLIPTokenizer.from_pretrained(out)
    text = "Kermit the Frog on the Iron Throne"
    assert tok(text).input_ids == EXPECTED_IDS[text]


def test_missing_files_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tok_mod, "TOKENIZER_DIR", tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError) as info:
        load_clip_tokenizer()
    msg = str(info.value)
    assert "git checkout -- models/" in msg and "vocab.json" in msg
    assert str(tmp_path) not in msg  # no absolute paths in messages learners paste
