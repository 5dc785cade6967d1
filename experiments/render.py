"""Regenerates the results tables of docs/results.md (and their plot) from the committed result files.

  python experiments/render.py            # rewrite docs/results.md between the results markers + plots
  python experiments/render.py --check    # exit 1 if docs/results.md is not what the files give, or
                                          # if hand-written prose cites a number the tables lack
  python experiments/render.py --print    # the tables to stdout

Inputs: experiments/results/<study>/<dataset>__<variant>__s<seed>.json (experiments/runner.py).
Every table names the machines and code commits its numbers come from, and what its study lists
but no file holds yet. Hand-written prose about the results stands between conclusions markers, in
docs/results.md and in README.md's summary; every decimal number there must appear in the
generated tables, so prose cannot drift from them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "experiments", "results")
DOC = os.path.join(ROOT, "docs", "results.md")
# Files whose conclusions blocks cite the tables of DOC (besides DOC itself).
CITING = (os.path.join(ROOT, "README.md"),)
BEGIN, END = "<!-- results:begin (experiments/render.py) -->", "<!-- results:end -->"
METRICS = [f"{m}@{k}" for k in (20, 50, 100) for m in ("recall", "ndcg")]
SHORT = {f"{m}@{k}": f"{m[0].upper()}@{k}" for k in (20, 50, 100) for m in ("recall", "ndcg")}
MODEL_NAMES = {"cikgrec": "CIKGRec", "lightgcn": "LightGCN", "simgcl": "SimGCL", "kgat": "KGAT"}


def load_study(study: str, results_dir: str = RESULTS) -> List[Dict]:
  rows = []
  for f in sorted(glob.glob(os.path.join(results_dir, study, "*__*__s*.json"))):
    with open(f) as fh:
      r = json.load(fh)
    dataset, variant, seed = os.path.basename(f)[:-5].split("__")
    r.update(_dataset=dataset, _variant=variant, _seed=int(seed[1:]))
    rows.append(r)
  return rows


def by_variant(rows, dataset) -> Dict[str, List[Dict]]:
  out: Dict[str, List[Dict]] = {}
  for r in rows:
    if r["_dataset"] == dataset:
      out.setdefault(r["_variant"], []).append(r)
  return out


def values(rs, key, split="test"):
  return np.array([r[split][key] for r in rs], dtype=float)


def mean_std(x) -> str:
  if len(x) == 0:
    return "–"
  if len(x) == 1:
    return f"{x[0]:.4f}"
  return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def paired(a_rows, b_rows, get) -> Tuple[np.ndarray, np.ndarray]:
  """The two arms' values on the seeds both ran (runs of one seed share their data split and
  initialisation draws: seeds are paired across arms)."""
  a = {r["_seed"]: get(r) for r in a_rows}
  b = {r["_seed"]: get(r) for r in b_rows}
  common = sorted(k for k in a.keys() & b.keys() if a[k] is not None and b[k] is not None)
  return np.array([a[k] for k in common], float), np.array([b[k] for k in common], float)


def paired_p(a_rows, b_rows, get) -> Optional[float]:
  """Two-sided paired t-test over the common seeds (None below 2 pairs)."""
  a, b = paired(a_rows, b_rows, get)
  if len(a) < 2:
    return None
  from scipy import stats

  d = a - b
  if not np.any(d - d.mean()):  # no spread: the t statistic is undefined
    return 1.0 if not d.mean() else 0.0
  return float(stats.ttest_rel(a, b).pvalue)


def holm(ps: Sequence[Optional[float]]) -> List[Optional[float]]:
  """Holm's step-down adjustment of a family of p-values (None entries are not tests)."""
  idx = [i for i, p in enumerate(ps) if p is not None]
  order = sorted(idx, key=lambda i: ps[i])
  out: List[Optional[float]] = list(ps)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(order) - rank) * ps[i]))
    out[i] = running
  return out


def min_detectable(diff_sds: Sequence[float], n: int, alpha=0.05, power=0.8) -> Optional[float]:
  """Minimum detectable difference of a two-sided paired t-test with n pairs at (alpha, power),
  from the pooled standard deviation of the table's paired differences."""
  sds = [x for x in diff_sds if x is not None and np.isfinite(x)]
  if n < 2 or not sds:
    return None
  from scipy import stats

  sd = float(np.sqrt(np.mean(np.square(sds))))
  t = stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)
  return float(t * sd / np.sqrt(n))


def diff_sd(a_rows, b_rows, get) -> Optional[float]:
  a, b = paired(a_rows, b_rows, get)
  return float(np.std(a - b, ddof=1)) if len(a) >= 2 else None


def test_value(key, split="test"):
  return lambda r: r[split][key]


def group_value(scheme: str, g: int, key="recall@20"):
  field = "test_groups" if scheme == "quantile" else "test_groups_equal_interactions"

  def get(r):
    match = [x for x in (r.get(field) or []) if x["group"] == g]
    return match[0][key] if match else None

  return get


