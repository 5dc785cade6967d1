"""The shared runner of the experiment studies: every run is the training CLI in its own process
and work directory, finished runs are skipped, and each finished run leaves one small JSON under
experiments/results/<study>/ recording the command, the code commit, the machine and the wall time.

A study script (experiments/main_table.py, user_knowledge.py, ablations.py, schedules.py, kappa.py)
only lists its runs; `main()` here parses the common flags and runs them (experiments/grid.py is the
same command line over several studies):

  python experiments/main_table.py --datasets dbbook2014,book-crossing --seeds 2024,1,2
  python experiments/main_table.py --quick          # smoke mode: tiny synthetic data, 2 epochs
  python experiments/main_table.py --list           # print the runs and their state, run nothing

Runs are named `<dataset>__<variant>__s<seed>`. The same run (same name, same command) needed by two
studies is trained once: a result found in another study's folder is copied. An interrupted run
resumes from its checkpoints when the script is started again (the CLI resumes its work directory);
a run stops when the runner that started it dies, even by kill -9, so none is left holding its
directory.
Result files are written whole or not at all (cikg_jax.training.rundir), and a study's result folder is
locked while a runner fills it, so a second runner on it is refused instead of training the same
runs twice. Progress goes to the log (stderr); the counts by outcome are the result (stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import importlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cikg_jax import logs
from cikg_jax.training import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

logger = logging.getLogger("cikg_jax.experiments")
RESULTS = os.path.join(ROOT, "experiments", "results")
DATASETS = ("dbbook2014", "book-crossing")
SEEDS = (2024, 1, 2)
DATASET_CONFIG = {
  "dbbook2014": "configs/dbbook2014.py",
  "book-crossing": "configs/book_crossing.py",
  "ml1m": "configs/ml1m.py",
  "synthetic": "configs/tiny.py",
}
MODEL_CONFIG = {
  "lightgcn": "configs/lightgcn.py",
  "simgcl": "configs/simgcl.py",
  "kgat": "configs/kgat.py",
}
QUICK_FLAGS = ("--config.train.max_epochs=2", "--config.train.plot=False")
# Dropped in smoke mode: KGAT's pretrained rows come from a run smoke mode does not train (on the
# synthetic data a dataset's interest file is dropped too: it belongs to that dataset).
NOT_IN_QUICK = ("--config.kgat.pretrain=",)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: a model's config for a dataset, overrides and a seed."""

  dataset: str
  variant: str  # e.g. "cikgrec-paper-valid", "simgcl-valid", "cikgrec-no_cl"
  model: str  # "cikgrec" or a key of MODEL_CONFIG
  flags: Sequence[str] = ()  # --config.x=y overrides
  seed: int = 2024

  @property
  def name(self) -> str:
    return f"{self.dataset}__{self.variant}__s{self.seed}"

  def config_arg(self) -> str:
    if self.model == "cikgrec":  # a dataset without its own config gets the base values
      return DATASET_CONFIG.get(self.dataset) or f"configs/base.py:{self.dataset}"
    return f"{MODEL_CONFIG[self.model]}:{self.dataset}"

  def command(self, workdir: str, extra: Sequence[str] = ()) -> List[str]:
    return [
      sys.executable,
      "-m",
      "cikg_jax.main",
      f"--config={self.config_arg()}",
      f"--workdir={workdir}",
      *self.flags,
      f"--config.seed={self.seed}",
      *extra,
    ]


def git_commit() -> str:
  """HEAD, with `+dirty` when tracked files other than result files (experiments/results/, which
  runs append to) differ from it (results then say so); CIKG_COMMIT names it where the tree is a
  copy without .git (a device machine)."""
  if os.environ.get("CIKG_COMMIT"):
    return os.environ["CIKG_COMMIT"]
  try:
    head = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!experiments/results"],
      cwd=ROOT,
      capture_output=True,
      text=True,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return os.environ.get("CIKG_COMMIT", "unknown")


def data_root() -> str:
  """The datasets' folder: CIKG_DATA_DIR, else ../shared/data beside the repository."""
  return os.environ.get("CIKG_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")


def default_machine() -> str:
  """The machine a record names when the user did not describe it: host name, CPU count and the
  CPUs this process may use (a run under taskset sees fewer; XLA's thread pool follows them)."""
  from cikg_jax import runtime

  model = runtime.machine().get("cpu_model") or "cpu"
  return f"{platform.node()} ({model}, {os.cpu_count()} cpu, {runtime.cpus_usable()} usable)"


def host() -> Dict:
  """What a record states of its host beyond the user's --machine text, read from the system:
  XLA compiles for the host's CPU, so a seed's numbers differ between CPU models."""
  from cikg_jax import runtime

  m = runtime.machine()
  return {k: m[k] for k in ("cpu_model", "cpu_id", "vector_extensions", "logical_cpus", "jax")}


