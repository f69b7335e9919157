#!/usr/bin/env bash
# The main job, for a newcomer: installs dependencies, builds optrec, then
# generates a continuation and ranks options by zero-shot log-likelihood
# with a model.
#
#   scripts/quickstart.sh [MODEL_DIR]
#
# MODEL_DIR is a Hugging Face model directory (config.json, safetensors,
# tokenizer). Without it the script uses ../shared/data/models/llama-gqa-tiny
# when present (a trained 5-layer Llama with no tokenizer: token ids in and
# out), else it writes a small random-weight GPT-2-shaped model (output is
# noise; it shows the machinery). Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/build.sh"
optrec="${OPTREC_BUILD_DIR:-$root/build}/core/optrec"

model=${1:-}
shared="$root/../shared/data"
if [[ -z "$model" && -f "$shared/models/llama-gqa-tiny/config.json" ]]; then
  model="$shared/models/llama-gqa-tiny"
fi
if [[ -z "$model" ]]; then
  model="$root/build/models/random-tiny-gpt2"
  if [[ ! -f "$model/model.safetensors" ]]; then
    tok=()
    if [[ -f "$shared/tokenizers/gpt2/tokenizer.json" ]]; then
      tok=(--tokenizer "$shared/tokenizers/gpt2/tokenizer.json")
    fi
    "$optrec" random-model --out "$model" --preset tiny-gpt2 "${tok[@]}"
  fi
fi

echo "== model: $model"
if [[ -f "$model/tokenizer.json" || -f "$model/tokenizer.model" ]]; then
  echo "== optrec generate"
  "$optrec" generate --model "$model" --max-tokens 24 \
    --prompt "Clicked: trail running shoes, red. Next click:"
  echo "== optrec score"
  "$optrec" score --model "$model" \
    --context "Clicked: trail running shoes, red. Next click:" \
    --option " running socks" --option " a kitchen blender" \
    --option " a waterproof trail jacket"
else
  echo "== optrec generate (no tokenizer: token ids)"
  "$optrec" generate --model "$model" --prompt-ids 1 --max-tokens 24
  echo "== optrec score (no tokenizer: token ids)"
  "$optrec" score --model "$model" --context-ids "1 461 461 401 401" \
    --option-ids "401 461 378" --option-ids "13 13 13" \
    --option-ids "300 301 302"
fi