def mdd_note(sds, n) -> str:
  """`n`: the number of paired seeds, or the numbers the table's tests have (one value each)."""
  ns = sorted({int(k) for k in ([n] if np.ndim(n) == 0 else n) if k >= 2})
  found = [(k, min_detectable(sds, k)) for k in ns]
  found = [(k, m) for k, m in found if m is not None]
  if not found:
    return ""
  if len(found) == 1:
    ((k, m),) = found
    return (
      f" Minimum detectable difference of R@20 (paired t, {k} seeds, α = 0.05, power 0.8, from "
      f"the spread of this table's paired differences): {m:.4f}."
    )
  return (
    " Minimum detectable difference of R@20 (paired t, α = 0.05, power 0.8, from the spread of "
    "this table's paired differences): "
    + ", ".join(f"{m:.4f} with {k} paired seeds" for k, m in found)
    + "."
  )


def n_paired(a_rows, b_rows) -> int:
  return len(paired(a_rows, b_rows, lambda r: 0.0)[0])


def seeds_cell(rs, against_rs, is_reference: bool) -> str:
  """A row's seeds, and how many of them its test pairs with the row it is tested against
  when that is fewer."""
  k = n_paired(rs, against_rs)
  return str(len(rs)) if is_reference or k in (0, len(rs)) else f"{len(rs)} ({k} paired)"


def fmt_p(p) -> str:
  return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def group_values(rs, scheme: str, g: int, key="recall@20"):
  field = "test_groups" if scheme == "quantile" else "test_groups_equal_interactions"
  out = []
  for r in rs:
    groups = r.get(field) or []
    match = [x for x in groups if x["group"] == g]
    if match:
      out.append(match[0][key])
  return np.array(out, dtype=float)


def backend(machine: str) -> str:
  """ "gpu" or "cpu": the class of device a result's machine string names."""
  return "gpu" if re.search(r"NVIDIA|H100|H200|A100|cuda", machine, re.I) else "cpu"


def device(machine: str, host: Optional[Dict] = None) -> str:
  """The device class and the processor or GPU model: XLA compiles for the host's CPU, so CPU
  runs of one seed differ between CPU models. The CPU model comes from the record's `host` (read
  from the system) where it has one, else from the typed machine string."""
  kind = backend(machine)
  if kind == "gpu":
    return next((f"gpu ({m})" for m in ("H200", "H100", "A100") if m in machine), "gpu")
  cpu = (host or {}).get("cpu_model") or machine
  for needle, model in (("EPYC", "AMD EPYC"), ("Xeon", "Intel Xeon")):
    if needle in cpu:
      return f"cpu ({model})"
  if not (host or {}).get("cpu_model"):
    return "cpu"
  return f"cpu ({' '.join(re.sub(r'[(](R|TM)[)]', '', cpu).split())})"


def record_device(record: Dict, prefix: str = "") -> str:
  """device() of a result (prefix "") or of the original a rerun record reran ("original_")."""
  machine = machine_label(str(record.get(f"{prefix}machine", "?")))
  return device(machine, record.get(f"{prefix}host"))


def machine_label(machine: str) -> str:
  """A result file's machine string as the tables show it: the hardware, software and load."""
  return (
    str(machine)
    .replace("this project's 2-core machine", "a 2-core AMD EPYC VM")
    .replace("shared with development", "shared with other jobs")
    .replace("shared with tests and other jobs", "shared with other jobs")
  )


def origins(rows) -> str:
  """Where mixed rows come from: for each device kind and commit, the runs (dataset, variant and
  seeds) made there, so a reader sees which rows and seeds of a table share code and device."""
  by_origin: Dict[Tuple[str, str], Dict[str, List[int]]] = {}
  for r in rows:
    key = (record_device(r), str(r.get("commit", "?"))[:12])
    name = f"{r.get('dataset', '?')} {r.get('variant', '?')}"
    by_origin.setdefault(key, {}).setdefault(name, []).append(r.get("seed"))
  parts = []
  for (kind, commit), runs in sorted(by_origin.items()):
    by_seeds: Dict[Tuple, List[str]] = {}
    for name, seeds in runs.items():
      order = tuple(sorted(seeds, key=lambda x: (x != 2024, x if isinstance(x, int) else -1)))
      by_seeds.setdefault(order, []).append(name)
    groups = [
      f"seed{'s' if len(order) > 1 else ''} {', '.join(map(str, order))} of {', '.join(sorted(names))}"
      for order, names in sorted(by_seeds.items(), key=lambda kv: sorted(kv[1])[0])
    ]
    parts.append(f"{kind} at {commit}: {'; '.join(groups)}")
  return "Where: " + " | ".join(parts) + "."


