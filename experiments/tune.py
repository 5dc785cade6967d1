"""Hyper-parameter tuning with an equal budget per model: Optuna (TPE sampler, median pruner on the
validation curve), every trial a training run of the shared runner, selected on validation only.

  python experiments/tune.py --models=lightgcn --datasets=dbbook2014 --trials=20
  python experiments/tune.py --report          # the per-dataset tables from the stored studies
  python experiments/tune.py --quick           # tiny synthetic data, 3 trials of 4 epochs
  python experiments/tune.py --models=kgat --parallel=8   # 8 trials at once (a GPU)

Each (dataset, model) is one Optuna study stored in a journal file,
experiments/results/tuning/<dataset>__<model>.journal (JSON lines: every trial's parameters, its
validation curve, its state and the commit and machine that ran it). Starting the script again
resumes: a trial that was running when the process died is marked failed and its parameters are
queued again; its work directory (named by the parameters) holds its checkpoints, so the retried
run resumes where it stopped. Failed trials do not count towards the budget; pruned ones do.

The objective is the trainer's own selection score, Recall@K + NDCG@K on the validation split at
the best epoch (config.eval.select_k, 50). The score reported to the pruner at epoch t is the best
score up to t, and a trial is pruned when that is below the median of the earlier trials at the
same epoch, once the model's early-stopping floor (train.min_epochs) has passed: no model is judged
before its own configuration would let it stop. Test metrics are never read.

Every model's space holds its published configuration, which is the study's first trial; the
spaces follow each model's paper and code (SEARCH_SPACES, with their sources).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cikg_jax import logs  # noqa: E402
from cikg_jax.training import rundir
from experiments import rerun, runner  # noqa: E402

logger = logging.getLogger("cikg_jax.experiments.tune")

TUNING = os.path.join(runner.RESULTS, "tuning")
RUNS = os.path.join(runner.ROOT, "runs", "tune")  # the trials' work directories
MODELS = ("lightgcn", "simgcl", "kgat", "cikgrec")
TRIALS = 20
SAMPLER_SEED = 2024

# name -> (config key, kind, choices or (low, high)); "float_log" is log-uniform.
LR = ("train.lr", "float_log", (1e-4, 1e-2))
L2 = ("train.l2", "float_log", (1e-6, 1e-3))
LAYERS = ("model.num_layers", "int", (1, 4))
SEARCH_SPACES: Dict[str, Dict[str, tuple]] = {
  # LightGCN (He et al. 2020): lr and L2 searched in its paper's grid ranges; 1-4 layers (its
  # Fig. 4 studies 1-4).
  "lightgcn": {"lr": LR, "l2": L2, "num_layers": LAYERS},
  # SimGCL (Yu et al. 2022): lambda and eps over its paper's grids (Sec. 5.1 and Fig. 4/5),
  # 1-3 layers (its Table 3).
  "simgcl": {
    "lr": LR,
    "l2": L2,
    "num_layers": ("model.num_layers", "int", (1, 3)),
    "cl_weight": ("simgcl.weight", "categorical", (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)),
    "eps": ("simgcl.eps", "categorical", (0.01, 0.05, 0.1, 0.2, 0.5)),
  },
  # KGAT (Wang et al. 2019): lr {1e-4 .. 1e-2}, L2 on CF and TransR terms alike, its depth
  # study's layer sizes (Table 3: one to four layers of 64/32/16/8), and with or without the
  # BPR-MF pretraining its authors recommend (PRETRAIN: a run the tuner trains first).
  "kgat": {
    "lr": ("train.lr,kge.lr", "float_log", (1e-4, 1e-2)),
    "l2": ("train.l2,kge.l2", "float_log", (1e-6, 1e-3)),
    "layers": ("kgat.layers", "categorical", ("(64,)", "(64,32)", "(64,32,16)", "(64,32,16,8)")),
    "pretrain": ("kgat.pretrain", "categorical", (False, True)),
  },
  # CIKGRec (Hu et al. 2025): lr, L2, depth, the contrastive weight and temperature, the
  # reconstruction weight and the mask-rate schedule (its sensitivity studies vary these).
  "cikgrec": {
    "lr": LR,
    "l2": L2,
    "num_layers": LAYERS,
    "cl_weight": ("cl.weight", "float_log", (1e-3, 1e-1)),
    "tau": ("cl.tau", "categorical", (0.1, 0.15, 0.2, 0.3, 0.5)),
    "uir_weight": ("uir.weight", "float_log", (3e-3, 3e-1)),
    "schedule": ("uir.schedule", "categorical", ("exp", "lin", "const")),
    "pmax": ("uir.pmax", "categorical", (0.5, 0.65, 0.75, 0.95)),
  },
}


def pretrain_run(dataset: str) -> runner.Run:
  """BPR-MF (LightGCN without layers, its published lr and L2) selected on validation: the rows
  that KGAT's pretrained trials start from."""
  return runner.Run(
    dataset,
    "bprmf-pretrain",
    "lightgcn",
    ("--config.model.num_layers=0", "--config.selection=valid", "--config.train.plot=False"),
    runner.SEEDS[0],
  )


