#!/usr/bin/env bash
# Density distillation on 2-D vectors, with pictures, and the flow families side by side: a
# conditional MAF teacher on rotated two moons, a conditional IAF student distilled from it (Monte
# Carlo KL); then NICE, RealNVP and Glow fitted on the same batches and a RealNVP student
# distilled from the same teacher, at about the same parameter count. Writes data / teacher
# density / student density / student samples PNGs, kl_curve.png, comparison.png (every family's
# density), comparison.md (the table: held-out NLL, sampling and density time for 100k points on
# this CPU, KL to the teacher) and metrics.json to $OUT. About two minutes on a 2-core CPU: the
# fits run in two processes of one torch thread each, the timings after them (130 s wall, 214 s
# CPU on an idle 2-core AMD EPYC; 216 s wall in one process before); --no-compare for the teacher
# and IAF student alone (about a minute, one process).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/toy2d}
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
exec "$PY" -m distill.toy2d --out "$OUT" "$@"