def provenance(rows) -> str:
  machines = sorted({machine_label(r.get("machine", "?")) for r in rows})
  commits = sorted({str(r.get("commit", "?"))[:12] for r in rows})
  devices = sorted({record_device(r) for r in rows})
  mixed = ""
  if len(commits) > 1 or len(devices) > 1:
    mixed = (
      f"**Mixed provenance**: these rows come from {len(commits)} code commits and "
      f"{len(devices)} kind(s) of device ({', '.join(devices)}); differences between rows "
      "include that of code and device, not only of the variants. "
      f"{origins(rows)} "
    )
  return (
    f"{mixed}Machines: {'; '.join(machines)}. Code commits: {', '.join(commits)}. Rerun: "
    f"`python experiments/{{study}}.py` (see each script's docstring)."
  )


def rerun_lines(rows, results_dir: str = RESULTS) -> List[str]:
  """One line naming the reruns (experiments/rerun.py) of this table's rows: the commit and
  machine of each rerun against the row's, and whether every reported number came out the same."""
  runs = {r.get("run") for r in rows}
  recs = []
  for f in sorted(glob.glob(os.path.join(results_dir, "reruns", "*__at_*.json"))):
    with open(f) as fh:
      rec = json.load(fh)
    if rec.get("run") in runs:
      recs.append(rec)
  if not recs:
    return []
  cpus = lambda k: f"{k} usable CPU{'s' if k != 1 else ''}" if k else "usable CPUs not recorded"
  parts = []
  for rec in recs:
    same = (
      f"identical in all {rec['compared']} reported numbers"
      if rec["identical"]
      else f"differs, by up to {rec['max_abs_diff']:.2g} ({rec['max_abs_diff_at']})"
    )
    parts.append(
      f"{rec['run']} (made at {str(rec['original_commit'])[:12]}, "
      f"{record_device(rec, 'original_')}, "
      f"{cpus(rec.get('original_cpus_usable'))}) "
      f"rerun at {str(rec['commit'])[:12]}"
      f"{' (a tree with uncommitted changes)' if str(rec['commit']).endswith('+dirty') else ''} "
      f"({record_device(rec)}, {cpus(rec.get('cpus_usable'))}): {same}"
    )
  return [
    "Reruns of these rows from their recorded commands (`python experiments/rerun.py`): "
    + "; ".join(parts)
    + "."
  ]


def missing(study: str, rows, datasets, seeds) -> str:
  mod = __import__(f"experiments.{study}", fromlist=["runs"])
  have = {(r["_dataset"], r["_variant"], r["_seed"]) for r in rows}
  todo = [r for r in mod.runs(datasets, seeds) if (r.dataset, r.variant, r.seed) not in have]
  if not todo:
    return ""
  names = sorted({f"{r.dataset} {r.variant}" for r in todo})
  return (
    f"Not yet run ({len(todo)} run{'s' if len(todo) != 1 else ''} of seeds "
    f"{', '.join(map(str, seeds))}; compute-limited, they resume with the study script): "
    + "; ".join(f"{n} ×{sum(1 for r in todo if f'{r.dataset} {r.variant}' == n)}" for n in names)
    + "."
  )


# ---- the single-seed files of earlier sessions ------------------------------------------------
LEGACY_ORDER = [
  "cikgrec-paper-valid",
  "cikgrec-release-valid",
  "cikgrec-release-test",
  "lightgcn-valid",
  "lightgcn-test",
]


def legacy_table(results_dir: str) -> List[str]:
  """experiments/results/<dataset>__<variant>__<where>.json, from experiments/paper_tables.py of
  earlier sessions (seed 2024 unless the variant ends in -sSEED; seeds 1 and 2 of those files
  used a validation split that followed the training seed, before config.split_seed)."""
  rows = []
  for f in sorted(glob.glob(os.path.join(results_dir, "*__*__*.json"))):
    if os.path.basename(f).startswith("bench"):
      continue
    with open(f) as fh:
      r = json.load(fh)
    dataset, variant, where = os.path.basename(f)[:-5].split("__")
    rows.append((dataset, variant, where, r))
  if not rows:
    return []
  out = [
    "| dataset | variant | where | best / run epochs | R@20 | N@20 | R@50 | N@50 | R@100 "
    "| N@100 | sparsest-25% R@20 | train time |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  key = lambda r: (
    r[0],
    LEGACY_ORDER.index(re.sub(r"-s\d+$", "", r[1]))
    if re.sub(r"-s\d+$", "", r[1]) in LEGACY_ORDER
    else 99,
    r[1],
    r[2],
  )
  for dataset, variant, where, r in sorted(rows, key=key):
    t = r["test"]
    sparse = r["test_groups"][0]["recall@20"] if r.get("test_groups") else float("nan")
    budget = " (budget)" if "budget" in str(r.get("stop_reason", "")) else ""
    out.append(
      f"| {dataset} | {variant} | {where} | {r['best_epoch']} / {r.get('epochs_run', '?')}"
      f"{budget} | "
      + " | ".join(f"{t[m]:.4f}" for m in METRICS)
      + f" | {sparse:.4f} | {r['train_seconds'] / 60:.1f} min |"
    )
  return out


