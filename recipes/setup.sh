#!/usr/bin/env bash
# Create or reuse .venv, install distill with its pinned torch/torchaudio pair, and the Debian
# packages it needs (espeak-ng for the built-in corpus, flac and wavpack for the lossless-codec
# baselines). Safe to re-run: it skips what is there.
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

# Debian packages: espeak-ng for the built-in corpus; flac and wavpack for the lossless-codec
# baselines of `distill evaluate` (without them its report says they were not measured)
missing=()
for tool in espeak-ng flac wavpack; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif [[ " ${missing[*]} " == *" espeak-ng "* ]]; then
    echo "[setup] error: ${missing[*]} missing and cannot be installed without root;" \
         "run: apt-get install -y ${missing[*]}" >&2
    exit 1
  else  # the codec baselines are optional: the report says they were not measured
    echo "[setup] warning: ${missing[*]} missing and cannot be installed without root;" \
         "run: apt-get install -y ${missing[*]}" >&2
  fi
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
