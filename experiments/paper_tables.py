"""Runs the comparison matrix of the paper tables (datasets x {CIKGRec paper/release views,
LightGCN} x {valid, test} selection) and copies each run's results into experiments/results/.

  python experiments/paper_tables.py --datasets dbbook2014,book-crossing --parallel 1
  python experiments/paper_tables.py --variants cikgrec-paper-valid --datasets dbbook2014

Each run is `python -m cikg_jax.main` in its own process and workdir (runs/<dataset>__<variant>),
so an interrupted matrix resumes run by run. --machine labels where the numbers were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"dbbook2014": "configs/dbbook2014.py", "book-crossing": "configs/book_crossing.py",
           "ml1m": "configs/ml1m.py"}
VARIANTS = {
    "cikgrec-paper-valid": ("cikgrec", ["--config.views=paper", "--config.selection=valid"]),
    "cikgrec-release-valid": ("cikgrec", ["--config.views=release", "--config.selection=valid"]),
    "cikgrec-release-test": ("cikgrec", ["--config.views=release", "--config.selection=test"]),
    "lightgcn-valid": ("lightgcn", ["--config.selection=valid"]),
    "lightgcn-test": ("lightgcn", ["--config.selection=test"]),
}


def command(dataset: str, variant: str, workdir: str, extra):
  model, flags = VARIANTS[variant]
  config = CONFIGS[dataset] if model == "cikgrec" else f"configs/lightgcn.py:{dataset}"
  return [sys.executable, "-m", "cikg_jax.main", f"--config={config}", f"--workdir={workdir}",
          *flags, *extra]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--datasets", default="dbbook2014,book-crossing")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs"))
  p.add_argument("--results-dir", default=os.path.join(ROOT, "experiments", "results"))
  p.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU fits several)")
  p.add_argument("--machine", default=f"{platform.node()} ({os.cpu_count()} cpu)")
  p.add_argument("--extra", default="", help="extra --config.x=y flags, space separated")
  p.add_argument("--seeds", default="2024",
                 help="comma-separated seeds; runs of seeds other than 2024 get a -sSEED suffix")
  args = p.parse_args(argv)
  extra = args.extra.split()
  jobs = [(d, v, int(seed)) for seed in args.seeds.split(",") for d in args.datasets.split(",")
          for v in args.variants.split(",")]
  os.makedirs(args.results_dir, exist_ok=True)
  running = []
  env = dict(os.environ, PYTHONUNBUFFERED="1")

  def finish(job):
    (d, v, wd, cmd, proc, t0, log) = job
    log.close()
    res_path = os.path.join(wd, "results.json")
    if proc.returncode != 0 or not os.path.exists(res_path):
      print(f"FAILED {d} {v} (exit {proc.returncode}); see {wd}/log.txt", flush=True)
      return
    with open(res_path) as f:
      res = json.load(f)
    res.update(variant=v, machine=args.machine, wall_seconds=time.time() - t0,
               command=" ".join(["python"] + cmd[1:]))
    out = os.path.join(args.results_dir, f"{d}__{v}.json")
    with open(out, "w") as f:
      json.dump(res, f, indent=2)
    print(f"done {d} {v}: best epoch {res['best_epoch']}, test recall@20 "
          f"{res['test']['recall@20']:.4f} ndcg@20 {res['test']['ndcg@20']:.4f} -> {out}",
          flush=True)

  def reap():
    for job in list(running):
      if job[4].poll() is not None:
        running.remove(job)
        finish(job)

  for d, base_variant, seed in jobs:
    reap()
    while len(running) >= args.parallel:
      time.sleep(1)
      reap()
    v = base_variant if seed == 2024 else f"{base_variant}-s{seed}"
    wd = os.path.join(args.runs_dir, f"{d}__{v}")
    os.makedirs(wd, exist_ok=True)
    cmd = command(d, base_variant, wd, extra + [f"--config.seed={seed}"])
    log = open(os.path.join(wd, "log.txt"), "a")
    print("start", " ".join(cmd[1:]), flush=True)
    running.append((d, v, wd, cmd, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                                      env=env), time.time(), log))
  while running:
    time.sleep(1)
    reap()


if __name__ == "__main__":
  main()