# ---- tables -----------------------------------------------------------------------------------
def main_table(rows, datasets, selection: str) -> List[str]:
  out = []
  for d in datasets:
    vs = {v: rs for v, rs in by_variant(rows, d).items() if v.endswith(f"-{selection}")}
    if not vs:
      continue
    out += [
      f"**{d}**, selection on {selection}:",
      "",
      "| model | seeds | " + " | ".join(SHORT[m] for m in METRICS) + " | best epochs |",
      "|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    order = sorted(vs, key=lambda v: (not v.startswith("cikgrec"), v))
    for v in order:
      rs = sorted(vs[v], key=lambda r: r["_seed"])
      name = MODEL_NAMES.get(v.split("-")[0], v)
      if v.startswith("cikgrec") and "-tuned" not in v:
        name += f" ({v.split('-')[1]} views)"
      out.append(
        f"| {name} | {len(rs)} | "
        + " | ".join(mean_std(values(rs, m)) for m in METRICS)
        + " | "
        + ", ".join(str(r["best_epoch"]) for r in rs)
        + " |"
      )
    cik = [v for v in vs if v.startswith("cikgrec")]
    base = [v for v in vs if not v.startswith("cikgrec")]
    if cik and base:
      c = vs[cik[0]]
      tests = []
      for m in ("recall@20", "ndcg@20"):
        best = max(base, key=lambda v: values(vs[v], m).mean())
        a, b = values(c, m), values(vs[best], m)
        tests.append((m, best, a, b, paired_p(c, vs[best], test_value(m))))
      adjusted = holm([t[-1] for t in tests])
      lines = [
        f"{SHORT[m]}: {100 * (a.mean() / b.mean() - 1):+.1f}% over "
        f"{MODEL_NAMES.get(best.split('-')[0], best)} (paired t over seeds, Holm-adjusted p = "
        f"{fmt_p(p)}, {len(a)} vs {len(b)} seeds)"
        for (m, best, a, b, _), p in zip(tests, adjusted)
      ]
      best20 = tests[0][1]
      note = mdd_note(
        [diff_sd(c, vs[best20], test_value("recall@20"))],
        len(paired(c, vs[best20], test_value("recall@20"))[0]),
      )
      out += ["", "CIKGRec against the best baseline: " + "; ".join(lines) + "." + note, ""]
    else:
      out.append("")
  return out


def knowledge_table(rows, datasets) -> List[str]:
  names = {
    "cikgrec-paper-valid": "shipped GPT-3.5 interests",
    "cikgrec-no_interest": "no interest nodes (and so no interest reconstruction)",
    "cikgrec-no_uir": "shipped interests without interest reconstruction",
    "cikgrec-shuffled_interest": "shuffled interests",
    "cikgrec-random_interest": "random interest nodes",
    "cikgrec-smollm2_interest": "SmolLM2-135M interests (leak-free)",
  }
  out = []
  for d in datasets:
    vs = by_variant(rows, d)
    if not vs:
      continue
    out += [
      f"**{d}** (validation selection; p: paired t-test over seeds against the shipped "
      "interests, Holm-adjusted over the table's tests; sparsest: the quarter of test users with "
      "the fewest training interactions, and the sparsest of four groups holding equal shares of "
      "all training interactions):",
      "",
      "| interests | seeds | R@20 | N@20 | p (R@20) | sparsest 25% R@20 | p (sparsest 25%) "
      "| sparsest equal-share R@20 |",
      "|---|---|---|---|---|---|---|---|",
    ]
    # (variant, against, label): each row against the shipped interests, and the interest nodes
    # with the reconstruction off on both sides.
    shown = [(v, "cikgrec-paper-valid", names[v]) for v in names if v in vs]
    if "cikgrec-no_interest" in vs and "cikgrec-no_uir" in vs:
      shown.append(
        (
          "cikgrec-no_interest",
          "cikgrec-no_uir",
          "no interest nodes vs shipped interests without reconstruction (p against the latter)",
        )
      )
    raw, sds = [], []
    for v, against, _ in shown:
      if v == against:
        raw += [None, None]
        continue
      raw += [
        paired_p(vs[v], vs[against], test_value("recall@20")),
        paired_p(vs[v], vs[against], group_value("quantile", 0)),
      ]
      sds.append(diff_sd(vs[v], vs[against], test_value("recall@20")))
    adjusted = holm(raw)
    for i, (v, against, label) in enumerate(shown):
      rs = vs[v]
      p, p_sparse = adjusted[2 * i], adjusted[2 * i + 1]
      sparse = group_values(rs, "quantile", 0)
      out.append(
        f"| {label} | {seeds_cell(rs, vs[against], v == against)} | "
        f"{mean_std(values(rs, 'recall@20'))} | "
        f"{mean_std(values(rs, 'ndcg@20'))} | {fmt_p(p)} | {mean_std(sparse)} | "
        f"{fmt_p(p_sparse)} | {mean_std(group_values(rs, 'equal', 0))} |"
      )
    note = mdd_note(sds, [n_paired(vs[v], vs[a]) for v, a, _ in shown if v != a])
    out += ["", note.strip()] if note else []
    out.append("")
  return out


def leak_table(rows, datasets) -> List[str]:
  """Do the shipped interests know the validation items? Their prompts are not shipped; if they
  were written from all of the release's train.txt, which holds this protocol's validation items,
  the interests' gain over a control is larger on the validation split than on test. Per seed:
  (gain on valid) - (gain on test), paired over seeds."""
  controls = {
    "cikgrec-no_interest": "no interest nodes",
    "cikgrec-shuffled_interest": "shuffled interests",
  }
  out = [
    "Gain of the shipped GPT-3.5 interests over a control in Recall@20, on the validation split "
    "(held out of training here, but part of the release's train.txt, which the interests were "
    "probably generated from: the prompts are not shipped) and on test (never in train.txt); p: paired t-test of the per-seed "
    "difference of the two gains, Holm-adjusted over this table:",
    "",
    "| dataset | control | seeds | gain on valid | gain on test | valid − test | p |",
    "|---|---|---|---|---|---|---|",
  ]
  lines, raw = [], []
  for d in datasets:
    vs = by_variant(rows, d)
    ship = vs.get("cikgrec-paper-valid", [])
    for v, label in controls.items():
      if v not in vs or not ship:
        continue
      sv, cv = paired(ship, vs[v], lambda r: r.get("valid", {}).get("recall@20"))
      st, ct = paired(ship, vs[v], test_value("recall@20"))
      if len(sv) != len(st) or not len(sv):
        continue
      gv, gt = sv - cv, st - ct
      diff = gv - gt
      p = None
      if len(diff) >= 2:
        from scipy import stats

        p = float(stats.ttest_1samp(diff, 0.0).pvalue) if np.any(diff - diff.mean()) else None
      raw.append(p)
      lines.append((d, label, len(diff), gv, gt, diff))
  if not lines:
    return []
  for (d, label, n, gv, gt, diff), p in zip(lines, holm(raw)):
    out.append(
      f"| {d} | {label} | {n} | {gv.mean():+.4f} | {gt.mean():+.4f} | {diff.mean():+.4f} | "
      f"{fmt_p(p)} |"
    )
  return out + [""]


def ablation_table(rows, datasets) -> List[str]:
  names = {
    "cikgrec-paper-valid": "full CIKGRec",
    "cikgrec-no_uir": "w/o interest reconstruction",
    "cikgrec-no_cl": "w/o contrastive learning",
    "cikgrec-no_interest": "w/o interest nodes (and so w/o interest reconstruction)",
    "cikgrec-no_kg": "w/o KG edges",
    "cikgrec-no_transe": "w/o TransE",
    "cikgrec-release-valid": "release views instead of paper views",
  }
  out = []
  for d in datasets:
    vs = by_variant(rows, d)
    if not vs:
      continue
    out += [
      f"**{d}** (validation selection; Δ and p against the full model, the last row against "
      "the variant without interest reconstruction, over the seeds both rows ran; p: paired "
      "t-test over seeds, Holm-adjusted over the table's tests):",
      "",
      "| variant | seeds | R@20 | N@20 | R@50 | ΔR@20 | p |",
      "|---|---|---|---|---|---|---|",
    ]
    # (variant, against, label): each row against the full model, and the unconfounded contrast
    # of interest nodes with the interest reconstruction off on both sides.
    rows_ = [(v, "cikgrec-paper-valid", names[v]) for v in names if v in vs]
    if "cikgrec-no_interest" in vs and "cikgrec-no_uir" in vs:
      rows_.append(
        (
          "cikgrec-no_interest",
          "cikgrec-no_uir",
          "w/o interest nodes vs w/o interest reconstruction (interest nodes alone, neither "
          "side reconstructs)",
        )
      )
    raw = [
      None if v == against else paired_p(vs[v], vs.get(against, []), test_value("recall@20"))
      for v, against, _ in rows_
    ]
    adjusted = holm(raw)
    sds = [
      diff_sd(vs[v], vs.get(against, []), test_value("recall@20"))
      for v, against, _ in rows_
      if v != against
    ]
    for (v, against, label), p in zip(rows_, adjusted):
      x = values(vs[v], "recall@20")
      # the mean per-seed difference over the seeds both rows ran, as the p-value pairs them
      a, b = paired(vs[v], vs.get(against, []), test_value("recall@20"))
      delta = f"{(a - b).mean():+.4f}" if len(a) and v != against else "–"
      out.append(
        f"| {label} | {seeds_cell(vs[v], vs.get(against, []), v == against)} | {mean_std(x)} | "
        f"{mean_std(values(vs[v], 'ndcg@20'))} | "
        f"{mean_std(values(vs[v], 'recall@50'))} | {delta} | {fmt_p(p)} |"
      )
    note = mdd_note(sds, [n_paired(vs[v], vs.get(a, [])) for v, a, _ in rows_ if v != a])
    out += ["", note.strip()] if note else []
    out.append("")
  return out


def schedule_table(rows, datasets, first: str = "schedule") -> List[str]:
  out = []
  for d in datasets:
    vs = by_variant(rows, d)
    if not vs:
      continue
    out += [
      f"**{d}** (validation selection; seeds per point in the table):",
      "",
      f"| {first} | seeds | R@20 | N@20 | best epochs |",
      "|---|---|---|---|---|",
    ]
    for v in sorted(vs):
      rs = vs[v]
      label = {"cikgrec-paper-valid": "exp, p0 0.05 → pmax (config)"}.get(
        v, v.replace("cikgrec-", "")
      )
      out.append(
        f"| {label} | {len(rs)} | {mean_std(values(rs, 'recall@20'))} | "
        f"{mean_std(values(rs, 'ndcg@20'))} | {', '.join(str(r['best_epoch']) for r in rs)} |"
      )
    out.append("")
  return out


def sparse_table(rows, datasets) -> List[str]:
  out = []
  for d in datasets:
    vs = {v: rs for v, rs in by_variant(rows, d).items() if v.endswith("-valid")}
    if not vs:
      continue
    for scheme, label in (
      ("quantile", "quartiles of users by training interactions"),
      ("equal", "four groups with equal shares of all training interactions"),
    ):
      field = "test_groups" if scheme == "quantile" else "test_groups_equal_interactions"
      first = next((r[field] for rs in vs.values() for r in rs if r.get(field)), None)
      if not first:
        continue
      heads = [
        f"g{g['group']}: {g['train_interactions'][0]}–{g['train_interactions'][1]} "
        f"({g['n_users']} users)"
        for g in first
      ]
      out += [
        f"**{d}**, Recall@20 by {label} (validation selection):",
        "",
        "| model | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
      ]
      for v in sorted(vs, key=lambda v: (not v.startswith("cikgrec"), v)):
        out.append(
          f"| {MODEL_NAMES.get(v.split('-')[0], v)} | "
          + " | ".join(mean_std(group_values(vs[v], scheme, g["group"])) for g in first)
          + " |"
        )
      out.append("")
  return out


def sparse_plot(rows, datasets, png) -> bool:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [
    (d, s)
    for d in datasets
    for s in ("quantile", "equal")
    if any(v.endswith("-valid") for v in by_variant(rows, d))
  ]
  if not panels:
    return False
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
  for ax, (d, scheme) in zip(axes[0], panels):
    vs = {v: rs for v, rs in by_variant(rows, d).items() if v.endswith("-valid")}
    order = sorted(vs, key=lambda v: (not v.startswith("cikgrec"), v))
    width = 0.8 / max(len(order), 1)
    for i, v in enumerate(order):
      means, stds = [], []
      for g in range(4):
        x = group_values(vs[v], scheme, g)
        means.append(x.mean() if len(x) else np.nan)
        stds.append(x.std(ddof=1) if len(x) > 1 else 0.0)
      ax.bar(
        np.arange(4) + i * width,
        means,
        width,
        yerr=stds,
        capsize=2,
        label=MODEL_NAMES.get(v.split("-")[0], v),
      )
    ax.set_xticks(np.arange(4) + 0.4 - width / 2)
    ax.set_xticklabels(["sparsest", "g1", "g2", "densest"])
    ax.set_title(
      f"{d}: {'quartiles' if scheme == 'quantile' else 'equal-interaction groups'}", fontsize=9
    )
    ax.set_ylabel("test Recall@20")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=80)
  plt.close(fig)
  return True