def pretrain_dir(dataset: str, runs_dir: str = RUNS) -> str:
  """The BPR-MF run's work directory, relative to the repository root (a --config flag value)."""
  return os.path.relpath(os.path.join(runs_dir, pretrain_run(dataset).name), runner.ROOT)


def train_pretrain_run(
  dataset: str,
  runs_dir: str = RUNS,
  tuning_dir: str = TUNING,
  extra: Sequence[str] = (),
  log: Callable[[str], None] = logger.info,
) -> None:
  """Trains the BPR-MF run of `pretrain_run` unless its work directory holds its results. Its
  committed record does not bring the checkpoints KGAT starts from (runs/ is not committed), so a
  fresh checkout trains the run again, records it beside its work directory and says whether it
  reproduced the committed record."""
  run = pretrain_run(dataset)
  if os.path.exists(os.path.join(runs_dir, run.name, "results.json")):
    return
  results_dir = os.path.join(tuning_dir, "pretrain")
  committed = runner.find_result(run, results_dir)
  if committed is not None:  # the record is there, the checkpoints are not: keep the record as is
    results_dir = os.path.join(runs_dir, "pretrain-retrained")
  log(f"training the pretraining run {run.name} first")
  counts = runner.run_grid(
    [("pretrain", run)],
    results_dir=results_dir,
    runs_dir=runs_dir,
    extra=extra,
    log=log,
  )
  if counts["failed"]:
    raise SystemExit(f"error: {run.name} failed; see {runs_dir}/{run.name}/log.txt")
  if committed is not None:
    with open(committed) as f, open(os.path.join(runs_dir, run.name, "results.json")) as g:
      same = rerun.compare(json.load(f), json.load(g))
    state = (
      "identical to"
      if same["identical"]
      else f"differs (up to {same['max_abs_diff']:.2g} at {same['max_abs_diff_at']}) from"
    )
    log(f"{run.name}: retrained, {state} the committed {os.path.relpath(committed, runner.ROOT)}")


def published(model: str, dataset: str) -> Dict[str, object]:
  """The model's own configuration for the dataset, as a point of its space (the first trial)."""
  sys.path.insert(0, runner.ROOT)
  from configs import datasets as dataset_configs

  if model == "cikgrec":
    c = dataset_configs.get_config(dataset)
  else:
    import importlib

    c = importlib.import_module(f"configs.{model}").get_config(dataset)
  out = {}
  for name, (keys, kind, choices) in SEARCH_SPACES[model].items():
    v = c
    for part in keys.split(",")[0].split("."):
      v = v[part]
    if name == "layers":
      v = "(" + ",".join(str(int(x)) for x in v) + ("," if len(v) == 1 else "") + ")"
    if name == "pretrain":
      v = bool(v)
    if kind == "categorical" and v not in choices:
      if dataset == "synthetic":  # the tiny config's smaller sizes: no published point
        return {}
      raise ValueError(f"{model} on {dataset}: published {keys}={v!r} is not in {choices}")
    out[name] = v
  return out


