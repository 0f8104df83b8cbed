#!/usr/bin/env bash
# Create or reuse .venv from requirements.lock, then build the offline assets:
#   - CLIP's real tokenizer from the BPE file inside the open_clip_torch wheel (downloaded, never installed)
#   - the offline model(s) the notebooks run on when there is no Hub / GPU
# A second run only checks stamps: a couple of seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-lock
export DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error PIP_DISABLE_PIP_VERSION_CHECK=1

# pip warns about find-links folders some machines configure but lack; keep real errors.
quiet_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the locked versions (requirements.lock) into $VENV ..."
  # --no-deps: the lock lists every package, so pip never resolves a floating torch (a multi-GB CUDA build).
  # (setuptools is pinned in the lock too: the editable install below builds with it.)
  quiet_pip install -q --no-deps -r requirements.lock
  quiet_pip install -q --no-deps --no-build-isolation -e .
  quiet_pip check
  echo "$want" > "$STAMP"
fi

mkdir -p .cache/wheels
if ! ls .cache/wheels/open_clip_torch-3.3.0-*.whl >/dev/null 2>&1; then
  echo "[setup] fetching the open_clip_torch wheel for CLIP's BPE file (not installed)"
  quiet_pip download -q --no-deps open_clip_torch==3.3.0 -d .cache/wheels
fi

if [ ! -f .cache/clip-tokenizer/vocab.json ] || [ ! -f .cache/models/tiny-sd-random/model_index.json ]; then
  "$VENV/bin/python" -m helpers.setup_assets
fi
