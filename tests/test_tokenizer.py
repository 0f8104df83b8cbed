"""The offline CLIP tokenizer gives exactly OpenAI's ids (the ones SD v1's text encoder was trained on)."""

from __future__ import annotations

import zipfile

import pytest

from helpers import tokenizer as tok_mod
from helpers.tokenizer import (
    BPE_NAME,
    BPE_SIZE,
    MODEL_MAX_LENGTH,
    VOCAB_SIZE,
    build_vocab_and_merges,
    find_bpe_file,
    load_clip_tokenizer,
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


def test_bpe_file_is_openais(tmp_path):
    path = find_bpe_file()
    assert path.name == BPE_NAME
    assert path.stat().st_size == BPE_SIZE == 1_356_917
    vocab, merges = build_vocab_and_merges(path)
    assert len(vocab) == VOCAB_SIZE and len(merges) == 48_894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # bytes, then bytes ending a word, then merges


def test_written_folder_loads(tmp_path):
    from transformers import CLIPTokenizer

    out = write_tokenizer_files(tmp_path / "tok", find_bpe_file())
    assert {p.name for p in out.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    tok = CLIPTokenizer.from_pretrained(out)
    text = "Kermit the Frog on the Iron Throne"
    assert tok(text).input_ids == EXPECTED_IDS[text]


def test_missing_wheel_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tok_mod, "TOKENIZER_DIR", tmp_path / "clip-tokenizer")
    with pytest.raises(FileNotFoundError) as info:
        find_bpe_file(search_dirs=[tmp_path])
    msg = str(info.value)
    assert "make setup" in msg and "pip download --no-deps" in msg and "open_clip_torch==3.3.0" in msg


def test_extracts_from_a_wheel(tmp_path, monkeypatch):
    """A downloaded open_clip wheel (never installed) is enough: the BPE file is read out of it."""
    data = find_bpe_file().read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "open_clip_torch-3.3.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"open_clip/{BPE_NAME}", data)
    monkeypatch.setattr(tok_mod, "TOKENIZER_DIR", tmp_path / "clip-tokenizer")
    path = find_bpe_file(search_dirs=[wheels])
    assert path == tmp_path / "clip-tokenizer" / BPE_NAME
    assert path.read_bytes() == data
    assert not list(path.parent.glob("*.tmp"))


def test_wrong_bpe_file_is_refused(tmp_path, monkeypatch):
    """A BPE file of the wrong size is not the tokenizer SD was trained with: refuse it loudly."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "open_clip_torch-9.9.9-py3-none-any.whl", "w") as zf:
        zf.writestr(f"open_clip/{BPE_NAME}", b"not the real file")
    monkeypatch.setattr(tok_mod, "TOKENIZER_DIR", tmp_path / "clip-tokenizer")
    with pytest.raises(ValueError, match="make setup"):
        find_bpe_file(search_dirs=[wheels])
