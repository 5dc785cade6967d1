"""Reruns committed results from their recorded commands with the current code on this machine and
compares every number they report (best epoch, epochs run, the valid and test metrics, the
sparsity groups' metrics): identical, or the largest difference and where. render.py lists the
records under the tables whose rows they rerun, so rows made at different commits can be shown to
differ by nothing but their variant: on a CPU the same code, seed and number of usable CPUs give
the same run (docs/results.md, "One seed, one run"). One record per run, commit and CPU count:
experiments/results/reruns/<run>__at_<commit>__<k>cpu.json, k the CPUs this process may use
(`taskset -c 0 python experiments/rerun.py ...` for one), which XLA's thread pool follows.

  python experiments/rerun.py experiments/results/tuned_table/dbbook2014__*__s2024.json
  python experiments/rerun.py --list FILES    # what would run, and what is recorded

A rerun already recorded is skipped; an interrupted one resumes in its work directory
(runs/rerun/<run>__at_<commit>__<k>cpu). What a recorded command reads from runs/, which is not
committed, is made first by its study's own `prepare` (the BPR-MF run that pretrained KGAT
configurations start from, kappa's structured interests), so a fresh checkout reruns any record.
A tree with changes other than result files gets `-dirty` records, which the tables show as such.
"""

import argparse
import importlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cikg_jax import logs, runtime  # noqa: E402
from cikg_jax.training import rundir  # noqa: E402
from experiments import runner  # noqa: E402

STUDY = "reruns"
COMPARED = (
  "best_epoch",
  "epochs_run",
  "valid",
  "test",
  "test_groups",
  "test_groups_equal_interactions",
)
logger = logging.getLogger("cikg_jax.experiments.rerun")


def numbers(result: Dict) -> Dict[str, float]:
  """{"test/recall@20": 0.29, "test_groups/0/recall@20": ...}: the compared numbers of a result."""
  out = {}

  def walk(x, key):
    if isinstance(x, dict):
      for k, v in x.items():
        walk(v, f"{key}/{k}")
    elif isinstance(x, (list, tuple)):
      for i, v in enumerate(x):
        walk(v, f"{key}/{i}")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
      out[key] = float(x)

  for k in COMPARED:
    if k in result:
      walk(result[k], k)
  return out


def compare(original: Dict, rerun: Dict) -> Dict:
  """identical (every compared number equal and none missing), the largest absolute difference
  and its key, the number of values compared, and the keys of every value that differs."""
  a, b = numbers(original), numbers(rerun)
  missing = sorted(set(a) ^ set(b))
  diffs = {k: abs(a[k] - b[k]) for k in set(a) & set(b)}
  worst = max(diffs, key=diffs.get) if diffs else None
  return {
    "identical": not missing and all(d == 0 for d in diffs.values()),
    "compared": len(diffs),
    "max_abs_diff": diffs[worst] if worst else 0.0,
    "max_abs_diff_at": worst if worst and diffs[worst] > 0 else None,
    "keys_in_one_only": missing[:20],
    "differs_at": sorted(k for k, d in diffs.items() if d != 0),  # NaN differs too
  }


def short(commit: str) -> str:
  """12 hex digits, `-dirty` where the tree differed from them."""
  return commit[:12] + ("-dirty" if commit.endswith("+dirty") else "")


def record_path(results_dir: str, run: str, commit: str, cpus: int) -> str:
  """One record per run, commit and CPU count (runtime.cpus_usable: it changes the numbers)."""
  return os.path.join(results_dir, STUDY, f"{run}__at_{short(commit)}__{cpus}cpu.json")


def prepare_inputs(original: Dict, data_dir: str = "") -> None:
  """Makes the inputs of a recorded run that live under runs/ (not committed), as its study's
  script does before its runs: the study module's `prepare` for the run's dataset. A study
  without a script (the tuner's BPR-MF records) has nothing to make."""
  study, dataset = original.get("study"), original.get("dataset")
  if not study or not dataset:
    return
  try:
    module = importlib.import_module(f"experiments.{study}")
  except ModuleNotFoundError as e:
    if e.name != f"experiments.{study}":
      raise
    return
  prepare = getattr(module, "prepare", None)
  if prepare is not None:
    prepare([dataset], data_dir or runner.data_root())