def config_flags(model: str, params: Dict[str, object], pretrain_dir: str = "") -> List[str]:
  """The trial's --config overrides; `pretrain_dir` is the BPR-MF run a pretrained trial loads."""
  flags = []
  for name, value in sorted(params.items()):
    keys = SEARCH_SPACES[model][name][0]
    if name == "pretrain":
      if value:
        flags.append(f"--config.kgat.pretrain={pretrain_dir}")
      continue
    flags += [f"--config.{k}={value}" for k in keys.split(",")]
  return flags


def params_id(params: Dict[str, object]) -> str:
  """The trial's run name: the same parameters are the same run (a retried trial resumes it)."""
  text = json.dumps(params, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:10]


def suggest(trial, model: str) -> Dict[str, object]:
  out = {}
  for name, (_, kind, choices) in SEARCH_SPACES[model].items():
    if kind == "float_log":
      out[name] = trial.suggest_float(name, *choices, log=True)
    elif kind == "int":
      out[name] = trial.suggest_int(name, *choices)
    else:
      out[name] = trial.suggest_categorical(name, list(choices))
  return out


def min_epochs(model: str, dataset: str) -> int:
  import importlib

  from configs import datasets as dataset_configs

  if model == "cikgrec":
    return int(dataset_configs.get_config(dataset).train.min_epochs)
  return int(importlib.import_module(f"configs.{model}").get_config(dataset).train.min_epochs)


def read_curve(metrics_path: str) -> List[float]:
  """Selection scores by epoch from a run's metrics.jsonl (a torn last line is ignored)."""
  scores: List[float] = []
  for line in rundir.complete_lines(metrics_path):  # the trainer may be writing the last one
    try:
      rec = json.loads(line)
    except ValueError:
      break
    if rec.get("epoch") == len(scores):
      scores.append(float(rec["selection_score"]))
  return scores