def child_env() -> Dict[str, str]:
  """The environment of a run this process starts: unbuffered output, and this PID as the one
  whose death stops the run (cikg_jax.runtime.stop_with_parent)."""
  from cikg_jax import runtime

  return dict(os.environ, PYTHONUNBUFFERED="1", **{runtime.STOP_WITH_PID: str(os.getpid())})


def wait_for_workdir(workdir: str, timeout: float = 300.0, log=logger.info) -> None:
  """Returns once no training holds `workdir` (one of a killed runner, being stopped), or after
  `timeout` seconds (the training CLI then names the holder)."""
  t0, said = time.time(), False
  while True:
    try:
      with rundir.hold(workdir, holder="training", hint=""):
        return
    except rundir.RunError:
      if time.time() - t0 > timeout:
        return
      if not said:
        log(f"waiting for the training that holds {workdir} to stop")
        said = True
      time.sleep(1.0)


def _portable(cmd: Sequence[str], workdir: str) -> str:
  """The command as a user would type it (python, repo-relative paths)."""
  out = ["python"] + list(cmd[1:])
  return " ".join(x.replace(workdir, "<workdir>") for x in out)


def find_result(run: Run, results_dir: str) -> Optional[str]:
  """A finished result of this run in any study folder (the same run is trained once)."""
  hits = sorted(glob.glob(os.path.join(results_dir, "*", f"{run.name}.json")))
  want = _portable(run.command("<workdir>"), "<workdir>")
  for h in hits:
    try:
      with open(h) as f:
        if json.load(f).get("command") == want:
          return h
    except (OSError, ValueError):
      continue
  return None


# In a run's work directory: the wall time of its budget-paused segments, so that the record of a
# resumed run states the whole run's wall time (a segment killed from outside is not counted).
WALL_FILE = "runner_wall_seconds.json"


def wall_time(workdir: str, segment: float, keep: bool) -> Dict[str, float]:
  """The run's wall time so far: earlier paused segments (from WALL_FILE) plus this `segment`
  seconds, as {"wall_seconds", "segments"}. `keep` (the run pauses here) stores the sum for the
  segment that resumes it; a run that ends calls `wall_time_recorded` once its record is written."""
  path = os.path.join(workdir, WALL_FILE)
  try:
    with open(path) as f:
      before = json.load(f)
  except (FileNotFoundError, ValueError):
    before = {"wall_seconds": 0.0, "segments": 0}
  wall = {"wall_seconds": before["wall_seconds"] + segment, "segments": before["segments"] + 1}
  if keep:
    rundir.write_json(path, wall)
  return wall


def wall_time_recorded(workdir: str) -> None:
  """The run's segments are in its record: no later run in the directory counts them again."""
  try:
    os.remove(os.path.join(workdir, WALL_FILE))
  except FileNotFoundError:
    pass


@dataclasses.dataclass
class Job:
  run: Run
  workdir: str
  proc: subprocess.Popen
  log: object
  t0: float


def run_grid(
  study_runs: Sequence[Tuple[str, Run]],
  *,
  results_dir: str = RESULTS,
  runs_dir: str = os.path.join(ROOT, "runs"),
  parallel: int = 1,
  machine: str = "",
  extra: Sequence[str] = (),
  deadline: float = 0.0,
  min_run_seconds: float = 30.0,
  log: Callable[[str], None] = logger.info,
) -> Dict[str, int]:
  """Trains every (study, run) without a result, in the given order, `parallel` at a time; a run
  listed by several studies is trained once and recorded in each. Returns counts by outcome.
  RunError if another runner holds one of the studies' result folders.

  `deadline` (time.time() value, 0 = none): each run gets the time left as its wall-time budget,
  and no run starts with less than `min_run_seconds` left; a run stopped by that budget is
  resumable and is not recorded."""
  machine = machine or default_machine()
  with contextlib.ExitStack() as held:
    for study in dict.fromkeys(s for s, _ in study_runs):
      folder = os.path.join(results_dir, study)
      os.makedirs(folder, exist_ok=True)
      held.enter_context(
        rundir.hold(
          folder,
          holder="experiment runner",
          hint="wait for it, stop it, or use another --results_dir",
        )
      )
    return _run_grid_locked(
      study_runs,
      results_dir=results_dir,
      runs_dir=runs_dir,
      parallel=parallel,
      machine=machine,
      extra=extra,
      deadline=deadline,
      min_run_seconds=min_run_seconds,
      log=log,
    )


