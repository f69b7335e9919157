#!/usr/bin/env bash
# Rebuilds models/default from nothing: generates the default shop world and
# pretrains the default model on its corpus with the settings below. With
# the same number of threads (OPTREC_THREADS, default all cores) the weights
# are the same bit for bit; the model card (OUT_DIR/README.md) records how
# long it took. Needs a built tree (scripts/build.sh). If interrupted, run it
# again: training continues from its last checkpoint.
#
#   scripts/build-default-model.sh [OUT_DIR]   # default: models/default
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build="${OPTREC_BUILD_DIR:-build}"
out=${1:-models/default}
world="$build/world"

if [[ ! -f "$world/world.json" ]]; then
  "$build/optrec" world generate --out "$world" --seed 1
fi
"$build/optrec" pretrain --corpus "$world/corpus/train.jsonl" \
  --valid-corpus "$world/corpus/valid.jsonl" --out "$out" \
  --work-dir "$build/$(basename "$out").work" --force \
  --seed 1 --vocab 2048 --hidden 128 --layers 8 --heads 4 --kv-heads 2 \
  --ffn 384 --context 256 --batch 32 --steps 1000 --warmup 50 \
  --lr 2e-3 --min-lr 2e-4 --dtype bf16 --eval-every 200 \
  --note "Corpus: the default shop world, \`optrec world generate --seed 1\` (small size). The whole recipe, world included, is \`scripts/build-default-model.sh\`."
