"""Build the offline assets once (called by `scripts/setup.sh`): tokenizer files and offline model."""

from __future__ import annotations

import time

from .offline import ensure_tiny_model
from .tokenizer import clip_tokenizer_dir, load_clip_tokenizer

EXPECTED_IDS = {  # OpenAI's reference tokenizer on these strings (see tests/test_tokenizer.py)
    "Kermit the Frog on the Iron Throne": [49406, 40908, 518, 11438, 525, 518, 5391, 15999, 49407],
}


def main() -> None:
    t0 = time.time()
    path = clip_tokenizer_dir()
    tok = load_clip_tokenizer()
    for text, ids in EXPECTED_IDS.items():
        if tok(text).input_ids != ids:
            raise SystemExit(f"[setup] the CLIP tokenizer in {path} gives wrong ids for {text!r}: delete it and rerun.")
    model = ensure_tiny_model()
    print(f"[setup] ready in {time.time() - t0:.1f}s: tokenizer {path}, offline model {model}")


if __name__ == "__main__":
    main()