def _run_grid_locked(
  study_runs, *, results_dir, runs_dir, parallel, machine, extra, deadline, min_run_seconds, log
) -> Dict[str, int]:
  label = ",".join(dict.fromkeys(s for s, _ in study_runs))
  env = child_env()
  commit = git_commit()
  counts = {"done": 0, "skipped": 0, "copied": 0, "failed": 0, "paused": 0, "not_started": 0}
  pending: List[Run] = []
  wanted_by: Dict[str, List[str]] = {}  # run name -> the studies that list it
  for study, r in study_runs:
    out = os.path.join(results_dir, study, f"{r.name}.json")
    found = find_result(r, results_dir)
    if found and os.path.abspath(found) == os.path.abspath(out):
      counts["skipped"] += 1
    elif found:
      with open(found, encoding="utf-8") as f:
        rundir.write_atomic(out, f.read())
      counts["copied"] += 1
    elif r.name in wanted_by:
      wanted_by[r.name].append(study)
    else:
      wanted_by[r.name] = [study]
      pending.append(r)
  study = label
  log(
    f"[{study}] {len(study_runs)} runs: {counts['skipped']} done before, {counts['copied']} "
    f"copied from other studies, {len(pending)} to train ({parallel} at a time)"
  )
  running: List[Job] = []

  def finish(job: Job):
    job.log.close()
    res_path = os.path.join(job.workdir, "results.json")
    rc = job.proc.returncode
    if rc != 0 or not os.path.exists(res_path):
      counts["failed"] += 1
      log(f"[{study}] FAILED {job.run.name} (exit {rc}); log: {job.workdir}/log.txt")
      return
    with open(res_path) as f:
      res = json.load(f)
    paused = "budget" in str(res.get("stop_reason", ""))
    wall = wall_time(job.workdir, time.time() - job.t0, keep=paused)
    if paused:
      counts["paused"] += 1
      log(
        f"[{study}] paused {job.run.name} at epoch {res.get('epochs_run')} (budget); rerun to "
        "continue"
      )
      return
    res.update(
      run=job.run.name,
      variant=job.run.variant,
      model=job.run.model,
      seed=job.run.seed,
      machine=machine,
      host=host(),
      commit=commit,
      wall_seconds=wall["wall_seconds"],
      wall_segments=wall["segments"],
      command=_portable(job.run.command(job.workdir), job.workdir),
    )
    for s in wanted_by[job.run.name]:
      rundir.write_json(
        os.path.join(results_dir, s, f"{job.run.name}.json"), dict(res, study=s), indent=1
      )
    wall_time_recorded(job.workdir)
    counts["done"] += 1
    t = res.get("test", {})
    log(
      f"[{study}] done {job.run.name}: best epoch {res['best_epoch']}, test recall@20 "
      f"{t.get('recall@20', float('nan')):.4f} ({wall['wall_seconds']:.0f} s)"
    )

  def reap():
    for job in list(running):
      if job.proc.poll() is not None:
        running.remove(job)
        finish(job)

  for i, r in enumerate(pending):
    while True:
      reap()
      if len(running) < parallel:
        break
      time.sleep(0.5)
    wd = os.path.join(runs_dir, r.name)
    os.makedirs(wd, exist_ok=True)
    wait_for_workdir(wd, log=log)  # before the time left is taken: the wait may be long
    left = deadline - time.time() if deadline else 0.0
    if deadline and left < min_run_seconds:
      counts["not_started"] = len(pending) - i
      log(f"[{study}] deadline: {len(pending) - i} runs not started")
      break
    budget = [f"--config.train.max_seconds={left - 10:.0f}"] if deadline else []
    cmd = r.command(wd, list(extra) + budget)
    logf = open(os.path.join(wd, "log.txt"), "a")
    log(f"[{study}] start {r.name} ({i + 1}/{len(pending)})")
    running.append(
      Job(
        r, wd, subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=logf, env=env), logf, time.time()
      )
    )
  while running:
    time.sleep(0.5)
    reap()
  log(f"[{study}] finished: {counts}")
  return counts


def quick(runs: Sequence[Run], keep_datasets: bool = False) -> List[Run]:
  """Smoke mode: each distinct variant once, for 2 epochs, on the tiny synthetic dataset or, with
  `keep_datasets` (datasets named on the command line), on each named dataset."""
  if keep_datasets:
    seen, out = set(), []
    for r in runs:
      if (r.dataset, r.variant) not in seen:
        seen.add((r.dataset, r.variant))
        flags = [f for f in r.flags if not f.startswith(NOT_IN_QUICK)]
        out.append(dataclasses.replace(r, flags=tuple(flags) + QUICK_FLAGS, seed=r.seed))
    return out
  seen, out = set(), []
  for r in runs:
    if r.variant in seen or r.dataset == "ml1m":
      continue
    seen.add(r.variant)
    flags = [f for f in r.flags if not f.startswith(NOT_IN_QUICK + ("--config.interest_file=",))]
    out.append(
      dataclasses.replace(r, dataset="synthetic", flags=tuple(flags) + QUICK_FLAGS, seed=2024)
    )
  return out


