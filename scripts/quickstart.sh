#!/usr/bin/env bash
# The main job, for a newcomer: installs dependencies, builds optrec,
# generates the simulated shop world (once), and shows the default model at
# work on it: completing a test user's behaviour text and ranking 100
# candidate items zero-shot by log-likelihood, then hit rates over 50 test
# users next to chance.
#
#   scripts/quickstart.sh [MODEL_DIR]
#
# MODEL_DIR defaults to models/default, the small Llama pretrained on the
# world's corpus that ships with optrec (models/default/README.md says how
# it was made). Any Hugging Face model directory with a tokenizer works.
# Safe to run again.
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
