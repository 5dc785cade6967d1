"""Our KGAT against an independent one on the same split: LunaBlack/KGAT-pytorch (a PyTorch port of
the authors' TensorFlow code, no DGL; RecBole's KGAT builds its graph with DGL, whose newest PyPI
wheel, 2.1.0, does not import beside the CPU torch 2.13 here), both trained on the whole train.txt
and evaluated on test.txt with the same settings, and their test curves compared epoch by epoch.

  python experiments/kgat_reference.py --reference=/path/to/KGAT-pytorch --dataset=dbbook2014 \
    --patch --as_original --reference_python=/path/to/torch-venv/bin/python --max_seconds=4500
  python experiments/kgat_reference.py --compare_only --reference_log=... --ours_workdir=...

Settings, both sides: embedding and relation dimension 64, layers [64, 32, 16], message dropout
0.1, bi-interaction, random-walk normalised attention start refreshed once per epoch after TransR,
L2 1e-5 (CF and TransR), batches 1024 / 2048, Adam lr 1e-3 (its default is 1e-4; ours is RecBole's
1e-3, configs/kgat.py), no pretraining, seed 2024; CF batches of distinct users drawn uniformly
and TransR heads drawn uniformly, as the original's loader draws them. The reference evaluates
every 10th epoch; ours every epoch (its curve is read at the same epochs).

The reference needs one change to run on Python >= 3.11 (`random.sample` of a dict's keys, PY311,
applied by --patch). Where it departs from the original TensorFlow code, --as_original gives it
the original's choices, which ours follows (AS_ORIGINAL): LeakyReLU slope 0.2 (torch's default is
0.01) and tf.contrib's Glorot bounds for W_r, the user and entity tables and the layers' biases. Writes
experiments/results/kgat_reference/<dataset>[__<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Dict, List

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cikg_jax.training import rundir
from experiments import runner

STUDY = "kgat_reference"
EVAL = re.compile(
  r"CF Evaluation: Epoch (\d+) \| Total Time [\d.]+s \| Precision \[([\d.]+), ([\d.]+)\], "
  r"Recall \[([\d.]+), ([\d.]+)\], NDCG \[([\d.]+), ([\d.]+)\]"
)
EPOCH_TIME = re.compile(r"CF \+ KG Training: Epoch (\d+) \| Total Time ([\d.]+)s")
MEAN_LOSS = re.compile(
  r"(CF|KG) Training: Epoch (\d+) Total Iter \d+ \| Total Time [\d.]+s \| Iter Mean Loss ([\d.]+)"
)


# (file, old, new): Python >= 3.11 refuses random.sample of a dict's keys
PY311 = (
  (
    "data_loader/loader_base.py",
    "exist_users = user_dict.keys()",
    "exist_users = list(user_dict.keys())",
  ),
  (
    "data_loader/loader_base.py",
    "exist_heads = kg_dict.keys()",
    "exist_heads = list(kg_dict.keys())",
  ),
)
# where the port departs from the original TensorFlow code (Model/KGAT.py): tf.nn.leaky_relu's
# slope 0.2, and tf.contrib's xavier_initializer, whose fans multiply a 3-d shape's leading
# dimension in, on trans_W, on the user and entity tables separately, and on the biases b_gc,
# b_bi (shape [1, out]; torch's default is U(+-1/sqrt(in)))
AS_ORIGINAL = (
  ("model/KGAT.py", "self.activation = nn.LeakyReLU()", "self.activation = nn.LeakyReLU(0.2)"),
  (
    "model/KGAT.py",
    "nn.init.xavier_uniform_(self.trans_M)",
    "nn.init.uniform_(self.trans_M, -(6.0 / (self.n_relations * (self.embed_dim + "
    "self.relation_dim))) ** 0.5, (6.0 / (self.n_relations * (self.embed_dim + "
    "self.relation_dim))) ** 0.5)",
  ),
  (
    "model/KGAT.py",
    "            nn.init.xavier_uniform_(self.linear2.weight)",
    "            nn.init.xavier_uniform_(self.linear2.weight)\n"
    "            for b in (self.linear1.bias, self.linear2.bias):\n"
    "                nn.init.uniform_(b, -(6.0 / (1 + out_dim)) ** 0.5, (6.0 / (1 + out_dim)) ** 0.5)",
  ),
  (
    "model/KGAT.py",
    "            nn.init.xavier_uniform_(self.entity_user_embed.weight)",
    "            nn.init.xavier_uniform_(self.entity_user_embed.weight[: self.n_entities])\n"
    "            nn.init.xavier_uniform_(self.entity_user_embed.weight[self.n_entities :])",
  ),
)


def patch(checkout: str, changes) -> None:
  """Applies each (file, old, new) once; refuses a file that has neither (another version)."""
  for name, old, new in changes:
    path = os.path.join(checkout, name)
    text = open(path).read()
    if new in text:
      continue
    if text.count(old) != 1:
      raise SystemExit(f"error: {path}: expected one {old!r} (another version of the reference?)")
    open(path, "w").write(text.replace(old, new))


def reference_command(python: str, dataset: str, seed: int) -> List[str]:
  return [
    python,
    "main_kgat.py",
    f"--data_name={dataset}",
    "--use_pretrain=0",
    "--lr=0.001",
    "--Ks=[20, 50]",
    "--evaluate_every=10",
    "--cf_print_every=1000",
    "--kg_print_every=1000",
    f"--seed={seed}",
  ]


def ours_command(dataset: str, workdir: str, seed: int, max_seconds: float) -> List[str]:
  return [
    sys.executable,
    "-m",
    "cikg_jax.main",
    f"--config=configs/kgat.py:{dataset}",
    "--config.selection=test",
    f"--config.seed={seed}",
    f"--config.train.max_seconds={max_seconds:g}",
    "--config.train.plot=False",
    f"--workdir={workdir}",
  ]


def read_reference(log: str) -> Dict[str, object]:
  """The reference's test metrics at each evaluated epoch (1-based, as it counts) and epoch times."""
  text = open(log).read()
  curve = {
    int(m[0]): {
      "recall@20": float(m[3]),
      "recall@50": float(m[4]),
      "ndcg@20": float(m[5]),
      "ndcg@50": float(m[6]),
    }
    for m in EVAL.findall(text)
  }
  times = [float(t) for _, t in EPOCH_TIME.findall(text)]
  loss = {"cf": {}, "kg": {}}
  for part, epoch, value in MEAN_LOSS.findall(text):
    loss[part.lower()][int(epoch)] = float(value)
  return {"curve": curve, "epochs_run": len(times), "epoch_seconds": times, "mean_loss": loss}


