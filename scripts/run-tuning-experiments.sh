#!/usr/bin/env bash
# Reproduces the results of docs/tuning.md on the default model and world:
# zero-shot, prompt, option and option-adapter tuning for click scoring,
# rating, next-click retrieval and explanations, the non-LM baselines, and
# the P5 table (each family's seen template against its held-out one).
#
#   scripts/run-tuning-experiments.sh [OUT_DIR]   (default models/experiments)
#
# Every result is a JSON file under OUT_DIR, each finished step marked by
# NAME.done; a marked step is skipped, so an interrupted run continues where
# it stopped (tuning jobs also resume from their checkpoints while the same
# machine keeps them). The default folder is committed with the results and
# the modules they came from, so a later checkout continues the same run;
# its logs and checkpoints are not kept (.gitignore). Takes about three
# hours on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/build.sh >/dev/null
optrec=${OPTREC_BUILD_DIR:-$root/build}/optrec
out=${1:-$root/models/experiments}
world=$root/build/world
model=$root/models/default
tasks=$root/models/tasks
mkdir -p "$out"
[[ -f "$world/world.json" ]] || "$optrec" world generate --out "$world" --seed 1

# run NAME COMMAND...: runs once, logging to OUT/NAME.log; NAME.done marks it.
run() {
  local name=$1
  shift
  if [[ -f "$out/$name.done" ]]; then return; fi
  echo "== $name"
  "$@" >"$out/$name.log" 2>&1
  touch "$out/$name.done"
}
evaluate() {  # evaluate NAME ARGS...: optrec eval on the test split
  local name=$1
  shift
  run "$name" "$optrec" eval --model "$model" --world "$world" --split test \
    --json "$out/$name.json" "$@"
}

run baselines "$optrec" baselines --world "$world" --json "$out/baselines.json"

# Zero-shot (the backbone alone). Retrieval scores every catalog title for
# each user, so it runs on a sample.
evaluate zeroshot-ctr --task "$tasks/ctr.json" --zero-shot
evaluate zeroshot-rating --task "$tasks/rating.json" --zero-shot
evaluate zeroshot-next_click --task "$tasks/next_click.json" --zero-shot \
  --limit 100
evaluate zeroshot-explanation --task "$tasks/explanation.json" --zero-shot

base=(--model "$model" --world "$world" --seed 1)
common=("${base[@]}" --eval-examples 1000 --checkpoint-every 100)
for method in prompt option option_adapter; do
  lr=3e-2
  [[ $method == option_adapter ]] && lr=1e-2
  # Click scoring alone: the curves compare the methods step for step.
  run "tune-ctr-$method" "$optrec" tune "${common[@]}" \
    --task "$tasks/ctr.json" --method "$method" --version "$method" \
    --out "$out/modules" --steps 800 --batch 32 --eval-every 50 \
    --lr "$lr" --min-lr 1e-3 --warmup 40
  # Rating, retrieval and explanations in one mixed job. Without options
  # or special tokens, option tuning of the retrieval and explanation
  # tasks is prompt tuning exactly (same tensors, same start), so the
  # option job trains rating alone and those two report prompt's modules.
  mixed=(--task "$tasks/rating.json")
  if [[ $method != option ]]; then
    mixed+=(--task "$tasks/next_click.json,batch=32"
      --task "$tasks/explanation.json,batch=8")
  fi
  run "tune-mixed-$method" "$optrec" tune "${common[@]}" "${mixed[@]}" \
    --method "$method" --version "$method" --out "$out/modules" \
    --steps 400 --batch 16 --eval-every 50 --lr "$lr" --min-lr 1e-3 \
    --warmup 20
  evaluated=(ctr rating)
  [[ $method != option ]] && evaluated+=(next_click)
  for task in "${evaluated[@]}"; do
    evaluate "test-$task-$method" --module "$out/modules/$task.$method.safetensors"
  done
  if [[ $method != option ]]; then
    evaluate "test-explanation-$method" \
      --module "$out/modules/explanation.$method.safetensors" --samples 3
  fi
done

# P5: every family tuned together with option_adapter on its seen
# templates, then each evaluated on its seen and its held-out template.
# Validation uses 100 examples per task: a direct example is 100 candidate
# rows.
run tune-p5 "$optrec" tune "${base[@]}" --eval-examples 100 \
  --checkpoint-every 100 \
  --task "$tasks/rating.json" --task "$tasks/sequential.json" \
  --task "$tasks/p5_explanation.json" --task "$tasks/review_summary.json" \
  --task "$tasks/direct.json" --method option_adapter --version p5 \
  --out "$out/modules" --steps 250 --batch 8 --eval-every 50 --lr 1e-2 \
  --min-lr 1e-3 --warmup 20
evaluate p5-rating --module "$out/modules/rating.p5.safetensors"
for task in p5_explanation review_summary; do
  evaluate "p5-$task" --module "$out/modules/$task.p5.safetensors" --limit 300
done
evaluate p5-sequential --module "$out/modules/sequential.p5.safetensors" \
  --limit 200
evaluate p5-direct --module "$out/modules/direct.p5.safetensors" --limit 150
echo "results in $out"
