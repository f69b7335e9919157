#!/usr/bin/env bash
# Rebuilds models/default from nothing: generates the default shop world and
# pretrains the default model on its corpus with the settings below. With
# the same number of threads (OPTREC_THREADS, default all cores) the result
# is the same bit for bit; the model card (models/default/README.md) records
# how long it took. Needs a built tree (scripts/build.sh).
#
#   scripts/build-default-model.sh [OUT_DIR]   # default: models/default
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${OPTREC_BUILD_DIR:-$root/build}"
optrec="$build/optrec"
out=${1:-$root/models/default}
world="$build/world"

if [[ ! -f "$world/world.json" ]]; then
  "$optrec" world generate --out "$world" --seed 1
fi
"$optrec" pretrain --corpus "$world/corpus/train.jsonl" \
  --valid-corpus "$world/corpus/valid.jsonl" --out "$out" \
  --work-dir "$build/default-model.work" --force \
  --seed 1 --vocab 2048 --hidden 128 --layers 8 --heads 4 --kv-heads 2 \
  --ffn 384 --context 256 --batch 32 --steps 1000 --warmup 50 \
  --lr 2e-3 --min-lr 2e-4 --dtype bf16 --eval-every 200 \
  --note "Corpus: the default shop world, \`optrec world generate --seed 1\` (small size), files corpus/train.jsonl and corpus/valid.jsonl. The whole recipe is \`scripts/build-default-model.sh\`."
