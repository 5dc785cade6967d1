"""Renders the committed result files (experiments/results/*.json) as the README's markdown
tables, and optionally a figure of selection-metric curves from run directories.

  python experiments/render.py                       # tables to stdout
  python experiments/render.py --curves runs --png experiments/results/curves.png
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ["cikgrec-paper-valid", "cikgrec-release-valid", "cikgrec-release-test",
         "lightgcn-valid", "lightgcn-test"]


def load(results_dir):
  rows = []
  for f in sorted(glob.glob(os.path.join(results_dir, "*__*__*.json"))):
    if os.path.basename(f).startswith("bench"):
      continue
    r = json.load(open(f))
    dataset, variant, where = os.path.basename(f)[:-5].split("__")
    rows.append((dataset, variant, where, r))
  return rows


def table(rows):
  out = ["| dataset | model | views | selection | where | best / run epochs | R@20 | N@20 | R@50 "
         "| N@50 | R@100 | N@100 | sparsest-25% R@20 | train time |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  key = lambda r: (r[0], ORDER.index(r[1]) if r[1] in ORDER else 99, r[2])
  for dataset, variant, where, r in sorted(rows, key=key):
    model = "CIKGRec" if variant.startswith("cikgrec") else "LightGCN"
    if re.search(r"-s\d+$", variant):
      continue  # extra seeds go to the mean ± std table
    views = r.get("views", "") if model == "CIKGRec" else "-"
    t = r["test"]
    sparse = r["test_groups"][0]["recall@20"] if r.get("test_groups") else float("nan")
    out.append(
        f"| {dataset} | {model} | {views} | {r['selection']} | {where} | {r['best_epoch']} / "
        f"{r.get('epochs_run', '?')}{'' if r.get('stopped_early', True) and 'budget' not in r.get('stop_reason', '') else ' (budget)'} | "
        + " | ".join(f"{t[f'{m}@{k}']:.4f}" for k in (20, 50, 100) for m in ("recall", "ndcg"))
        + f" | {sparse:.4f} | {r['train_seconds'] / 60:.1f} min |")
  return "\n".join(out)


def seed_table(rows):
  """mean ± std over seeds (variants named VARIANT and VARIANT-sSEED) where there are several."""
  groups = {}
  for dataset, variant, where, r in rows:
    base = re.sub(r"-s\d+$", "", variant)
    groups.setdefault((dataset, base, where), []).append(r)
  out = ["| dataset | variant | where | seeds | R@20 | N@20 | R@50 | N@50 | best epochs |",
         "|---|---|---|---|---|---|---|---|---|"]
  for (dataset, base, where), rs in sorted(groups.items()):
    if len(rs) < 2:
      continue
    cell = lambda key: (f"{np.mean([r['test'][key] for r in rs]):.4f} ± "
                        f"{np.std([r['test'][key] for r in rs], ddof=1):.4f}")
    out.append(f"| {dataset} | {base} | {where} | {len(rs)} | {cell('recall@20')} | "
               f"{cell('ndcg@20')} | {cell('recall@50')} | {cell('ndcg@50')} | "
               f"{', '.join(str(r['best_epoch']) for r in rs)} |")
  return "\n".join(out) if len(out) > 2 else ""


def curves(runs_dir, png):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  datasets = sorted({os.path.basename(d).split("__")[0] for d in glob.glob(f"{runs_dir}/*__*")})
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    for variant in ORDER:
      path = os.path.join(runs_dir, f"{ds}__{variant}", "metrics.jsonl")
      if not os.path.exists(path):
        continue
      lines = [json.loads(x) for x in open(path)]
      sel = "valid" if variant.endswith("valid") else "test"
      ax.plot([x["epoch"] for x in lines], [x[f"{sel}/recall@20"] for x in lines],
              label=f"{variant} ({sel})", color=f"C{ORDER.index(variant)}")
    ax.set_title(f"{ds}: selection-split Recall@20 per epoch")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(png, dpi=90)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--results", default=os.path.join(ROOT, "experiments", "results"))
  p.add_argument("--curves", default="")
  p.add_argument("--png", default=os.path.join(ROOT, "experiments", "results", "curves.png"))
  args = p.parse_args()
  rows = load(args.results)
  print(table(rows))
  seeds = seed_table(rows)
  if seeds:
    print()
    print(seeds)
  if args.curves:
    curves(args.curves, args.png)


if __name__ == "__main__":
  main()