def study_runs(studies: Sequence[str], datasets, seeds) -> List[Tuple[str, Run]]:
  """(study, run) pairs of the study modules experiments/<study>.py, in the given order."""
  out = []
  for s in studies:
    out += [(s, r) for r in importlib.import_module(f"experiments.{s}").runs(datasets, seeds)]
  return out


def main(
  studies: Sequence[str], argv=None, doc: str = "", seeds: Sequence[int] = SEEDS
) -> Dict[str, int]:
  """The command line of every study script and of grid.py. A study module lists its runs with
  `runs(datasets, seeds)` and may make their inputs with `prepare(datasets, data_dir)`, called
  before training (not for --quick or --list)."""
  p = argparse.ArgumentParser(
    description=doc.split("\n\n")[0] if doc else studies[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--studies",
    default=",".join(studies),
    help="comma-separated study modules under experiments/, in priority order",
  )
  p.add_argument(
    "--datasets",
    default="",
    help=f"comma-separated dataset names: the paper's or any the trainer loads from the data "
    f"folder (default {','.join(DATASETS)})",
  )
  p.add_argument("--seeds", default=",".join(map(str, seeds)))
  p.add_argument(
    "--quick",
    action="store_true",
    help="2 epochs per variant, one seed: on tiny synthetic data, or on the --datasets named",
  )
  p.add_argument("--list", action="store_true", help="list the runs and whether they are done")
  p.add_argument("--only", default="", help="comma-separated substrings; keep matching runs")
  p.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU fits several)")
  p.add_argument("--machine", default="", help="where the numbers are measured (recorded)")
  # One flag style (underscores, as the trainer's); the hyphenated spellings still work.
  p.add_argument("--results_dir", "--results-dir", default="", help="default: experiments/results")
  p.add_argument(
    "--runs_dir",
    "--runs-dir",
    default=os.path.join(ROOT, "runs"),
    help="work directories of the runs",
  )
  p.add_argument(
    "--deadline_seconds",
    "--deadline-seconds",
    type=float,
    default=0.0,
    help="wall-time budget of the whole invocation: runs get what is left",
  )
  p.add_argument(
    "--min_run_seconds",
    "--min-run-seconds",
    type=float,
    default=30.0,
    help="start no run with less than this left before the deadline",
  )
  p.add_argument("--extra", default="", help="extra --config.x=y flags for every run")
  p.add_argument(
    "--order",
    choices=("seed", "study"),
    default="seed",
    help="seed: every run's first seed first; study: the studies in the given order",
  )
  args = p.parse_args(argv)
  logs.to_stderr()
  names = args.studies.split(",")
  datasets = (args.datasets or ",".join(DATASETS)).split(",")
  seeds = [int(s) for s in args.seeds.split(",")]
  pairs = study_runs(names, datasets, seeds)
  if args.only:
    pairs = [(s, r) for s, r in pairs if any(k in r.name for k in args.only.split(","))]
  results_dir = args.results_dir or RESULTS
  if args.quick:
    own = bool(args.datasets)
    pairs = [(s, r) for s in names for r in quick([r for s2, r in pairs if s2 == s], own)]
    results_dir = args.results_dir or os.path.join(args.runs_dir, "quick", "results")
  elif args.order == "seed":
    pairs = sorted(pairs, key=lambda sr: seeds.index(sr[1].seed))  # stable: study order kept
  if args.list:
    for s, r in pairs:
      state = "done" if find_result(r, results_dir) else "todo"
      print(f"{state}  {s}  {r.name}  {' '.join(r.command('<workdir>')[2:])}")
    return {}
  if not args.quick:
    data_dir = data_root()
    for s in dict.fromkeys(s for s, _ in pairs):
      prepare = getattr(importlib.import_module(f"experiments.{s}"), "prepare", None)
      if prepare is not None:
        prepare(datasets, data_dir)
  deadline = time.time() + args.deadline_seconds if args.deadline_seconds else 0.0
  try:
    counts = run_grid(
      pairs,
      results_dir=results_dir,
      runs_dir=args.runs_dir,
      parallel=args.parallel,
      machine=args.machine,
      extra=args.extra.split(),
      deadline=deadline,
      min_run_seconds=args.min_run_seconds,
    )
  except rundir.RunError as e:
    raise SystemExit(f"error: {e}") from None
  print(json.dumps(counts), flush=True)  # the result: runs by outcome
  return counts
