#!/usr/bin/env bash
# Smoke run of the whole main job (recipes/demo.sh stages 1-5) on a tiny corpus with the tiny
# config, a few steps per stage, everything under a temporary folder: a broken stage fails CI.
# Then the remaining commands once each: bench, export, score, the hardware check on CPU,
# toy2d.
set -euo pipefail
cd "$(dirname "$0")/.."
bash recipes/setup.sh >/dev/null
# shellcheck disable=SC1091
source .venv/bin/activate

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NAME=smoke CONFIG=recipes/configs/tiny.yaml NUM_UTTERANCES=16
export CORPUS=espeak CORPUS_DIR=$work/corpus DATA=$work/prepared EXP=$work/exp OUT=$work/out
STAGE=1 bash recipes/demo.sh

test -s "$OUT/eval/report.md"
test -s "$OUT/eval/metrics.json"
test -s "$OUT/eval/headline.md"
# any vocoder's outputs, scored against the same clips: here the student's own synthesis
distill evaluate --outputs "$OUT/synth" --data "$DATA" --out "$work/outputs_eval" > /dev/null
test -s "$work/outputs_eval/report.md"
ls "$OUT/synth"/*.wav >/dev/null
# the 16 kHz demo config (festvox-ru's) end to end, a few steps, on the same corpus resampled
STAGE=1 NAME=smoke16k CONFIG=recipes/configs/demo_festvox.yaml DATA=$work/prepared16k \
  EXP=$work/exp16k OUT=$work/out16k EVAL_ARGS="--max-clips 1 --teacher-clips 1 --teacher-seconds 0.05 \
  --griffin-lim-iters 4" bash recipes/demo.sh \
  {teacher,student}_training.{steps=2,val_clips=1,val_max_seconds=0.5,audio_sample_seconds=0.02} \
  > "$work/smoke16k.log" 2>&1 || { cat "$work/smoke16k.log" >&2; echo "smoke: 16 kHz failed" >&2; exit 1; }
python -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['sample_rate'] == 16000, d" \
  "$work/out16k/eval/metrics.json"

distill bench --config "$CONFIG" --seconds 0.05 --json > "$work/bench.json"
python -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['student_samples_per_s'] > 0" \
  "$work/bench.json"
distill export --checkpoint "$EXP/student/best.pt" --out "$work/student.pt2"
distill score --teacher "$EXP/teacher/best.pt" "$(find "$CORPUS_DIR" -name "*.wav" | sort | head -n 1)"
# the one-shot hardware check, on CPU with tiny budgets, so that it cannot rot unrun
DEVICE=cpu OUT=$work/gpu_check bash recipes/gpu_check.sh > "$work/gpu_check.log" 2>&1 \
  || { cat "$work/gpu_check.log" >&2; echo "smoke: gpu_check failed" >&2; exit 1; }
test -s "$work/gpu_check/report.md"
python -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['run']['student']['step'] > 0" \
  "$work/gpu_check/results.json"
OUT=$work/toy2d bash recipes/toy2d.sh --teacher-steps 20 --student-steps 20 > "$work/toy2d.log" 2>&1 \
  || { cat "$work/toy2d.log" >&2; echo "smoke: toy2d failed" >&2; exit 1; }
echo "smoke: all stages ran"