class Objective:
  """One trial = one training run (runner.Run) of the parameters, in a process of its own."""

  def __init__(
    self,
    model: str,
    dataset: str,
    runs_dir: str,
    extra: Sequence[str],
    deadline: float,
    log: Callable[[str], None],
    machine: str = "",
  ):
    self.machine = machine or runner.default_machine()
    self.model, self.dataset = model, dataset
    self.runs_dir, self.extra, self.deadline, self.log = runs_dir, list(extra), deadline, log

  def __call__(self, trial):
    import optuna

    params = suggest(trial, self.model)
    pid = params_id(params)
    run = runner.Run(
      self.dataset,
      f"{self.model}-tune-{pid}",
      self.model,
      tuple(config_flags(self.model, params, pretrain_dir(self.dataset, self.runs_dir)))
      + ("--config.selection=valid",),
      runner.SEEDS[0],
    )
    workdir = os.path.join(self.runs_dir, run.name)
    os.makedirs(workdir, exist_ok=True)
    cmd = run.command(workdir, self.extra + ["--config.train.plot=False"])
    trial.set_user_attr("run", run.name)
    trial.set_user_attr("command", runner._portable(cmd, workdir))
    trial.set_user_attr("commit", runner.git_commit())
    trial.set_user_attr("machine", self.machine)
    trial.set_user_attr("host", runner.host())
    self.log(f"trial {trial.number}: {run.name} {json.dumps(params, default=str)}")
    env = runner.child_env()
    runner.wait_for_workdir(workdir, log=self.log)
    t0 = time.time()  # after the wait: an earlier segment's training may still have been stopping
    with open(os.path.join(workdir, "log.txt"), "a") as logf:
      proc = subprocess.Popen(
        cmd, cwd=runner.ROOT, stdout=logf, stderr=logf, env=env, start_new_session=True
      )
      reported, best, pruned = 0, -math.inf, False
      metrics = os.path.join(workdir, "metrics.jsonl")
      try:
        while True:
          done = proc.poll() is not None
          curve = read_curve(metrics)
          for epoch in range(reported, len(curve)):
            best = max(best, curve[epoch])
            trial.report(best, epoch)
            if trial.should_prune():
              pruned = True
              self.log(f"trial {trial.number}: pruned at epoch {epoch} (best {best:.4f})")
              trial.set_user_attr("epochs", epoch + 1)
              _record_wall_time(trial, workdir, time.time() - t0)
              raise optuna.TrialPruned()
          reported = max(reported, len(curve))  # a resumed run may rewrite its log
          if done:
            break
          if (self.deadline and time.time() > self.deadline) or STOPPING.is_set():
            raise DeadlineReached()
          time.sleep(2.0)
      finally:
        if proc.poll() is None:
          segment = time.time() - t0
          os.killpg(proc.pid, signal.SIGTERM)
          try:
            proc.wait(60)
          except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
          if not pruned:  # interrupted (deadline, Ctrl-C): its retry counts this segment too
            try:
              runner.wall_time(workdir, segment, keep=True)
            except OSError as e:  # a full disk: the retry's record then undercounts its time
              self.log(f"trial {trial.number}: its wall time so far was not saved ({e})")
    results = os.path.join(workdir, "results.json")
    if proc.returncode != 0 or not os.path.exists(results):
      raise RuntimeError(f"{run.name} failed (exit {proc.returncode}); log: {workdir}/log.txt")
    with open(results) as f:
      res = json.load(f)
    valid = res["valid"]
    trial.set_user_attr("best_epoch", res["best_epoch"])
    trial.set_user_attr("epochs", res["epochs_run"])
    trial.set_user_attr("stop_reason", res.get("stop_reason", ""))
    trial.set_user_attr("valid", {k: v for k, v in valid.items() if "@" in k})
    wall = _record_wall_time(trial, workdir, time.time() - t0)
    score = read_curve(metrics)[res["best_epoch"]]  # the trainer's selection score there
    self.log(
      f"trial {trial.number}: done, best epoch {res['best_epoch']}, valid score {score:.4f} "
      f"({wall['wall_seconds']:.0f} s)"
    )
    return score


def _record_wall_time(trial, workdir: str, segment: float) -> Dict[str, float]:
  """The trial's wall time, with the segments of the interrupted trials it resumes."""
  wall = runner.wall_time(workdir, segment, keep=False)
  trial.set_user_attr("wall_seconds", wall["wall_seconds"])
  trial.set_user_attr("wall_segments", wall["segments"])
  runner.wall_time_recorded(workdir)
  return wall


class DeadlineReached(Exception):
  """The invocation's wall-time budget is spent (or the tuner was interrupted); the running trial
  is resumed next time."""


# Set when the tuner is interrupted: trials running in worker threads (--parallel), which the
# KeyboardInterrupt does not reach, stop their trainings and end.
STOPPING = threading.Event()


@contextlib.contextmanager
def _stopping_on_interrupt():
  """Ctrl-C sets STOPPING before the KeyboardInterrupt, so that the thread pool of a parallel
  batch, which waits for its trials on the way out, is not kept waiting for whole trainings."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def interrupt(signum, frame):
    STOPPING.set()
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGINT, interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def storage_for(path: str):
  import optuna
  from optuna.storages import journal

  return optuna.storages.JournalStorage(journal.JournalFileBackend(path))


def load_study(dataset: str, model: str, tuning_dir: str, min_epochs_: int):
  import optuna

  name = f"{dataset}__{model}"
  study = optuna.create_study(
    study_name=name,
    storage=storage_for(os.path.join(tuning_dir, f"{name}.journal")),
    direction="maximize",
    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min_epochs_),
    load_if_exists=True,
  )
  # Seeded by the trials so far: a resumed study draws on, instead of replaying the proposals of
  # its first invocation (the same seed would propose the same random start-up points again).
  study.sampler = optuna.samplers.TPESampler(
    seed=SAMPLER_SEED + len(study.trials), n_startup_trials=5
  )
  return study


def settled(study, states) -> list:
  """The study's trials in `states`, a configuration tried more than once counted once (its
  first trial): equal budgets count distinct configurations."""
  seen, out = set(), []
  for t in study.trials:
    key = json.dumps(_params(t), sort_keys=True)
    if t.state in states and key not in seen:
      seen.add(key)
      out.append(t)
  return out


def counted(study) -> int:
  from optuna.trial import TrialState

  return len(settled(study, (TrialState.COMPLETE, TrialState.PRUNED)))


def _params(trial) -> dict:
  """A trial's parameters; a queued trial holds them as its fixed parameters until it runs."""
  return trial.params or trial.system_attrs.get("fixed_params", {})


