#!/usr/bin/env bash
# The main job, from a fresh machine to an evaluated student:
#   0 setup (.venv, pinned torch pair, espeak-ng)   1 make + prepare the espeak-ng corpus
#   2 train the MAF teacher                          3 distil the IAF student
#   4 synthesise the validation clips (student only) 5 evaluate against codecs and Griffin-Lim
# Every stage can be re-run and resumes; STAGE=N starts from stage N, STOP_STAGE=M stops after M.
# On a machine with CUDA the larger recipes/configs/demo_gpu.yaml is used (CONFIG=... overrides).
# Arguments are config overrides for both training stages, e.g.
#   bash recipes/demo.sh teacher_training.steps=200 student_training.steps=100
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=${STAGE:-0}
STOP_STAGE=${STOP_STAGE:-5}
NAME=${NAME:-espeak}
CORPUS=${CORPUS:-data/corpus/$NAME}
DATA=${DATA:-data/prepared/$NAME}
EXP=${EXP:-checkpoints/$NAME}
OUT=${OUT:-outputs/$NAME}

stage() {  # stage N "description" command...
  local n=$1 desc=$2
  shift 2
  if [ "$STAGE" -le "$n" ] && [ "$n" -le "$STOP_STAGE" ]; then
    echo
    echo "=== demo stage $n: $desc ==="
    local t0=$SECONDS
    if ! "$@"; then
      echo "demo: stage $n ($desc) failed; fix the error above, then resume with:" \
           "STAGE=$n bash recipes/demo.sh" >&2
      exit 1
    fi
    echo "=== stage $n done in $((SECONDS - t0)) s ==="
  fi
}

t_start=$SECONDS
stage 0 "setup" bash recipes/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
if [ -z "${CONFIG:-}" ]; then
  if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    CONFIG=recipes/configs/demo_gpu.yaml
  else
    CONFIG=recipes/configs/demo.yaml
  fi
fi
echo "demo: config $CONFIG"
export NAME CONFIG CORPUS DATA EXP

corpus() {
  distill make-corpus --out "$CORPUS" ${NUM_UTTERANCES:+--num-utterances "$NUM_UTTERANCES"}
  distill prepare --audio-dir "$CORPUS" --out "$DATA" --config "$CONFIG"
}
stage 1 "corpus" corpus
stage 2 "train the teacher" bash recipes/train_teacher.sh "$@"
stage 3 "distil the student" bash recipes/distill_student.sh "$@"
stage 4 "synthesise validation clips (student only)" \
  distill synthesize --checkpoint "$EXP/student/best.pt" --data "$DATA" --split val \
    --out-dir "$OUT/synth" --seed 0
stage 5 "evaluate" \
  distill evaluate --student "$EXP/student/best.pt" --teacher "$EXP/teacher/best.pt" \
    --data "$DATA" --split val --out "$OUT/eval"

echo
echo "demo finished in $((SECONDS - t_start)) s."
echo "  report:      $OUT/eval/report.md"
echo "  audio:       $OUT/synth/ and $OUT/eval/"
echo "  TensorBoard: .venv/bin/tensorboard --logdir $EXP"
if [ -f "$OUT/eval/headline.md" ]; then  # last: the table to read first
  echo
  cat "$OUT/eval/headline.md"
fi
