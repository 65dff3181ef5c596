#!/usr/bin/env bash
# The main job, from a fresh machine to an evaluated student:
#   0 setup (.venv, pinned torch pair, espeak-ng)   1 make + prepare the corpus
#   2 train the MAF teacher                          3 distil the IAF student
#   4 synthesise the validation clips (student only) 5 evaluate against codecs and Griffin-Lim
# Every stage can be re-run and resumes; STAGE=N starts from stage N, STOP_STAGE=M stops after M.
# The corpus: CORPUS=festvox-ru (the default: 99.5 min of one man's recorded read speech at
# 16 kHz, downloaded from Debian, 179 MB, with recipes/configs/demo_festvox.yaml) or
# CORPUS=espeak (English synthesised here by espeak-ng, with recipes/configs/demo.yaml, or the
# larger demo_gpu.yaml on a machine with CUDA). CONFIG=... overrides the config.
# EVAL_ARGS adds options to stage 5's `distill evaluate` (e.g. "--teacher-clips 1").
# Arguments are config overrides for both training stages, e.g.
#   bash recipes/demo.sh teacher_training.steps=200 student_training.steps=100
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=${STAGE:-0}
STOP_STAGE=${STOP_STAGE:-5}
CORPUS=${CORPUS:-festvox-ru}
case "$CORPUS" in
  festvox-ru|espeak) ;;
  *) echo "demo: CORPUS=$CORPUS is not a built-in corpus; use CORPUS=festvox-ru or CORPUS=espeak" \
       "(for your own audio: distill prepare --audio-dir DIR, see the README)" >&2; exit 2 ;;
esac
NAME=${NAME:-$CORPUS}
CORPUS_DIR=${CORPUS_DIR:-data/corpus/$NAME}
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
if [ -z "${CONFIG:-}" ] && [ "$CORPUS" = festvox-ru ]; then
  CONFIG=recipes/configs/demo_festvox.yaml
elif [ -z "${CONFIG:-}" ]; then
  if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    CONFIG=recipes/configs/demo_gpu.yaml
  else
    CONFIG=recipes/configs/demo.yaml
  fi
fi
echo "demo: config $CONFIG"
export NAME CONFIG CORPUS CORPUS_DIR DATA EXP
# festvox-ru's utterances are ~9 s long: 6 held out (1 %, 53 s) keep the evaluation short
if [ "$CORPUS" = festvox-ru ]; then VAL_FRACTION=${VAL_FRACTION:-0.01}; fi

corpus() {
  distill make-corpus --source "$CORPUS" --out "$CORPUS_DIR" \
    ${NUM_UTTERANCES:+--num-utterances "$NUM_UTTERANCES"}
  distill prepare --audio-dir "$CORPUS_DIR" --out "$DATA" --config "$CONFIG" \
    ${VAL_FRACTION:+--val-fraction "$VAL_FRACTION"}
}
stage 1 "corpus" corpus
stage 2 "train the teacher" bash recipes/train_teacher.sh "$@"
stage 3 "distil the student" bash recipes/distill_student.sh "$@"
stage 4 "synthesise validation clips (student only)" \
  distill synthesize --checkpoint "$EXP/student/best.pt" --data "$DATA" --split val \
    --out-dir "$OUT/synth" --seed 0
stage 5 "evaluate" \
  distill evaluate --student "$EXP/student/best.pt" --teacher "$EXP/teacher/best.pt" \
    --data "$DATA" --split val --out "$OUT/eval" ${EVAL_ARGS:-}

echo
echo "demo finished in $((SECONDS - t_start)) s."
echo "  report:      $OUT/eval/report.md"
echo "  audio:       $OUT/synth/ and $OUT/eval/"
echo "  TensorBoard: .venv/bin/tensorboard --logdir $EXP"
if [ -f "$OUT/eval/headline.md" ]; then  # last: the table to read first
  echo
  cat "$OUT/eval/headline.md"
fi
