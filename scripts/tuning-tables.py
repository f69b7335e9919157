#!/usr/bin/env python3
"""Prints the result tables of docs/tuning.md (Markdown) from the files that
scripts/run-tuning-experiments.sh writes: the eval JSONs and the validation
curves stored in the module files' metadata.

    scripts/tuning-tables.py [OUT_DIR]      (default models/experiments)

A result that is missing prints as "-", so the tables can be read while the
experiments still run.
"""
import json
import os
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "models", "experiments")
METHODS = ["prompt", "option", "option_adapter"]
# Option tuning of tasks without options or special tokens is prompt tuning
# exactly (same tensors, same start): those rows reuse prompt's modules.
SAME_AS_PROMPT = {("option", "next_click"), ("option", "explanation")}


def load(name):
    path = os.path.join(OUT, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def rows(name, held_out):
    """The eval row of one template kind (seen or held out) of a result."""
    d = load(name)
    if d is None:
        return None
    d = d if isinstance(d, list) else [d]
    picked = [r for r in d if r.get("held_out_template", False) == held_out]
    return picked[0] if picked else None


def module_meta(path):
    """The optrec_module metadata of a safetensors module file (its header:
    an 8-byte little-endian length, then JSON; see safetensors' format)."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"]["optrec_module"])


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def get(r, key):
    return None if r is None else r.get(key)


def result_name(method, task):
    if (method, task) in SAME_AS_PROMPT:
        method = "prompt"
    return f"test-{task}-{method}"


def main_table():
    base = load("baselines") or {}
    print("| method | CTR AUC | rating RMSE | rating MAE | rating acc | "
          "next-click HR@10 | next-click NDCG@10 | explanation BLEU-4 | "
          "ROUGE-L | perplexity |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ctr = base.get("ctr", {})
    pop = lambda t: base.get(t, {}).get("popularity")
    print(f"| oracle (choice model) | {fmt(get(ctr.get('oracle'), 'auc'))} "
          "| | | | | | | | |")
    print(f"| logistic regression | "
          f"{fmt(get(ctr.get('logistic_regression'), 'auc'))} | | | | | | | | |")
    print(f"| popularity | {fmt(get(pop('ctr'), 'auc'))} "
          f"| {fmt(get(pop('rating'), 'rmse'))} "
          f"| {fmt(get(pop('rating'), 'mae'))} "
          f"| {fmt(get(pop('rating'), 'accuracy'))} "
          f"| {fmt(get(pop('next_click'), 'hr@10'))} "
          f"| {fmt(get(pop('next_click'), 'ndcg@10'))} "
          f"| {fmt(get(pop('explanation'), 'bleu4'), 2)} "
          f"| {fmt(get(pop('explanation'), 'rouge_l'), 2)} | |")
    z = {t: rows(f"zeroshot-{t}", False)
         for t in ["ctr", "rating", "next_click", "explanation"]}
    print(f"| zero-shot | {fmt(get(z['ctr'], 'auc'))} "
          f"| {fmt(get(z['rating'], 'rmse'))} | {fmt(get(z['rating'], 'mae'))} "
          f"| {fmt(get(z['rating'], 'accuracy'))} "
          f"| {fmt(get(z['next_click'], 'hr@10'))}* "
          f"| {fmt(get(z['next_click'], 'ndcg@10'))}* "
          f"| {fmt(get(z['explanation'], 'bleu4'), 2)} "
          f"| {fmt(get(z['explanation'], 'rouge_l'), 2)} "
          f"| {fmt(get(z['explanation'], 'perplexity'), 0)} |")
    for held_out in (False, True):
        for m in METHODS:
            r = {t: rows(result_name(m, t), held_out)
                 for t in ["ctr", "rating", "next_click", "explanation"]}
            label = m + (" (held-out template)" if held_out else "")
            print(f"| {label} | {fmt(get(r['ctr'], 'auc'))} "
                  f"| {fmt(get(r['rating'], 'rmse'))} "
                  f"| {fmt(get(r['rating'], 'mae'))} "
                  f"| {fmt(get(r['rating'], 'accuracy'))} "
                  f"| {fmt(get(r['next_click'], 'hr@10'))} "
                  f"| {fmt(get(r['next_click'], 'ndcg@10'))} "
                  f"| {fmt(get(r['explanation'], 'bleu4'), 2)} "
                  f"| {fmt(get(r['explanation'], 'rouge_l'), 2)} "
                  f"| {fmt(get(r['explanation'], 'perplexity'), 1)} |")


def curve_of(task, method):
    if (method, task) in SAME_AS_PROMPT:
        method = "prompt"
    meta = module_meta(os.path.join(OUT, "modules",
                                    f"{task}.{method}.safetensors"))
    if meta is None:
        return None, None
    metric = meta["select_metric"]
    sign = -1.0 if metric.startswith("neg_") else 1.0
    key = metric[4:] if metric.startswith("neg_") else metric
    # Larger is better after the sign.
    return metric, [(c["step"], sign * c[key]) for c in meta["curve"]]


def curve_table():
    print("| task (metric) | method | best validation | at step | "
          "first step reaching prompt's best |")
    print("|---|---|---|---|---|")
    for task in ["ctr", "rating", "next_click", "explanation"]:
        metric, prompt = curve_of(task, "prompt")
        if prompt is None:
            continue
        target = max(v for _, v in prompt)
        for m in METHODS:
            if (m, task) in SAME_AS_PROMPT:
                continue
            _, c = curve_of(task, m)
            if c is None:
                print(f"| {task} ({metric}) | {m} | - | - | - |")
                continue
            best_step, best = max(c, key=lambda sv: (sv[1], -sv[0]))
            reach = next((s for s, v in c if v >= target), None)
            print(f"| {task} ({metric}) | {m} | {best:.4f} | {best_step} | "
                  f"{'never' if reach is None else reach} |")


P5 = [("rating", ["rmse", "mae", "accuracy"]),
      ("sequential", ["hr@10", "ndcg@10"]),
      ("p5_explanation", ["bleu4", "rouge_l"]),
      ("review_summary", ["bleu4", "rouge_l"]),
      ("direct", ["hr@1", "hr@5", "hr@10", "ndcg@10"])]


def p5_table():
    base = load("baselines") or {}
    print("| family | metric | popularity | seen template | "
          "held-out template |")
    print("|---|---|---|---|---|")
    for task, metrics in P5:
        seen, held = rows(f"p5-{task}", False), rows(f"p5-{task}", True)
        pop = base.get(task, {}).get("popularity")
        for k in metrics:
            print(f"| {task} | {k} | {fmt(get(pop, k))} | "
                  f"{fmt(get(seen, k))} | {fmt(get(held, k))} |")


print("### Test split\n")
main_table()
print("\n\\* zero-shot next-click: a seeded sample of 100 test users.\n")
print("### Validation curves\n")
curve_table()
print("\n### P5 families, seen and held-out templates\n")
p5_table()
