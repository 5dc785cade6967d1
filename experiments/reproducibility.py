"""One seed, one run? Trains one configuration several times with XLA's deterministic mode on and
off (config.train.deterministic; it changes nothing on a CPU, whose kernels are deterministic), and
records, per propagation backend (model.backend: gather + segment_sum, or the CSR product), whether
the repeats of each mode log identical metrics, how far apart they are, and each mode's epoch time.

  python experiments/reproducibility.py --dataset dbbook2014 --model cikgrec --epochs 8 \
    --modes segment:off,segment:on,bcsr:off,bcsr:on
  python experiments/reproducibility.py --quick      # tiny synthetic data, 2 epochs

Every run is the training CLI in its own process (experiments/runner.py); all runs start at once,
so the epoch times of the modes are measured under the same load. XLA_FLAGS of the environment
reach every run and are recorded, e.g. XLA's scatter determinism expander (a prefix-scan
deterministic scatter, off by default in recent XLA, where the deterministic scatter is a
sequential loop): XLA_FLAGS=--xla_gpu_enable_scatter_determinism_expander=true --tag=expander. The result is
experiments/results/reproducibility/<dataset>__<model>__<backend>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cikg_jax.training import rundir
from experiments import runner

STUDY = "reproducibility"


def _numbers(record: Dict) -> Dict[str, float]:
  """A metrics.jsonl record's values, wall-clock times left out."""
  return {
    k: float(v)
    for k, v in record.items()
    if "seconds" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
  }


def read_log(workdir: str) -> List[Dict[str, float]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [_numbers(json.loads(line)) for line in f if line.strip()]


def _epoch_seconds(workdir: str) -> List[float]:
  """Each epoch's training time (train_seconds of metrics.jsonl; evaluation not included)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [float(json.loads(line)["train_seconds"]) for line in f if line.strip()]


def _median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs)) if xs else math.nan


def compare(logs: Sequence[List[Dict[str, float]]]) -> Dict[str, object]:
  """Whether all logs are identical, and the largest absolute difference of any logged value (loss
  terms, metrics, selection score) between the first log and each other, per epoch."""
  first, worst, where = logs[0], 0.0, None
  identical = all(log == first for log in logs[1:])
  for log in logs[1:]:
    if len(log) != len(first):
      return {"identical": False, "max_abs_diff": math.inf, "where": "epoch count"}
    for epoch, (a, b) in enumerate(zip(first, log)):
      for k in a.keys() | b.keys():
        d = abs(a.get(k, math.nan) - b.get(k, math.nan))
        if math.isnan(d) or d > worst:
          worst, where = (math.inf if math.isnan(d) else d), f"epoch {epoch}: {k}"
  return {"identical": identical, "max_abs_diff": worst, "where": where}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", default="dbbook2014")
  p.add_argument("--model", default="cikgrec", help="cikgrec or " + ", ".join(runner.MODEL_CONFIG))
  p.add_argument("--epochs", type=int, default=8)
  p.add_argument("--repeats", type=int, default=2, help="runs per mode")
  p.add_argument(
    "--modes",
    default="auto:on,auto:off",
    help="comma-separated <model.backend>:<on|off> (train.deterministic), e.g. bcsr:on,segment:off",
  )
  p.add_argument("--seed", type=int, default=2024)
  p.add_argument("--machine", default="", help="where it is measured (recorded)")
  p.add_argument("--runs_dir", default=os.path.join(runner.ROOT, "runs", STUDY))
  p.add_argument("--results_dir", default=runner.RESULTS)
  p.add_argument("--quick", action="store_true", help="tiny synthetic data, 2 epochs")
  p.add_argument("--tag", default="", help="appended to the result's file name (e.g. the flags)")
  args = p.parse_args(argv)
  if args.quick:
    args.dataset, args.epochs = "synthetic", 2
  if args.model != "cikgrec" and args.model not in runner.MODEL_CONFIG:
    raise SystemExit(f"error: --model: unknown model {args.model!r}")
  modes = []
  for mode in args.modes.split(","):
    b, _, det = mode.partition(":")
    if det not in ("on", "off"):
      raise SystemExit(f"error: --modes: {mode!r} is not <backend>:<on|off>")
    modes.append((b, det == "on"))
  runs = {}
  for b, det in modes:
    for r in range(args.repeats):
      run = runner.Run(
        args.dataset, f"{args.model}-{b}-det{int(det)}-r{r}", args.model, (), args.seed
      )
      workdir = os.path.join(args.runs_dir, run.name)
      if os.path.exists(workdir):  # a run that resumed would not be a repeat
        shutil.rmtree(workdir)
      os.makedirs(workdir)
      flags = [
        f"--config.train.max_epochs={args.epochs}",
        f"--config.train.min_epochs={args.epochs}",
        f"--config.train.deterministic={det}",
        f"--config.model.backend={b}",
        "--config.train.plot=False",
        "--config.selection=valid",
      ]
      runs[(b, det, r)] = (run.command(workdir, flags), workdir)
  t0 = time.time()
  procs = {}
  with contextlib.ExitStack() as logs:
    for key, (cmd, workdir) in runs.items():
      logf = logs.enter_context(open(os.path.join(workdir, "log.txt"), "w"))
      procs[key] = subprocess.Popen(
        cmd, cwd=runner.ROOT, stdout=logf, stderr=logf, env=runner.child_env()
      )
    failed = [k for k, proc in procs.items() if proc.wait() != 0]
  if failed:
    raise SystemExit(f"error: runs {failed} failed; logs under {args.runs_dir}")
  out: Dict[str, object] = {"dataset": args.dataset, "model": args.model, "seed": args.seed}
  for b, det in modes:
    workdirs = [runs[(b, det, r)][1] for r in range(args.repeats)]
    results = [json.load(open(os.path.join(w, "results.json"))) for w in workdirs]
    devices = " ".join(results[0]["devices"]).lower()
    platform = "gpu" if ("cuda" in devices or "gpu" in devices) else "cpu"
    out[f"{b}, deterministic={det}"] = {
      "propagation_backend": results[0]["backend"],
      **compare([read_log(w) for w in workdirs]),
      # per run: the first epoch (compilation included), and the median of the others
      "first_epoch_seconds": [_epoch_seconds(w)[0] for w in workdirs],
      "epoch_seconds_median": [_median(_epoch_seconds(w)[1:]) for w in workdirs],
    }
  median = lambda b, det: _median(out[f"{b}, deterministic={det}"]["epoch_seconds_median"])
  out.update(
    epochs=args.epochs,
    repeats=args.repeats,
    platform=platform,
    devices=results[0]["devices"],
    # each mode's epoch time (after the first epoch) over that of the first mode
    epoch_time_ratio={
      f"{b}, deterministic={det}": median(b, det) / median(*modes[0]) for b, det in modes
    },
    runs_at_once=len(runs),
    wall_seconds=time.time() - t0,
    commit=runner.git_commit(),
    machine=args.machine or runner.default_machine(),
    # the user's XLA flags (the runs add the deterministic mode's own: cikg_jax/runtime.py)
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    command=" ".join(["python", "experiments/reproducibility.py", *(argv or sys.argv[1:])]),
  )
  tag = f"__{args.tag}" if args.tag else ""
  path = os.path.join(
    args.results_dir, STUDY, f"{args.dataset}__{args.model}__{platform}{tag}.json"
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rundir.write_atomic(path, json.dumps(out, indent=1, default=str) + "\n")
  print(json.dumps(out, indent=1, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
