# Sourced by recipes/train_teacher.sh and recipes/distill_student.sh from the repository root.
# Puts .venv/bin first on PATH when it exists, and defines run_distill ARGS...: plain
# `distill ARGS...`, or torchrun with NPROC processes per node (NCCL on GPU, gloo on CPU), on
# NNODES nodes when NNODES > 1 (then NODE_RANK and MASTER_ADDR are needed, MASTER_PORT is
# optional).
if [ -x .venv/bin/distill ]; then
  PATH="$PWD/.venv/bin:$PATH"
fi
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}

run_distill() {
  if [ "$NNODES" -gt 1 ]; then
    python3 -m torch.distributed.run --nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK}" \
      --master_addr="${MASTER_ADDR:?set MASTER_ADDR}" --master_port="${MASTER_PORT:-29500}" \
      --nproc_per_node="$NPROC" -m distill.cli "$@"
  elif [ "$NPROC" -gt 1 ]; then
    python3 -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m distill.cli "$@"
  else
    distill "$@"
  fi
}