def read_ours(workdir: str) -> Dict[str, object]:
  """Ours, on the reference's counting (epoch e here is its epoch e + 1)."""
  curve, times, loss = {}, [], {"cf": {}, "kg": {}}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      e = int(r["epoch"]) + 1
      curve[e] = {
        k: float(r[f"test/{k}"]) for k in ("recall@20", "recall@50", "ndcg@20", "ndcg@50")
      }
      times.append(float(r["train_seconds"]))
      loss["cf"][e], loss["kg"][e] = float(r["bpr"]) + float(r["reg"]), float(r["kge"])
  return {"curve": curve, "epochs_run": len(times), "epoch_seconds": times, "mean_loss": loss}


def compare(ref: Dict, ours: Dict) -> Dict[str, object]:
  both = sorted(set(ref["curve"]) & set(ours["curve"]))
  rows = [{"epoch": e, "reference": ref["curve"][e], "ours": ours["curve"][e]} for e in both]
  best = lambda side: max((side["curve"][e]["recall@20"], e) for e in both) if both else None
  return {
    "epochs_compared": both,
    "rows": rows,
    "best_reference": best(ref),
    "best_ours": best(ours),
  }


def markdown(rec: Dict) -> str:
  lines = [
    f"# KGAT against LunaBlack/KGAT-pytorch on {rec['dataset']}",
    "",
    "Generated by `python experiments/kgat_reference.py` (its docstring: settings, commands). "
    "Test metrics at the reference's evaluation epochs (counted from 1); both trained on the "
    "whole train.txt. The losses are each epoch's mean over its batches (CF: BPR + L2).",
    "",
    "| epoch | Recall@20 reference / ours | NDCG@20 reference / ours "
    "| CF loss reference / ours | TransR loss reference / ours |",
    "|---|---|---|---|---|",
  ]
  loss = lambda side, part, e: rec[side]["mean_loss"][part].get(e, float("nan"))
  for r in rec["comparison"]["rows"]:
    a, b, e = r["reference"], r["ours"], r["epoch"]
    lines.append(
      f"| {e} | {a['recall@20']:.4f} / {b['recall@20']:.4f} | {a['ndcg@20']:.4f} / "
      f"{b['ndcg@20']:.4f} | {loss('reference', 'cf', e):.4f} / {loss('ours', 'cf', e):.4f} | "
      f"{loss('reference', 'kg', e):.4f} / {loss('ours', 'kg', e):.4f} |"
    )
  med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")
  lines += [
    "",
    f"Epochs run: reference {rec['reference']['epochs_run']}, ours {rec['ours']['epochs_run']} "
    f"(median training seconds per epoch {med(rec['reference']['epoch_seconds']):.1f} and "
    f"{med(rec['ours']['epoch_seconds']):.1f}; machine: {rec['machine']}). Commit {rec['commit']}; "
    f"reference {rec['reference_source']}."
    + (f" Ours: {rec['ours_note']}." if "ours_note" in rec else ""),
    "",
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", default="dbbook2014")
  p.add_argument("--reference", default="", help="a KGAT-pytorch checkout")
  p.add_argument("--reference_python", default=sys.executable, help="a Python with torch")
  p.add_argument("--reference_source", default="LunaBlack/KGAT-pytorch 5d6ce2f")
  p.add_argument("--patch", action="store_true", help="apply the Python >= 3.11 change")
  p.add_argument(
    "--as_original",
    action="store_true",
    help="also the original's LeakyReLU slope and initialisers (AS_ORIGINAL)",
  )
  p.add_argument("--seed", type=int, default=2024)
  p.add_argument("--max_seconds", type=float, default=4500.0, help="wall time of each side")
  p.add_argument("--work_dir", default=os.path.join(runner.ROOT, "runs", STUDY))
  p.add_argument("--compare_only", action="store_true")
  p.add_argument("--reference_log", default="")
  p.add_argument("--ours_workdir", default="")
  p.add_argument("--machine", default="")
  p.add_argument("--tag", default="", help="appended to the result's file name")
  p.add_argument("--ours_note", default="", help="what distinguishes our run (recorded)")
  p.add_argument("--results_dir", default=runner.RESULTS)
  args = p.parse_args(argv)
  ref_log = args.reference_log or os.path.join(args.work_dir, "reference.log")
  ours_dir = args.ours_workdir or os.path.join(args.work_dir, "ours")
  if not args.compare_only:
    if not args.reference:
      raise SystemExit("error: --reference: the path of a KGAT-pytorch checkout is needed")
    data = os.path.join(args.reference, "datasets", args.dataset)
    os.makedirs(data, exist_ok=True)
    src = os.path.join(os.path.abspath(runner.data_root()), args.dataset)
    for name in ("train.txt", "test.txt", "kg_final.txt"):
      if not os.path.exists(os.path.join(data, name)):
        os.symlink(os.path.join(src, name), os.path.join(data, name))
    if args.patch or args.as_original:
      patch(args.reference, PY311 + (AS_ORIGINAL if args.as_original else ()))
    os.makedirs(args.work_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(ref_log, "w") as rl, open(os.path.join(args.work_dir, "ours.log"), "w") as ol:
      ref = subprocess.Popen(
        ["timeout", f"{args.max_seconds:g}"]
        + reference_command(args.reference_python, args.dataset, args.seed),
        cwd=args.reference,
        stdout=rl,
        stderr=rl,
        env=env,
      )
      ours = subprocess.Popen(
        ours_command(args.dataset, ours_dir, args.seed, args.max_seconds),
        cwd=runner.ROOT,
        stdout=ol,
        stderr=ol,
        env=runner.child_env(),
      )
      ref.wait()
      ours.wait()
  rec = {
    "dataset": args.dataset,
    "seed": args.seed,
    "reference_source": args.reference_source,
    "reference_command": " ".join(reference_command("python", args.dataset, args.seed)),
    "ours_command": " ".join(
      ["python"] + ours_command(args.dataset, "<workdir>", args.seed, args.max_seconds)[1:]
    ),
    "reference": read_reference(ref_log),
    "ours": read_ours(ours_dir),
    "commit": runner.git_commit(),
    "machine": args.machine or runner.default_machine(),
  }
  rec["comparison"] = compare(rec["reference"], rec["ours"])
  if args.ours_note:
    rec["ours_note"] = args.ours_note
  out = os.path.join(args.results_dir, STUDY, args.dataset + (f"__{args.tag}" if args.tag else ""))
  os.makedirs(os.path.dirname(out), exist_ok=True)
  rundir.write_atomic(out + ".json", json.dumps(rec, indent=1) + "\n")
  rundir.write_atomic(out + ".md", markdown(rec))
  print(markdown(rec))
  return 0


if __name__ == "__main__":
  sys.exit(main())
