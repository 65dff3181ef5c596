#!/usr/bin/env bash
# Stage two: distil the conditional IAF student from the frozen MAF teacher (probability density
# distillation + spectral loss). Thin: paths and stages only; the work is `distill distill-student`.
#   1 distil the student from $TEACHER into $STUDENT_DIR (resumes from its latest.pt when re-run)
# stage=N starts from stage N, stop_stage=M stops after M (lower case, so that the STAGE of
# recipes/demo.sh does not leak in). Extra arguments are config overrides, e.g.
#   bash recipes/distill_student.sh student_training.steps=100 distill.stft_weight=2
# Multi-GPU: NPROC=4 bash recipes/distill_student.sh (torchrun, one process per GPU; gloo on CPU).
# Multi-node: also NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host [MASTER_PORT=29500] on every node.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=${stage:-1}
stop_stage=${stop_stage:-1}
NAME=${NAME:-${CORPUS:-espeak}}
CONFIG=${CONFIG:-recipes/configs/demo.yaml}
DATA=${DATA:-data/prepared/$NAME}
EXP=${EXP:-checkpoints/$NAME}
TEACHER=${TEACHER:-$EXP/teacher/best.pt}
STUDENT_DIR=${STUDENT_DIR:-$EXP/student}

source recipes/lib/launch.sh

if [ "$stage" -le 1 ] && [ 1 -le "$stop_stage" ]; then
  echo "=== distill_student stage 1: distil $TEACHER -> $STUDENT_DIR ($CONFIG, $DATA) ==="
  args=(distill-student --config "$CONFIG" --teacher "$TEACHER" --data "$DATA"
        --out "$STUDENT_DIR" "$@")
  run_distill "${args[@]}"
fi
