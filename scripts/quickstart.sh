#!/usr/bin/env bash
# The main job, for a newcomer: installs dependencies, builds optrec,
# generates the simulated shop world (once), then
#   1. shows the default model at work zero-shot: completing a test user's
#      behaviour text and ranking 100 candidate items by log-likelihood;
#   2. serves the demo task modules (click scoring, next-click retrieval,
#      explanations; models/modules/) with optrec serve, and calls Score,
#      Retrieve and Generate for a test user with optrec client.
#
#   scripts/quickstart.sh [MODEL_DIR]
#
# MODEL_DIR defaults to models/default, the small Llama pretrained on the
# world's corpus that ships with optrec (models/default/README.md says how
# it was made). Any Hugging Face model directory with a tokenizer works for
# part 1; the demo modules of part 2 belong to models/default only, so part
# 2 runs only with it. Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/build.sh"
build="${OPTREC_BUILD_DIR:-$root/build}"
optrec="$build/optrec"
model=${1:-$root/models/default}
world="$build/world"

if [[ ! -f "$world/world.json" ]]; then
  echo "== optrec world generate (the default shop world, seed 1)"
  "$optrec" world generate --out "$world" --seed 1
fi
echo "== optrec demo --model $model"
"$optrec" demo --model "$model" --world "$world"

if [[ "$(cd "$model" && pwd)" != "$root/models/default" ]]; then
  echo "(the demo modules belong to models/default: skipping the service)"
  exit 0
fi

modules="$root/models/modules"
mkdir -p "$build/indexes"
index="$build/indexes/next_click.option_adapter"
# Rebuilt every time (seconds): an index serves only the exact module file
# that built it.
echo "== optrec index build (the catalog through the retrieval module)"
"$optrec" index build --model "$model" \
  --module "$modules/next_click.option_adapter.safetensors" \
  --catalog "$world/catalog.jsonl" --out "$index" --force

echo "== optrec serve (three demo modules) and optrec client"
log=$(mktemp)
"$optrec" serve --model "$model" --listen 127.0.0.1:0 \
  --module "$modules/ctr.option_adapter.safetensors" \
  --module "$modules/next_click.option_adapter.safetensors" \
  --module "$modules/explanation.option_adapter.safetensors" \
  --index "$index" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's/^optrec serving on port \([0-9]*\)$/\1/p' "$log")
  [[ -n "$port" ]] && break
  if ! kill -0 $server 2>/dev/null; then
    cat "$log" >&2
    echo "quickstart: optrec serve did not start" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$port" ]]; then
  echo "quickstart: optrec serve did not listen within a minute" >&2
  exit 1
fi
"$optrec" client --address "127.0.0.1:$port" --world "$world" \
  --ctr-task ctr --retrieve-task next_click --generate-task explanation