def efficiency_table(rows, datasets) -> List[str]:
  """Seconds per epoch and to the selected epoch, as the runs recorded them (machine-dependent:
  the GPU runs shared one H200 with up to 13 others, so a lone run is several times faster)."""
  out = [
    "| dataset | model | selection | machine | s / epoch (median) | epochs run | train min "
    "| setup s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  groups: Dict[tuple, List[Dict]] = {}
  for r in rows:
    key = (r["_dataset"], r["_variant"], machine_label(r.get("machine", "?")))
    groups.setdefault(key, []).append(r)
  for (d, v, m), rs in sorted(
    groups.items(),
    key=lambda kv: (datasets.index(kv[0][0]) if kv[0][0] in datasets else 9, kv[0][1]),
  ):
    if not all(r.get("epoch_seconds_median") and r.get("train_seconds") for r in rs):
      continue
    med = np.median([r["epoch_seconds_median"] for r in rs])
    short = re.sub(
      r"^1x NVIDIA (\S+), (jax [\d.]+), up to (\d+) runs.*",
      r"\1, \2, ≤\3 runs sharing it",
      m,
    )
    out.append(
      f"| {d} | {MODEL_NAMES.get(v.split('-')[0], v)} | {v.split('-')[-1]} | {short} | "
      f"{med:.2f} | {np.mean([r['epochs_run'] for r in rs]):.0f} | "
      f"{np.mean([r['train_seconds'] for r in rs]) / 60:.1f} | "
      f"{np.mean([r.get('setup_seconds') or 0 for r in rs]):.0f} |"
    )
  return out + [""]


def reproducibility_table(results_dir: str) -> List[str]:
  """experiments/reproducibility.py's records: per machine and mode, whether two runs of one seed
  logged identical values, their largest difference, and the epoch times."""
  files = sorted(glob.glob(os.path.join(results_dir, "reproducibility", "*.json")))
  if not files:
    return ["No results yet: `python experiments/reproducibility.py`.", ""]
  out = [
    "Two runs of one seed per mode, all of a record's runs at once on its machine "
    "(`python experiments/reproducibility.py`; every logged loss term and metric compared):",
    "",
    "| dataset | model | machine | propagation | XLA deterministic ops | repeats identical "
    "| largest difference | s / epoch | commit |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for f in files:
    rec = json.load(open(f))
    modes = [k for k in rec if ", deterministic=" in k]
    for mode in modes:
      m = rec[mode]
      if "first_epoch_seconds" in m:
        secs = (
          f"{np.median(m['epoch_seconds_median']):.2f} after a first epoch of "
          f"{np.median(m['first_epoch_seconds']):.1f}"
        )
      else:  # the trainer's median over all epochs, the first's compilation included
        secs = (
          f"{np.median(m['epoch_seconds_median']):.1f} ({rec['epochs']} epochs, compiling included)"
        )
      diff = m["max_abs_diff"]
      out.append(
        f"| {rec['dataset']} | {MODEL_NAMES.get(rec['model'], rec['model'])} | "
        f"{machine_label(rec['machine'])} | {m['propagation_backend']} | "
        f"{'on' if mode.endswith('True') else 'off'}"
        f"{' (no effect on a CPU)' if rec.get('platform') == 'cpu' else ''}"
        f"{' + ' + rec['xla_flags'] if rec.get('xla_flags') else ''} | "
        f"{'yes' if m['identical'] else 'no'} | "
        f"{'0' if diff == 0 else f'{diff:.1e}'}{'' if diff == 0 else ' (' + m['where'] + ')'} | "
        f"{secs} | {str(rec['commit'])[:12]} |"
      )
  return out + [""]


# the seeds a study's table expects, where not the default three
STUDY_SEEDS = {"schedules": (2024,), "kappa": (2024,)}


def current_tuned(rows, datasets) -> List[Dict]:
  """The tuned table's rows of the configurations its tuning studies name now (an earlier best
  configuration's runs stay on disk, out of the table)."""
  from experiments import tuned_table

  want = {(r.dataset, r.variant) for r in tuned_table.runs(datasets, tuned_table.SEEDS)}
  return [r for r in rows if (r["_dataset"], r["_variant"]) in want]


def untuned(datasets) -> List[str]:
  """The tuned table's note of the models whose tuning study is not finished (so not in it)."""
  from experiments import tune, tuned_table

  out = [
    f"{d} {MODEL_NAMES[m]}"
    for d in datasets
    for m in tuned_table.MODELS
    if tune.tuned(d, m) is None
  ]
  if not out:
    return []
  return [
    "Not in the table until their tuning study has its "
    f"{tune.TRIALS} trials ([tuning summary](../experiments/results/tuning/summary.md)): "
    + "; ".join(out)
    + ".",
    "",
  ]


def section(results_dir: str = RESULTS, plots: bool = True, root: str = "..") -> str:
  """The generated tables between the results markers; `root` is the repository root relative to
  the page they go in (links to the plot)."""
  datasets = ("dbbook2014", "book-crossing")
  seeds = (2024, 1, 2)
  out = [
    BEGIN,
    "",
    "Generated by `python experiments/render.py` from the files in "
    "`experiments/results/<study>/` (one JSON per run: command, commit, machine, wall time). "
    "Mean ± standard deviation over seeds. Tests are paired t-tests over the seeds both arms "
    "ran (a seed fixes the data split and the initialisation draws of every arm), Holm-adjusted "
    "over each table's tests; each table states its minimum detectable difference (a test with "
    "few seeds has little power: p > 0.05 does not show that two models are equal).",
    "",
  ]
  studies = [
    (
      "main_table",
      "Main table",
      lambda r: main_table(r, datasets, "valid") + main_table(r, datasets, "test"),
    ),
    (
      "tuned_table",
      "Main table, tuned configurations",
      lambda r: main_table(current_tuned(r, datasets), datasets, "valid") + untuned(datasets),
    ),
    (
      "user_knowledge",
      "User-side knowledge",
      lambda r: knowledge_table(r, datasets) + leak_table(r, datasets),
    ),
    ("main_table", "Sparse users", lambda r: sparse_table(r, datasets)),
    ("ablations", "Ablations", lambda r: ablation_table(r, datasets)),
    (
      "main_table",
      "Efficiency",
      lambda r: (
        [
          "Per run, mean over seeds, from the main "
          "table's result files (the CPU benchmarks of "
          "single steps are in [speed.md](speed.md)):",
          "",
        ]
        + efficiency_table(r, datasets)
      ),
    ),
    ("schedules", "Mask-rate schedules", lambda r: schedule_table(r, datasets)),
    (
      "kappa",
      "Number of interest clusters (kappa, SmolLM2 interests)",
      lambda r: schedule_table(r, datasets, first="interest clusters"),
    ),
  ]
  for study, title, render_fn in studies:
    rows = load_study(study, results_dir)
    out += [f"## {title}", ""]
    if not rows:
      out += [f"No results yet: `python experiments/{study}.py`.", ""]
      continue
    out += render_fn(rows)
    if title == "Sparse users":
      png = os.path.join(results_dir, "sparse_users.png")
      if plots:
        sparse_plot(rows, datasets, png)
      if os.path.exists(png):
        out += [f"![Recall@20 by user group]({root}/experiments/results/sparse_users.png)", ""]
    if title not in ("Sparse users", "Efficiency"):
      own = getattr(__import__(f"experiments.{study}", fromlist=["runs"]), "SEEDS", seeds)
      m = missing(study, rows, datasets, STUDY_SEEDS.get(study, own))
      out += [provenance(rows).replace("{study}", study)] + ([m] if m else [])
      out += rerun_lines(rows, results_dir) + [""]
  out += ["## One seed, one run", ""] + reproducibility_table(results_dir)
  # The single-seed files directly under experiments/results/ (legacy_table) record no code
  # commit, so they stay out of the tables (experiments/results/LEGACY.md).
  out.append(END)
  return "\n".join(out)


PROSE_BEGIN, PROSE_END = "<!-- conclusions:begin", "<!-- conclusions:end -->"
_DECIMAL = re.compile(r"(?<![\w.])[+-−]?(\d+\.\d+)(%?)")


def prose_blocks(text: str) -> List[str]:
  """The hand-written prose of every conclusions block of a page (the marker's own comment cut)."""
  out = []
  for part in text.split(PROSE_BEGIN)[1:]:
    prose = part.split(PROSE_END, 1)[0]
    out.append(prose.split("-->", 1)[1] if "-->" in prose.split("\n", 1)[0] else prose)
  return out


def unsupported_numbers(text: str, tables: Optional[str] = None) -> List[str]:
  """Decimal numbers of the hand-written conclusions (between conclusions markers) that the
  generated tables do not show: prose that drifted from them. `tables` defaults to the generated
  section of `text` itself."""
  if tables is None:
    if BEGIN not in text:
      return []
    tables = text.split(BEGIN, 1)[1].split(END, 1)[0]
  out = []
  for prose in prose_blocks(text):
    for m in _DECIMAL.finditer(prose):
      number, pct = m.group(1), m.group(2)
      if not re.search(r"(?<![\d.])" + re.escape(number + pct) + r"(?!\d)", tables):
        out.append(m.group(0))
  return out


def splice(doc: str, new: str, path: str = DOC) -> str:
  if BEGIN not in doc or END not in doc:
    raise SystemExit(f"{path}: the markers {BEGIN!r} and {END!r} are missing")
  head, rest = doc.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return head + new + tail


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--check", action="store_true", help="exit 1 if the page is out of date or prose drifted"
  )
  p.add_argument("--print", action="store_true", help="print the tables, write nothing")
  p.add_argument("--results", default=RESULTS)
  p.add_argument("--doc", default=DOC, help="the page holding the generated tables")
  p.add_argument(
    "--cite",
    action="append",
    default=None,
    help="another page whose conclusions blocks cite the tables (repeatable; default README.md)",
  )
  args = p.parse_args(argv)
  new = section(args.results, plots=not (args.check or args.print))
  if args.print:
    print(new)
    return 0
  with open(args.doc) as f:
    doc = f.read()
  updated = splice(doc, new, args.doc)
  tables = new.split(BEGIN, 1)[1].split(END, 1)[0]
  failed = False
  for path in [args.doc] + list(CITING if args.cite is None else args.cite):
    text = updated if path == args.doc else open(path).read()
    drifted = unsupported_numbers(text, tables)
    if drifted:
      failed = True
      print(
        f"{path}: the conclusions cite numbers the generated tables do not show: "
        + ", ".join(drifted),
        file=sys.stderr,
      )
  if args.check:
    if updated != doc:
      print(
        f"{args.doc}: the results tables are out of date; run python experiments/render.py",
        file=sys.stderr,
      )
      return 1
    return 1 if failed else 0
  with open(args.doc, "w") as f:
    f.write(updated)
  return 0


if __name__ == "__main__":
  sys.exit(main())
