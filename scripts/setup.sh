#!/usr/bin/env bash
# Create or reuse .venv from requirements.lock; works on Linux and macOS, with or without a GPU.
#   1. the locked packages, all but torch, with --no-deps (the lock lists every one of them);
#   2. torch, from the right place for this machine (scripts/torch_source.py says which and why);
#   3. `pip check`, so a broken set never passes as installed.
# The offline models, configs and tokenizer are committed (models/, configs/): nothing else is downloaded.
# A second run only checks a stamp: a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP=$VENV/.installed-lock
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Python: the versions tested are 3.11 (CI, here); the ranges resolve for 3.13 (Colab). Older ones cannot run jax 0.7+.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3 python3.13 python3.12 python3.11; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$cand; break
    fi
  done
fi
if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "[setup] needs Python 3.11 or newer (found: $(${PY:-python3} --version 2>&1)). Install one, then: PYTHON=python3.11 make setup" >&2
  exit 1
fi

# pip warns about find-links folders some machines configure but lack; keep real errors.
quiet_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# sha256 of the lock + pyproject with Python itself (macOS has no sha256sum)
want=$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest()[:16])' requirements.lock pyproject.toml)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  t0=$(date +%s)
  # Classroom wheelhouse (`make wheelhouse`, scripts/build_wheelhouse.py): when wheelhouse/ exists or SD_WHEELHOUSE
  # names a folder, every pip call below installs from it alone (--no-index): no network needed, torch included.
  WHEELHOUSE=${SD_WHEELHOUSE:-wheelhouse}
  if [ -d "$WHEELHOUSE" ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$(cd "$WHEELHOUSE" && pwd)"
    echo "[setup] installing from the wheelhouse $PIP_FIND_LINKS (no network)"
    grep -q "\"lock_digest\": \"$want\"" "$WHEELHOUSE/manifest.json" 2>/dev/null ||
      echo "[setup] warning: $WHEELHOUSE was built for another requirements.lock; if pip finds no matching version, rebuild it: make wheelhouse" >&2
  elif [ -n "${SD_WHEELHOUSE:-}" ]; then
    echo "[setup] SD_WHEELHOUSE=$SD_WHEELHOUSE is not a folder. Fix: copy the wheelhouse there, or unset SD_WHEELHOUSE." >&2
    exit 1
  fi
  torch_pin=$(grep -E '^torch==' requirements.lock)
  echo "[setup] installing the locked versions (requirements.lock) into $VENV ..."
  # --no-deps: the lock lists every package, so pip never resolves a floating torch (a multi-GB CUDA build).
  grep -vE '^torch==' requirements.lock > "$VENV/lock-without-torch.txt"
  quiet_pip install -q --no-deps -r "$VENV/lock-without-torch.txt"
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${torch_pin#torch==}')" 2>/dev/null; then
    # a torch wheel that pip can already see without an index (a wheelhouse, a machine's own wheel folder)?
    local_flag=""
    if quiet_pip download -q --no-deps --no-index -d "$VENV/.torch-probe" "$torch_pin" >/dev/null 2>&1; then local_flag=local; fi
    rm -rf "$VENV/.torch-probe"
    IFS='|' read -r kind no_deps pip_args reason < <("$VENV/bin/python" scripts/torch_source.py $local_flag)
    echo "[setup] torch: $reason"
    deps_flag=""; [ "$no_deps" = 1 ] && deps_flag="--no-deps"
    # shellcheck disable=SC2086  # pip_args is a list of words
    if ! quiet_pip install -q --retries 2 $deps_flag $pip_args "$torch_pin"; then
      echo "[setup] could not install $torch_pin ($kind). Fix: 'SD_TORCH=pypi make setup' takes PyPI's build (~3 GB on Linux), or install it yourself: $VENV/bin/pip install $torch_pin --index-url https://download.pytorch.org/whl/cpu" >&2
      exit 1
    fi
  fi
  quiet_pip install -q --no-deps --no-build-isolation -e .
  quiet_pip check
  echo "$want" > "$STAMP"
  echo "[setup] done in $(( $(date +%s) - t0 )) s"
fi
