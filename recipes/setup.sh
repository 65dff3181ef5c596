#!/usr/bin/env bash
# Create or reuse .venv, install distill with its pinned torch/torchaudio pair, and the Debian
# packages it needs (espeak-ng for the built-in corpus). Safe to re-run: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.distill-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || ! .venv/bin/python -c "import distill, torch, torchaudio" 2>/dev/null; then
  echo "[setup] installing distill and its dependencies into .venv (torch 2.11 is ~4.6 GB the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

if ! command -v espeak-ng >/dev/null 2>&1; then
  echo "[setup] installing espeak-ng (Debian package) for the built-in corpus"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "[setup] error: espeak-ng is missing and cannot be installed without root;" \
         "run: apt-get install -y espeak-ng" >&2
    exit 1
  fi
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