RETRIES = 2  # a trial's parameters are tried at most 1 + RETRIES times


def requeue_interrupted(study, log) -> None:
  """Trials left RUNNING by a process that died are failed, and their parameters queued again;
  so are the parameters of a failed trial (a run that stopped on a missing data directory, a full
  disk) that has not completed since, up to RETRIES times: the budget is spent on the
  parameters the sampler chose, not on the machine's accidents."""
  from optuna.trial import TrialState

  for t in study.trials:
    if t.state == TrialState.RUNNING:
      study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
      log(f"{study.study_name}: trial {t.number} was interrupted")
  trials = study.get_trials(deepcopy=False)
  kept = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
  done = [_params(t) for t in trials if t.state in kept]
  failures: Dict[str, List] = {}
  for t in trials:
    if t.state == TrialState.FAIL and t.params not in done:
      failures.setdefault(json.dumps(t.params, sort_keys=True), []).append(t)
  for failed in failures.values():
    last = failed[-1]
    if len(failed) > RETRIES:
      log(f"{study.study_name}: trial {last.number} failed {len(failed)} times; not retried")
      continue
    keep = {k: v for k, v in last.user_attrs.items() if k == "published"}
    study.enqueue_trial(last.params, user_attrs={**keep, "retry_of": last.number})
    log(f"{study.study_name}: trial {last.number} queued again")


def study_lock(journal: str) -> contextlib.AbstractContextManager:
  """One tuner per study: a second one would run the same queued trial twice. The lock is on the
  study's journal itself (created empty if new; Optuna appends to it and never replaces it), so no
  lock file can be removed to let a second tuner in. RunError if another tuner holds it."""
  with open(journal, "a"):
    pass
  return rundir.hold(
    journal, holder="tuner", hint="wait for it, stop it, or use another --tuning_dir"
  )


def tune(
  dataset: str,
  model: str,
  *,
  trials: int,
  tuning_dir: str,
  runs_dir: str,
  extra: Sequence[str] = (),
  deadline: float = 0.0,
  parallel: int = 1,
  machine: str = "",
  log: Callable[[str], None] = logger.info,
) -> Optional[int]:
  """Runs the study until `trials` trials are complete or pruned, `parallel` at a time (a GPU
  trains several at once); returns the number counted."""
  import optuna
  from optuna.trial import TrialState

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  os.makedirs(tuning_dir, exist_ok=True)
  os.makedirs(runs_dir, exist_ok=True)
  name = f"{dataset}__{model}"
  with study_lock(os.path.join(tuning_dir, f"{name}.journal")):
    study = load_study(dataset, model, tuning_dir, min_epochs(model, dataset))
    requeue_interrupted(study, log)
    if "pretrain" in SEARCH_SPACES[model]:
      train_pretrain_run(dataset, runs_dir, tuning_dir, extra, lambda s: log(f"[{name}] {s}"))
    first = published(model, dataset)
    if not study.trials and first:
      study.enqueue_trial(first, user_attrs={"published": True})
    objective = Objective(
      model, dataset, runs_dir, extra, deadline, lambda s: log(f"[{name}] {s}"), machine
    )
    while counted(study) < trials:
      if deadline and time.time() > deadline:
        log(f"[{name}] deadline: {counted(study)}/{trials} trials counted; rerun to continue")
        return counted(study)
      n = max(1, min(parallel, trials - counted(study)))
      failed_before = {t.number for t in study.trials if t.state == TrialState.FAIL}
      try:
        with _stopping_on_interrupt():
          study.optimize(objective, n_trials=n, n_jobs=n, catch=(RuntimeError,))
      except DeadlineReached:
        log(f"[{name}] deadline inside a trial; it resumes when the script is run again")
        return counted(study)
      # queued trials (the published one, retries) are older than the batch: compare by state
      failed = [
        t.number
        for t in study.trials
        if t.state == TrialState.FAIL and t.number not in failed_before
      ]
      if failed:
        log(f"[{name}] trial(s) {failed} failed; stopping (see their logs)")
        return counted(study)
    log(f"[{name}] {counted(study)} trials counted")
    return counted(study)


