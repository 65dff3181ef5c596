#!/usr/bin/env bash
# One-shot hardware check. A GPU is lent for minutes, so everything it must show is one run of
# at most TOTAL_MINUTES (9 on a GPU) that writes $OUT/report.md and $OUT/results.json:
#   1 distill bench: demo and paper configs, float32 / bfloat16 / float16, batch 1 and 16, the
#     student eager, with CUDA graphs, compiled, both (cheapest first; a time budget per
#     config skips what is left, and the report says so)
#   2 the teacher's cached generation, both configs
#   3 distill bench --train: one step of each stage, both configs, bf16 autocast and float32
#   4 a time-boxed demo_gpu run: the corpus (unless GPU_CHECK_DATA names a folder prepared with
#     demo_gpu.yaml's features), the teacher, then the student, each ending at its max_minutes
#     with a checkpoint (up to 3 minutes each: what the steps above left of TOTAL_MINUTES, less
#     a reserve for the evaluation), then distill evaluate on it
#   5 the report: device, driver and library versions, every table, each step's time
# DEVICE=cpu runs the same on CPU with tiny budgets in a few minutes (CI's smoke run does;
# the training steps there are of one 5-frame segment).
# Each step's output and log land in $OUT; a failed step is recorded and the rest still runs;
# the script exits non-zero if any step failed, after writing the report.
# Needs the project importable by $PYTHON (default .venv/bin/python, see recipes/setup.sh);
# it installs nothing, so it also runs on a machine without network.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-outputs/gpu_check}
if [ -x .venv/bin/python ]; then default_python=.venv/bin/python; else default_python=python3; fi
PYTHON=${PYTHON:-$default_python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
distill() { "$PYTHON" -m distill.cli "$@"; }

if [ "$DEVICE" = cpu ]; then  # tiny budgets: the same steps, so that CI keeps them working
  TOTAL_MINUTES=${TOTAL_MINUTES:-5}
  BENCH=(--seconds 0.05 --batch 1,2 --variants eager,cuda-graphs --repeats 1 --budget-s 20)
  CACHED=(--seconds 0.02 --batch 1,2 --repeats 1 --budget-s 20)
  # one utterance of 5 frames (1,280 samples, the least the 2048-point STFT loss takes): on a
  # CPU, bf16 autocast can put the dilated convolutions on a slow path (aten::slow_conv_dilated2d
  # on a 2-core AMD EPYC without AVX-512), and the paper config's 32-frame steps made
  # train_paper_bfloat16 take 528 s on an AMD EPYC Zen 4 without AMX, most of CI's time
  TRAIN_BATCH=(--batch 1 --repeats 1 --segment-frames 5)
  NUM_UTTERANCES=${NUM_UTTERANCES:-16}
  MAX_TRAIN_MINUTES=0.25
  EVAL_RESERVE_S=90
  RUN_OVERRIDES=(batch_size=2 segment_frames=8 val_clips=2 val_max_seconds=0.5
    audio_sample_seconds=0.02 cpu_amp=true)
  EVAL=(--max-clips 2 --teacher-clips 1 --teacher-seconds 0.5 --griffin-lim-iters 8)
else
  TOTAL_MINUTES=${TOTAL_MINUTES:-9}
  BENCH=(--seconds 1 --batch 1,16 --variants eager,cuda-graphs,compile,compile+cuda-graphs
    --budget-s 60)
  CACHED=(--seconds 0.1 --batch 1,16 --repeats 1 --budget-s 20)
  TRAIN_BATCH=()
  NUM_UTTERANCES=${NUM_UTTERANCES:-120}
  MAX_TRAIN_MINUTES=3
  EVAL_RESERVE_S=60
  RUN_OVERRIDES=()
  EVAL=(--max-clips 8)
fi
deadline=$((SECONDS + TOTAL_MINUTES * 60))
CORPUS=$OUT/corpus
DATA=${GPU_CHECK_DATA:-$OUT/prepared}
EXP=$OUT/checkpoints

rm -rf "$OUT/logs" "$OUT/steps.jsonl" "$OUT"/*.out "$EXP" "$OUT/eval"
mkdir -p "$OUT/logs"
failed=0
step() {  # step NAME COMMAND...: stdout to $OUT/NAME.out, stderr to $OUT/logs/NAME.log
  local name=$1 t0=$SECONDS status=ok
  shift
  echo "[gpu_check] $name ($((deadline - SECONDS)) s left)"
  if ! "$@" > "$OUT/$name.out" 2> "$OUT/logs/$name.log"; then
    status=failed
    failed=1
    tail -n 5 "$OUT/logs/$name.log" >&2
  fi
  printf '{"step": "%s", "status": "%s", "seconds": %d}\n' \
    "$name" "$status" $((SECONDS - t0)) >> "$OUT/steps.jsonl"
}
training_minutes() {  # training_minutes STAGES_LEFT: a stage's share of the time left
  # after evaluation and ~30 s of start-up and final validation per stage, at most
  # MAX_TRAIN_MINUTES, at least a few seconds (one step)
  "$PYTHON" -c "import sys; left, stages, cap = map(float, sys.argv[1:]); \
print(f'{max(0.05, min(cap, (left - 30 * stages) / stages / 60)):.2f}')" \
    "$((deadline - SECONDS - EVAL_RESERVE_S))" "$1" "$MAX_TRAIN_MINUTES"
}
corpus() {  # (inside `step`, errexit is off: chain with &&)
  distill make-corpus --out "$CORPUS" --num-utterances "$NUM_UTTERANCES" \
    && distill prepare --audio-dir "$CORPUS" --out "$DATA" --config "$1"
}

for config in demo paper; do
  step "bench_$config" distill bench --config "recipes/configs/$config.yaml" --device "$DEVICE" \
    --paths student --dtype float32,bfloat16,float16 "${BENCH[@]}" --json
  step "cached_$config" distill bench --config "recipes/configs/$config.yaml" --device "$DEVICE" \
    --paths cached --dtype float32,bfloat16 "${CACHED[@]}" --json
done
for config in demo paper; do
  for dtype in bfloat16 float32; do
    step "train_${config}_$dtype" distill bench --train --config "recipes/configs/$config.yaml" \
      --device "$DEVICE" --dtype "$dtype" "${TRAIN_BATCH[@]}" --json
  done
done

config=recipes/configs/demo_gpu.yaml
if [ ! -f "$DATA/prepared.json" ]; then
  step corpus corpus "$config"
fi
teacher_overrides=("${RUN_OVERRIDES[@]/#/teacher_training.}")
student_overrides=("${RUN_OVERRIDES[@]/#/student_training.}")
step teacher distill train-teacher --config "$config" --data "$DATA" --out "$EXP/teacher" \
  --device "$DEVICE" --no-progress "${teacher_overrides[@]}" \
  "teacher_training.max_minutes=$(training_minutes 2)"
step student distill distill-student --config "$config" --teacher "$EXP/teacher/best.pt" \
  --data "$DATA" --out "$EXP/student" --device "$DEVICE" --no-progress \
  "${student_overrides[@]}" "student_training.max_minutes=$(training_minutes 1)"
step evaluate distill evaluate --student "$EXP/student/best.pt" --teacher "$EXP/teacher/best.pt" \
  --data "$DATA" --out "$OUT/eval" --device "$DEVICE" "${EVAL[@]}"

"$PYTHON" recipes/lib/gpu_check_report.py "$OUT" --device "$DEVICE" \
  --total-minutes "$TOTAL_MINUTES"
echo "[gpu_check] report: $OUT/report.md, $OUT/results.json"
exit "$failed"