def rerun(path: str, results_dir: str, runs_dir: str, machine: str, log=logger.info) -> Dict:
  """Reruns the result file at `path` (its recorded command) and writes the comparison record."""
  with open(path) as f:
    original = json.load(f)
  command, run = original.get("command"), original.get("run")
  if not command or not run or "<workdir>" not in command:
    raise SystemExit(f"error: {path}: no recorded command with a <workdir> (not a study result)")
  commit, cpus = runner.git_commit(), runtime.cpus_usable()
  out_path = record_path(results_dir, run, commit, cpus)
  if os.path.exists(out_path):
    log(f"[rerun] {run}: rerun at {short(commit)} already recorded ({out_path})")
    with open(out_path) as f:
      return json.load(f)
  prepare_inputs(original)
  workdir = os.path.join(runs_dir, os.path.basename(out_path)[: -len(".json")])
  os.makedirs(workdir, exist_ok=True)
  argv = shlex.split(command.replace("<workdir>", workdir))
  argv[0] = sys.executable  # the recorded "python"
  log(f"[rerun] start {run} (made at {str(original.get('commit'))[:12]}): {command}")
  t0 = time.time()
  with open(os.path.join(workdir, "log.txt"), "a") as logf:
    rc = subprocess.run(argv, cwd=runner.ROOT, stdout=logf, stderr=logf).returncode
  res_path = os.path.join(workdir, "results.json")
  if rc != 0 or not os.path.exists(res_path):
    raise SystemExit(f"error: rerun of {run} failed (exit {rc}); log: {workdir}/log.txt")
  with open(res_path) as f:
    result = json.load(f)
  rec = {
    "run": run,
    "rerun_of": os.path.relpath(os.path.abspath(path), runner.ROOT),
    "original_commit": original.get("commit"),
    "original_machine": original.get("machine"),
    "commit": commit,
    "machine": machine or runner.default_machine(),
    "host": runner.host(),
    "original_host": original.get("host"),
    "cpus_usable": cpus,
    "original_cpus_usable": original.get("cpus_usable"),  # recorded since results carry it
    **compare(original, result),
    "best_epoch": result.get("best_epoch"),
    "original_best_epoch": original.get("best_epoch"),
    "test_recall@20": result.get("test", {}).get("recall@20"),
    "original_test_recall@20": original.get("test", {}).get("recall@20"),
    "wall_seconds": time.time() - t0,
    "command": command,
  }
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  rundir.write_json(out_path, rec, indent=1)
  state = "identical" if rec["identical"] else f"differs (max {rec['max_abs_diff']:.3g})"
  log(f"[rerun] done {run}: {state} over {rec['compared']} numbers ({rec['wall_seconds']:.0f} s)")
  return rec


def main(argv: Sequence[str] = None) -> List[Dict]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("files", nargs="+", help="result files of the studies (experiments/results/...)")
  p.add_argument("--list", action="store_true", help="list the reruns and whether they exist")
  p.add_argument("--machine", default="", help="where the reruns run (recorded)")
  p.add_argument("--results_dir", default=runner.RESULTS)
  p.add_argument("--runs_dir", default=os.path.join(runner.ROOT, "runs", "rerun"))
  args = p.parse_args(argv)
  logs.to_stderr()
  commit = runner.git_commit()
  if args.list:
    for f in args.files:
      with open(f) as fh:
        run = json.load(fh).get("run", "?")
      done = os.path.exists(record_path(args.results_dir, run, commit, runtime.cpus_usable()))
      print(f"{'done' if done else 'todo'}  {run}  at {short(commit)}")
    return []
  return [rerun(f, args.results_dir, args.runs_dir, args.machine) for f in args.files]


if __name__ == "__main__":
  main()
