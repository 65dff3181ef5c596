#!/usr/bin/env bash
# Density distillation on 2-D vectors, with pictures (about a minute on a CPU): a conditional MAF
# teacher on rotated two moons, a conditional IAF student distilled from it (Monte Carlo KL).
# Writes data / teacher density / student density / student samples PNGs, kl_curve.png and
# metrics.json (KL on a grid before and after) to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/toy2d}
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
exec "$PY" -m distill.toy2d --out "$OUT" "$@"