def summarize(study) -> Dict[str, object]:
  from optuna.trial import TrialState

  counted_trials = settled(study, (TrialState.COMPLETE, TrialState.PRUNED))
  complete = [t for t in counted_trials if t.state == TrialState.COMPLETE]
  pruned = [t for t in counted_trials if t.state == TrialState.PRUNED]
  failed = [t for t in study.trials if t.state == TrialState.FAIL]
  out: Dict[str, object] = {
    "study": study.study_name,
    "complete": len(complete),
    "pruned": len(pruned),
    "failed": len(failed),
    "running": sum(t.state == TrialState.RUNNING for t in study.trials),
  }
  if complete:
    best = max(complete, key=lambda t: t.value)
    values = sorted(t.value for t in complete)
    published_trial = next((t for t in complete if t.user_attrs.get("published")), None)
    out.update(
      best_trial=best.number,
      best_value=best.value,
      best_params=best.params,
      best_valid=best.user_attrs.get("valid", {}),
      best_command=best.user_attrs.get("command", ""),
      best_commit=best.user_attrs.get("commit", ""),
      values_min=values[0],
      values_median=statistics.median(values),
      values_max=values[-1],
      published_value=published_trial.value if published_trial else None,
    )
  return out


BEST_FILE = "best.json"  # next to the journals: each study's trials counted and best trial


