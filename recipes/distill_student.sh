#!/usr/bin/env bash
# Stage two: distil the IAF student from the frozen MAF teacher (probability density
# distillation + spectral loss). Thin: paths and stages only; the work is `distill distill-student`.
#   1 distil the student (resumes from $STUDENT_DIR/latest.pt when re-run)
# STAGE=N starts from stage N, STOP_STAGE=M stops after M. Extra arguments are config overrides,
# e.g. `bash recipes/distill_student.sh student_training.steps=100 distill.stft_weight=2`.
# Multi-GPU: NPROC=4 bash recipes/distill_student.sh (torchrun, one process per GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=${STAGE:-1}
STOP_STAGE=${STOP_STAGE:-1}
NAME=${NAME:-espeak}
CONFIG=${CONFIG:-recipes/configs/demo.yaml}
DATA=${DATA:-data/prepared/$NAME}
EXP=${EXP:-checkpoints/$NAME}
TEACHER=${TEACHER:-$EXP/teacher/best.pt}
STUDENT_DIR=${STUDENT_DIR:-$EXP/student}
NPROC=${NPROC:-1}

if [ -x .venv/bin/distill ]; then
  PATH="$PWD/.venv/bin:$PATH"
fi

if [ "$STAGE" -le 1 ] && [ 1 -le "$STOP_STAGE" ]; then
  echo "=== distill_student stage 1: distil $TEACHER -> $STUDENT_DIR ($CONFIG, $DATA) ==="
  if [ ! -f "$TEACHER" ]; then
    echo "distill_student: no teacher checkpoint at $TEACHER; train it first with" \
         "bash recipes/train_teacher.sh (or set TEACHER=path/to/teacher/best.pt)" >&2
    exit 1
  fi
  args=(distill-student --config "$CONFIG" --teacher "$TEACHER" --data "$DATA"
        --out "$STUDENT_DIR" "$@")
  if [ "$NPROC" -gt 1 ]; then
    torchrun --standalone --nproc_per_node="$NPROC" -m distill.cli "${args[@]}"
  else
    distill "${args[@]}"
  fi
fi
