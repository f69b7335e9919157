#!/usr/bin/env bash
# Click scoring on the default model and world at several late-interaction
# splits: one option-adapter module per split L' (0 = the plain path, every
# layer over the whole input), each trained with the split it is evaluated
# with, then one `optrec eval` over all of them, which prints the table of
# test AUC and speed against L' that docs/late_interaction.md quotes.
#
#   scripts/late-interaction-table.sh [OUT_DIR] [SPLITS...]
#       (default build/late-interaction, splits 0 4 6 7)
#
# Every step is skipped when its result exists, so an interrupted run
# continues (tuning jobs also resume from their checkpoints). About 30
# minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/build.sh >/dev/null
optrec=${OPTREC_BUILD_DIR:-$root/build}/optrec
out=${1:-$root/build/late-interaction}
shift || true
splits=("$@")
[[ ${#splits[@]} -gt 0 ]] || splits=(0 4 6 7)
world=$root/build/world
model=$root/models/default
mkdir -p "$out/specs" "$out/modules"
[[ -f "$world/world.json" ]] || "$optrec" world generate --out "$world" --seed 1

modules=()
for l in "${splits[@]}"; do
  spec=$out/specs/ctr.L$l.json
  python3 - "$root/models/tasks/ctr.json" "$spec" "$l" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
if int(sys.argv[3]) > 0:
    spec["lower_layers"] = int(sys.argv[3])
json.dump(spec, open(sys.argv[2], "w"), indent=1)
PY
  module=$out/modules/ctr.L$l.safetensors
  if [[ ! -f "$module" ]]; then
    echo "== tune ctr at L' = $l"
    "$optrec" tune --model "$model" --world "$world" --seed 1 \
      --task "$spec" --method option_adapter --version "L$l" \
      --out "$out/modules" --steps 300 --batch 32 --eval-every 100 \
      --eval-examples 1000 --checkpoint-every 100 --lr 1e-2 --min-lr 1e-3 \
      --warmup 20 --work-dir "$out/work.L$l" >"$out/tune.L$l.log" 2>&1
  fi
  modules+=(--module "$module")
done
echo "== eval (test split, 3000 examples)"
"$optrec" eval --model "$model" --world "$world" --split test --limit 3000 \
  "${modules[@]}" --json "$out/eval.json" | tee "$out/eval.txt"