def tuned(dataset: str, model: str, tuning_dir: str = "", trials: int = 0):
  """The best complete trial's parameters of a finished study (`trials`, default TRIALS,
  counted; `tuning_dir` default TUNING), else None. Read from the studies' BEST_FILE, which
  `report` writes from the journals (so the final runs need no Optuna, e.g. on a GPU machine)."""
  tuning_dir, trials = tuning_dir or TUNING, trials or TRIALS
  path = os.path.join(tuning_dir, BEST_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    study = json.load(f).get(f"{dataset}__{model}")
  if not study or study["counted"] < trials or "best_params" not in study:
    return None
  return study["best_params"]


def summaries(tuning_dir: str) -> Dict[str, Dict[str, object]]:
  """{<dataset>__<model>: summarize(study)} of the journals in `tuning_dir`."""
  import glob

  import optuna

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  out = {}
  for path in sorted(glob.glob(os.path.join(tuning_dir, "*.journal"))):
    if os.path.getsize(path) == 0:  # locked by a tuner that stopped before creating its study
      continue
    name = os.path.basename(path)[: -len(".journal")]
    study = optuna.load_study(study_name=name, storage=storage_for(path))
    out[name] = dict(summarize(study), counted=counted(study))
  return out


def best_file_text(studies: Dict[str, Dict[str, object]]) -> str:
  """BEST_FILE's content: per study the trials counted and its best complete trial."""
  keys = ("counted", "best_trial", "best_value", "best_params", "best_commit")
  out = {name: {k: s[k] for k in keys if k in s} for name, s in sorted(studies.items())}
  return json.dumps(out, indent=1, sort_keys=True, default=str) + "\n"


def report(tuning_dir: str, out_path: str = "") -> str:
  """Markdown: a table per dataset (trials, best trial, its config, the spread of the trials).
  With `out_path` it is written there, and BEST_FILE next to it."""
  studies = summaries(tuning_dir)
  rows: Dict[str, List[Dict[str, object]]] = {}
  for name, summary in studies.items():
    dataset, model = name.split("__")
    rows.setdefault(dataset, []).append(dict(summary, model=model))
  lines = [
    "Tuning studies (experiments/tune.py): the score is validation Recall@50 + NDCG@50 at the "
    "best epoch; the spread is over complete trials; the published configuration is trial 0; "
    "a configuration tried twice counts once.",
    "",
  ]
  for dataset, models in rows.items():
    lines += [
      f"### {dataset}",
      "",
      "| model | complete / pruned / failed | best trial | best score | published | "
      "min / median / max | best config |",
      "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(models, key=lambda r: MODELS.index(r["model"]) if r["model"] in MODELS else 9):
      if "best_trial" in r:
        cfg = ", ".join(
          f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
          for k, v in sorted(r["best_params"].items())
        )
        pub = "-" if r["published_value"] is None else f"{r['published_value']:.4f}"
        lines.append(
          f"| {r['model']} | {r['complete']} / {r['pruned']} / {r['failed']} | {r['best_trial']} "
          f"| {r['best_value']:.4f} | {pub} | {r['values_min']:.4f} / {r['values_median']:.4f} / "
          f"{r['values_max']:.4f} | {cfg} |"
        )
      else:
        lines.append(
          f"| {r['model']} | {r['complete']} / {r['pruned']} / {r['failed']} | - | - | - | - | - |"
        )
    lines.append("")
  text = "\n".join(lines)
  if out_path:
    rundir.write_atomic(out_path, text + "\n")
    rundir.write_atomic(os.path.join(os.path.dirname(out_path), BEST_FILE), best_file_text(studies))
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--datasets", default=",".join(runner.DATASETS))
  p.add_argument("--trials", type=int, default=TRIALS, help="complete + pruned trials per study")
  p.add_argument("--quick", action="store_true", help="tiny synthetic data, 3 trials of 4 epochs")
  p.add_argument("--report", action="store_true", help="print the tables, run nothing")
  p.add_argument("--tuning_dir", default="")
  p.add_argument("--runs_dir", default=RUNS)
  p.add_argument("--deadline_seconds", type=float, default=0.0, help="wall-time budget")
  p.add_argument("--extra", default="", help="extra --config.x=y flags for every trial")
  p.add_argument(
    "--parallel", type=int, default=1, help="trials of a study at once (a GPU fits several)"
  )
  p.add_argument("--machine", default="", help="where the trials run (recorded in each)")
  args = p.parse_args(argv)
  logs.to_stderr()
  tuning_dir = args.tuning_dir or TUNING
  extra = args.extra.split()
  datasets, trials = args.datasets.split(","), args.trials
  if args.quick:
    datasets, trials = ["synthetic"], 3
    extra += ["--config.train.max_epochs=4", "--config.train.min_epochs=1"]
    tuning_dir = args.tuning_dir or os.path.join(args.runs_dir, "quick")
  if args.report:
    print(report(tuning_dir, os.path.join(tuning_dir, "summary.md") if not args.quick else ""))
    return 0
  deadline = time.time() + args.deadline_seconds if args.deadline_seconds else 0.0
  studies = [(d, m) for d in datasets for m in args.models.split(",")]
  for dataset, model in studies:
    if deadline and time.time() > deadline:
      break  # the summary below still records the trials so far
    if model not in SEARCH_SPACES:
      raise SystemExit(f"error: --models: unknown model {model!r} (one of {', '.join(MODELS)})")
    try:
      tune(
        dataset,
        model,
        trials=trials,
        tuning_dir=tuning_dir,
        runs_dir=args.runs_dir,
        extra=extra,
        deadline=deadline,
        parallel=args.parallel,
        machine=args.machine,
      )
    except rundir.RunError as e:
      raise SystemExit(f"error: {e}") from None
  report(tuning_dir, os.path.join(tuning_dir, "summary.md") if not args.quick else "")
  return 0


if __name__ == "__main__":
  sys.exit(main())
