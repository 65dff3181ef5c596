#!/usr/bin/env bash
# Stage one: train the conditional MAF teacher by maximum likelihood. Thin: paths and stages
# only; the work is `distill make-corpus`, `distill prepare` and `distill train-teacher`.
#   0 make and prepare the built-in corpus $CORPUS (espeak or festvox-ru), if $DATA is not
#     prepared yet
#   1 train the teacher into $TEACHER_DIR (resumes from $TEACHER_DIR/latest.pt when re-run)
# stage=N starts from stage N, stop_stage=M stops after M (lower case, so that the STAGE of
# recipes/demo.sh does not leak in). Extra arguments are config overrides, e.g.
#   bash recipes/train_teacher.sh teacher_training.steps=100
# Multi-GPU: NPROC=4 bash recipes/train_teacher.sh (torchrun, one process per GPU; gloo on CPU).
# Multi-node: also NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host [MASTER_PORT=29500] on every node.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=${stage:-0}
stop_stage=${stop_stage:-1}
CORPUS=${CORPUS:-espeak}
NAME=${NAME:-$CORPUS}
CONFIG=${CONFIG:-recipes/configs/demo.yaml}
CORPUS_DIR=${CORPUS_DIR:-data/corpus/$NAME}
DATA=${DATA:-data/prepared/$NAME}
EXP=${EXP:-checkpoints/$NAME}
TEACHER_DIR=${TEACHER_DIR:-$EXP/teacher}

source recipes/lib/launch.sh

if [ "$stage" -le 0 ] && [ 0 -le "$stop_stage" ]; then
  if [ -f "$DATA/prepared.json" ]; then
    echo "=== train_teacher stage 0: $DATA is prepared; skipping ==="
  else
    echo "=== train_teacher stage 0: make and prepare the corpus $CORPUS_DIR -> $DATA ==="
    if [ ! -f "$CORPUS_DIR/metadata.csv" ]; then
      distill make-corpus --source "$CORPUS" --out "$CORPUS_DIR"
    fi
    distill prepare --audio-dir "$CORPUS_DIR" --out "$DATA" --config "$CONFIG"
  fi
fi

if [ "$stage" -le 1 ] && [ 1 -le "$stop_stage" ]; then
  echo "=== train_teacher stage 1: train the teacher -> $TEACHER_DIR ($CONFIG, $DATA) ==="
  args=(train-teacher --config "$CONFIG" --data "$DATA" --out "$TEACHER_DIR" "$@")
  run_distill "${args[@]}"
fi
