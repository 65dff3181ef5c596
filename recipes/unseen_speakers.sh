#!/usr/bin/env bash
# Generalisation: the demo's festvox-ru teacher and student (one Russian man) on speakers, a
# language and recording chains they never heard: pocketsphinx-testdata's 10 English clips at
# 16 kHz (CMU "cards" and LibriVox readings, 33 s; a 2 MB Debian package, downloaded once).
# Scored like the demo's held-out clips, against the same codecs and Griffin-Lim.
#   1 make and prepare the corpus (every clip evaluated: --val-fraction 0, --split all)
#   2 distill evaluate
# Needs the demo's checkpoints (bash recipes/demo.sh first). STAGE=N starts from stage N.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .venv/bin/activate

STAGE=${STAGE:-1}
EXP=${EXP:-checkpoints/festvox-ru}
CONFIG=${CONFIG:-recipes/configs/demo_festvox.yaml}
CORPUS_DIR=${CORPUS_DIR:-data/corpus/pocketsphinx-testdata}
DATA=${DATA:-data/prepared/pocketsphinx-testdata}
OUT=${OUT:-outputs/unseen_speakers}

for ckpt in "$EXP/teacher/best.pt" "$EXP/student/best.pt"; do
  if [ ! -f "$ckpt" ]; then
    echo "unseen_speakers: $ckpt is missing; train it first: bash recipes/demo.sh" >&2
    exit 1
  fi
done
if [ "$STAGE" -le 1 ]; then
  distill make-corpus --source pocketsphinx-testdata --out "$CORPUS_DIR"
  distill prepare --audio-dir "$CORPUS_DIR" --out "$DATA" --config "$CONFIG" --val-fraction 0
fi
distill evaluate --student "$EXP/student/best.pt" --teacher "$EXP/teacher/best.pt" \
  --data "$DATA" --split all --out "$OUT/eval"
if [ -f "$OUT/eval/headline.md" ]; then cat "$OUT/eval/headline.md"; fi
